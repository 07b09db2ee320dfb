"""`affina advise`: the ladder's bookkeeping, the verdict's rules, and one whole advice on the
tiny model (zero-shot, few-shot, RAG, two LoRA rungs, fine-tune + RAG) with its run directory."""

from __future__ import annotations

import json

import pytest

from affina.errors import ConfigError
from affina.govern.advise import Arm, ladder_subsets, next_rung_fits, plan_ladder, verdict


def test_ladder_sizes_are_distinct_and_respect_the_minimum():
    assert plan_ladder(200) == [20, 50, 100, 200]
    assert plan_ladder(30) == [8, 15, 30]            # 10% of 30 is 3: raised to 8; 25% → 8 too
    assert plan_ladder(5) == [5]                     # fewer rows than the minimum: all of them
    assert plan_ladder(100, (1.0, 0.5)) == [50, 100]
    with pytest.raises(ConfigError):
        plan_ladder(100, (0.0, 1.0))
    with pytest.raises(ConfigError):
        plan_ladder(0)


def test_rungs_are_nested_seeded_subsets():
    sizes = plan_ladder(40, (0.25, 0.5, 1.0))
    subsets = ladder_subsets(40, sizes, seed=3)
    assert [len(s) for s in subsets] == sizes
    for small, big in zip(subsets, subsets[1:]):
        assert set(small) <= set(big)
    assert subsets == ladder_subsets(40, sizes, seed=3)
    assert subsets[0] != ladder_subsets(40, sizes, seed=4)[0]
    assert subsets[-1] == list(range(40))


def test_next_rung_is_run_only_when_it_fits():
    # 10 rows trained in 60 s, evaluated in 20 s: 40 rows expect 240 + 20 s.
    assert next_rung_fits(elapsed=100, budget=400, last_rows=10, last_train_s=60, last_eval_s=20, next_rows=40)
    assert not next_rung_fits(elapsed=150, budget=400, last_rows=10, last_train_s=60, last_eval_s=20, next_rows=40)
    assert not next_rung_fits(100, 400, 10, 60, 20, 40, reserve=50)


def _arms(zero, few, ladder, rag=None, ft_rag=None):
    arms = [Arm("zero-shot", 0, {"f1": zero}), Arm("few-shot", 100, {"f1": few})]
    arms += [Arm("fine-tune", rows, {"f1": v}) for rows, v in ladder]
    if rag is not None:
        arms.append(Arm("rag", 0, {"f1": rag}))
    if ft_rag is not None:
        arms.append(Arm("fine-tune+rag", ladder[-1][0], {"f1": ft_rag}))
    return arms


def test_verdicts_say_what_the_numbers_say():
    assert "fine-tuning is not needed" in verdict(_arms(0.2, 0.50, [(10, 0.4), (40, 0.51)]), "f1")
    rising = verdict(_arms(0.2, 0.3, [(10, 0.4), (40, 0.6)]), "f1")
    assert rising.startswith("fine-tune: +0.300 f1 over few-shot") and "still rises" in rising
    flat = verdict(_arms(0.2, 0.3, [(10, 0.6), (40, 0.605)]), "f1")
    assert "flattened" in flat
    assert verdict(_arms(0.2, 0.3, [(10, 0.4)], rag=0.7, ft_rag=0.71), "f1").startswith("RAG wins")
    assert verdict(_arms(0.2, 0.3, [(10, 0.4)], rag=0.5, ft_rag=0.8), "f1").startswith("fine-tune and retrieve")


@pytest.mark.timeout(900)
def test_a_whole_advice_on_the_tiny_model(tmp_path, monkeypatch, tiny_model_dir):
    from affina.govern.advise import advise
    from tests.rag.conftest import TOPICS, write_docs

    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    docs = write_docs(tmp_path)
    qa = [(f"Tell me about {name} ({i})", text) for i in range(2) for name, text in TOPICS]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in qa))
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps({"prompt": f"What about {n}?", "completion": t}) + "\n" for n, t in TOPICS[:4]))
    result = advise([str(train)], [str(ev)], docs=[str(docs)], model=str(tiny_model_dir), budget_minutes=60,
                    fractions=(0.5, 1.0), shots=2, epochs=1, max_new_tokens=4, out_dir=tmp_path / "advice",
                    overrides=["track.mlflow=false", "train.batch_size=4"])
    names = [(a["name"], a["rows"]) for a in result["arms"]]
    assert names == [("zero-shot", 0), ("rag", 0), ("few-shot", 20), ("fine-tune", 10), ("fine-tune", 20),
                     ("fine-tune+rag", 20)]
    out = tmp_path / "advice"
    for arm in result["arms"]:
        assert "token_f1" in arm["scores"] and arm["seconds"] > 0 and arm["peak_memory"] > 0
        if arm["run_dir"]:
            assert (out / "runs") in __import__("pathlib").Path(arm["run_dir"]).parents
            assert (__import__("pathlib").Path(arm["run_dir"]) / "affina.json").exists()
    # The rung's training file holds exactly its rows, and its run trained on it.
    assert len((out / "data" / "train-10.jsonl").read_text().splitlines()) == 10
    inputs = json.loads((out / "inputs.json").read_text())
    assert {i["role"] for i in inputs} == {"train", "eval", "docs"} and all(len(i["sha256"]) == 64 for i in inputs)
    saved = json.loads((out / "advice.json").read_text())
    assert saved["verdict"] == result["verdict"] and saved["ladder"] == [10, 20]
    assert (out / "advice.png").stat().st_size > 10_000 and "Verdict" in (out / "advice.md").read_text()
    with pytest.raises(ConfigError, match="already holds an advice"):
        advise([str(train)], [str(ev)], model=str(tiny_model_dir), out_dir=out)


def test_bad_inputs_stop_with_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"text": "just text"}) + "\n")
    env = {"PYTHONPATH": str(src), "AFFINA_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    for args, expect in [(["--train", str(tmp_path / "missing.jsonl"), "--eval", str(raw)], "file not found"),
                         (["--train", str(raw), "--eval", str(raw)], "must be prompt/reply examples"),
                         (["--train", str(raw), "--eval", str(raw), "--ladder", "0.5,x"], "--ladder")]:
        proc = subprocess.run([sys.executable, "-m", "affina", "advise", *args, "--out", str(tmp_path / "a")],
                              env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
