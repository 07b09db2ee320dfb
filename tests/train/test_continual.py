"""Continued training on a tiny model: the earlier weights are the start, replay is drawn from the
earlier data with the seed, the learning rate re-warms, and forgetting is measured per earlier set."""

from __future__ import annotations

import json

import pytest
import yaml

from affina.config import load_config
from affina.errors import ConfigError
from affina.record import read_record
from affina.train import train
from tests.monitor.conftest import traffic, write_rows


def _cfg(tmp, model, name, data, eval_data, *extra):
    return load_config(None, [f"model.spec={model}", f"data.train={data}", f"eval.data={eval_data}",
                              f"train.output_dir={tmp}/runs", f"train.run_name={name}", "train.lr=5e-3",
                              "eval.max_new_tokens=4", "track.mlflow=false", *extra])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_continue_from_a_run_replays_rewarms_and_measures_forgetting(tmp_path, tiny_model_dir, method):
    task_a = write_rows(tmp_path / "a.jsonl", traffic.rows("listing", 40, seed=1))
    eval_a = write_rows(tmp_path / "a-eval.jsonl", traffic.rows("listing", 6, seed=2))
    task_b = write_rows(tmp_path / "b.jsonl", traffic.rows("shifted", 20, seed=3))
    eval_b = write_rows(tmp_path / "b-eval.jsonl", traffic.rows("shifted", 6, seed=4))
    options = ["method.r=2"] if method == "lora" else []
    first = train(_cfg(tmp_path, tiny_model_dir, "a", task_a, eval_a, f"method.name={method}",
                       "train.max_steps=4", *options), display="quiet").run_dir
    a_after = json.loads((first / "eval" / "after.json").read_text())

    cont = train(_cfg(tmp_path, tiny_model_dir, "b", task_b, eval_b, "train.max_steps=4",
                      f"train.continue_from={first}", "replay.fraction=0.5", "train.rewarm_ratio=0.25"),
                 display="quiet").run_dir
    record = read_record(cont)
    c = record.continual
    assert c["run_dir"] == str(first) and record.method.name == method
    # Replay: as many earlier examples as new ones, drawn from the earlier file (sha256 kept).
    assert c["replay"]["new_rows"] == 20 and c["replay"]["replay_rows"] == 20 and c["replay"]["seed"] == 42
    assert [f["path"] for f in c["replay"]["replay_files"]] == [str(task_a)]
    drawn = {m["path"]: m["drawn"] for m in record.data.mix}
    assert drawn == {str(task_b): 20, str(task_a): 20}
    saved = yaml.safe_load((cont / "config.yaml").read_text())
    assert saved["train"]["warmup_ratio"] == 0.25 and saved["train"]["continue_from"] == str(first)
    # Forgetting on the earlier run's evaluation set: "before" is the earlier model itself, so
    # its scores are the ones that run measured at its end (its weights were loaded).
    (row,) = c["forgetting"]
    assert row["path"] == str(eval_a) and row["origin"] == "evaluation data of run a"
    assert row["before"]["loss"] == pytest.approx(a_after["loss"], rel=1e-4)
    assert row["after"]["loss"] != row["before"]["loss"]
    assert row["delta"]["loss"] == pytest.approx(row["after"]["loss"] - row["before"]["loss"], abs=1e-5)
    # The new task's "before" is the earlier model too, not the base.
    before_b = json.loads((cont / "eval" / "before.json").read_text())
    assert before_b["label"] == "the earlier model"


def test_replay_draw_follows_the_seed_and_bad_continuations_are_refused(tmp_path, tiny_model_dir):
    from affina.train.continual import EarlierModel, continual_config

    task_a = write_rows(tmp_path / "a.jsonl", traffic.rows("listing", 30, seed=1))
    task_b = write_rows(tmp_path / "b.jsonl", traffic.rows("shifted", 10, seed=3))
    first = train(_cfg(tmp_path, tiny_model_dir, "a", task_a, task_a, "train.max_steps=1", "method.r=2",
                       "eval.limit=2"), display="quiet").run_dir
    from affina.data.prepare import prepare_data
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def fingerprint(seed):
        cfg, plan = continual_config(_cfg(tmp_path, tiny_model_dir, "x", task_b, task_b, f"train.seed={seed}",
                                          "replay.fraction=0.25"), EarlierModel.of_run_dir(str(first)))
        assert plan["replay"]["replay_rows"] == 3  # 10 new rows are 75%
        return prepare_data(cfg.data, tok, seed, progress=False).summary()["train"]["fingerprint"]

    assert fingerprint(1) == fingerprint(1) != fingerprint(2)
    with pytest.raises(ConfigError, match="not a run directory"):
        continual_config(_cfg(tmp_path, tiny_model_dir, "y", task_b, task_b), EarlierModel.of_run_dir(str(tmp_path)))
    with pytest.raises(ConfigError, match="keeps it"):
        continual_config(_cfg(tmp_path, tiny_model_dir, "y", task_b, task_b, "method.name=ia3",
                              "method.target_modules=[q_proj]"), EarlierModel.of_run_dir(str(first)))
    with pytest.raises(ConfigError, match="replay.fraction"):
        load_config(None, ["replay.fraction=1"])


def test_continue_from_a_checkpoint_starts_from_its_weights(tmp_path, tiny_model_dir):
    """train.continue_from may name one of a run's checkpoints: the continued run starts from
    that checkpoint's weights (the earlier model it scores "before" is the checkpoint), records
    which one, and a checkpoint at the run's last step scores as the run's own artifact."""
    task_a = write_rows(tmp_path / "a.jsonl", traffic.rows("listing", 40, seed=1))
    eval_a = write_rows(tmp_path / "a-eval.jsonl", traffic.rows("listing", 6, seed=2))
    task_b = write_rows(tmp_path / "b.jsonl", traffic.rows("shifted", 12, seed=3))
    first = train(_cfg(tmp_path, tiny_model_dir, "a", task_a, eval_a, "method.r=2", "train.max_steps=4",
                       "train.save_steps=2", "data.val_fraction=0"), display="quiet").run_dir
    a_after = json.loads((first / "eval" / "after.json").read_text())
    before = {}
    for step in (2, 4):
        checkpoint = first / "checkpoints" / f"checkpoint-{step}"
        run = train(_cfg(tmp_path, tiny_model_dir, f"from-{step}", task_b, eval_a, "train.max_steps=1",
                         f"train.continue_from={checkpoint}"), display="quiet").run_dir
        c = read_record(run).continual
        assert c["run_dir"] == str(first) and c["artifact"] == f"checkpoints/checkpoint-{step}"
        before[step] = json.loads((run / "eval" / "before.json").read_text())["loss"]
    assert before[4] == pytest.approx(a_after["loss"], rel=1e-5)  # the last checkpoint is the artifact
    assert before[2] != pytest.approx(a_after["loss"], rel=1e-5)  # an earlier one is not
    with pytest.raises(ConfigError, match="not a run directory or one of its checkpoints"):
        train(_cfg(tmp_path, tiny_model_dir, "bad", task_b, eval_a,
                   f"train.continue_from={first / 'checkpoints' / 'checkpoint-9'}"), display="quiet")
