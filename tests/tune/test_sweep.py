"""A 3-trial sweep on a tiny model: pruning, per-trial tracked runs, ranked table, plot, and a
best config that load_config accepts."""

import json
from pathlib import Path

import pytest

from affina.cli import main
from affina.config import load_config
from affina.errors import ConfigError
from affina.tune import load_space

SPACE = """\
objective: validation_loss
pruner: {name: median, startup_trials: 1, warmup_steps: 0}
seed: 1
params:
  train.lr: {choices: [1.0e-2, 1.0e-7]}   # one learns, one barely moves: the latter gets pruned
  method.r: [2, 4]
"""


def _rows(n):
    return [{"messages": [{"role": "user", "content": f"say the number {i}"},
                          {"role": "assistant", "content": f"number {i}"}]} for i in range(n)]


def test_three_trial_sweep_with_pruning(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(24)))
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "sweep"
    args = ["sweep", str(space), f"model.spec={tiny_model_dir}", f"data.train={data}",
            "data.val_fraction=0.25", "train.max_steps=6", "train.eval_steps=2", "train.save_steps=6",
            "train.batch_size=6", "train.warmup_ratio=0", f"track.uri=sqlite:///{tmp_path}/ml.db",
            "--trials", "3", "--out", str(out), "--study", "tiny"]
    assert main(args) == 0
    printed = capsys.readouterr().out

    result = json.loads((out / "sweep.json").read_text())
    trials = result["trials"]
    assert len(trials) == 3
    complete = [t for t in trials if t["state"] == "complete"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert complete and pruned
    assert [t["rank"] for t in complete] == list(range(1, len(complete) + 1))
    assert [t["value"] for t in complete] == sorted(t["value"] for t in complete)
    assert all(t["params"]["train.lr"] == 1e-7 for t in pruned)
    assert "pruned" in printed and "tiny" in printed

    for t in trials:  # every trial is a full, tracked run with its own manifest
        manifest = json.loads((Path(t["run_dir"]) / "affina.json").read_text())
        assert manifest["mlflow_run_id"]
        assert manifest["sweep"]["trial"] == t["trial"] and manifest["sweep"]["state"] == t["state"]
        if t["state"] == "pruned":
            assert manifest["train"]["stopped_early"] and manifest["train"]["global_step"] < 6
        else:
            assert manifest["train"]["global_step"] == 6
            assert manifest["metrics"]["validation_loss"] == pytest.approx(t["value"])

    plot = out / "search.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000

    best = load_config(out / "best.yaml")
    assert best.train.lr == complete[0]["params"]["train.lr"]
    assert best.method.options["r"] == complete[0]["params"]["method.r"]
    assert best.model.spec == str(tiny_model_dir) and best.train.max_steps == 6

    # The study lives in sqlite beside the results; a rerun with the same budget adds nothing.
    assert (out / "study.db").is_file()
    assert main(args) == 0
    assert len(json.loads((out / "sweep.json").read_text())["trials"]) == 3


def test_space_errors_name_the_key(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("params:\n  train.lrr: {low: 1, high: 2}\n")
    with pytest.raises(ConfigError, match="params.train.lrr"):
        load_space(bad)
    bad.write_text("params:\n  train.lr: {low: 0.1, high: 0.01}\n")
    with pytest.raises(ConfigError, match="low must be below high"):
        load_space(bad)
    good = tmp_path / "g.yaml"
    good.write_text("params:\n  train.lr: {low: 1e-5, high: 1e-3, log: true}\n  train.epochs: {low: 1, high: 3}\n")
    space = load_space(good)
    assert [(p.key, p.kind, p.log) for p in space.params] == [("train.lr", "float", True),
                                                             ("train.epochs", "int", False)]
    assert space.direction == "minimize"


def test_shipped_example_space_gives_valid_trial_configs():
    import optuna

    from affina.methods import build_method_config, get_method
    from affina.tune.space import apply_params, suggest_params

    root = Path(__file__).resolve().parents[2] / "examples" / "product_json"
    space = load_space(root / "sweep.yaml")
    base = load_config(root / "run.yaml")
    trial = optuna.trial.FixedTrial({"train.lr": 1e-3, "method.r": 8, "method.alpha": 16,
                                     "method.dropout": 0.1, "train.batch_size": 4})
    cfg = apply_params(base, suggest_params(trial, space, base.method.name))
    assert cfg.train.lr == 1e-3 and cfg.method.options["r"] == 8 and cfg.train.batch_size == 4
    build_method_config(get_method(cfg.method.name), cfg.method.options)  # raises if invalid
