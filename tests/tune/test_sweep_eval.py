"""A sweep evaluates the base model once per study, and no pruned trial's tuned model."""

import json
from pathlib import Path

from affina.cli import main

from .test_sweep import SPACE, _rows


def test_base_evaluated_once_and_pruned_trials_not_evaluated(tmp_path, tiny_model_dir, monkeypatch):
    import affina.train.recipe as recipe

    labels = []
    real = recipe._evaluate
    # Count evaluations by label through the recipe's one evaluation entry point.
    monkeypatch.setattr(recipe, "_evaluate", lambda opened, records, settings, label:
                        labels.append(label) or real(opened, records, settings, label))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(24)))
    held_out = tmp_path / "test.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in _rows(4)))
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "sweep"
    assert main(["sweep", str(space), f"model.spec={tiny_model_dir}", f"data.train={data}",
                 f"eval.data={held_out}", "eval.max_new_tokens=2", "data.val_fraction=0.25",
                 "train.max_steps=6", "train.eval_steps=2", "train.save_steps=6", "train.batch_size=6",
                 "train.warmup_ratio=0", "track.mlflow=false", "--trials", "3", "--out", str(out),
                 "--study", "evals"]) == 0
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and len(trials) == 3
    assert labels.count("before") == 1
    assert labels.count("after") == len(trials) - len(pruned)
    first = min(trials, key=lambda t: t["trial"])
    before = (Path(first["run_dir"]) / "eval" / "before.json").read_text()
    for t in trials:
        run = Path(t["run_dir"])
        sweep = json.loads((run / "affina.json").read_text())["sweep"]
        assert (run / "eval" / "before.json").read_text() == before  # every trial has the scores
        assert sweep["base_eval"] == (None if t is first else "reused from the study")
        if t["state"] == "pruned":
            assert sweep["after_eval"] == "skipped: trial pruned"
            assert not (run / "eval" / "after.json").exists()
        else:
            assert sweep["after_eval"] is None and (run / "eval" / "after.json").is_file()
