"""What a run promises once it exists: it is self-contained (moves with its data and still
resumes, registers and promotes from anywhere), it refuses changed data, its MLflow copy leaves
out checkpoints unless asked, its output modes are what they say, and promotion evaluates it
with its own settings through the one evaluator (classification runs included).

Everything goes through `affina.cli.main`, as a user would, on the tiny model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from affina.cli import main
from affina.record import read_record


def _chat(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"},
                                            {"role": "assistant", "content": f"number {i}"}]}) + "\n"
                   for i in range(start, start + n))


def _labels(n: int) -> str:
    return "".join(json.dumps({"text": f"item {i} is {'good' if i % 2 else 'bad'}",
                               "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(n))


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A throwaway MLflow store and AFFINA_HOME, outside every directory a test moves."""
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store}/ml.db"
    monkeypatch.setenv("AFFINA_TRACKING_URI", uri)
    monkeypatch.setenv("AFFINA_HOME", str(store / "home"))
    return uri


def _common(model_dir, uri, output_dir, name):
    return [f"model.spec={model_dir}", f"train.output_dir={output_dir}", f"train.run_name={name}",
            "train.batch_size=4", "train.lr=5e-3", "method.r=2", f"track.uri={uri}"]


def test_a_run_moved_with_its_data_resumes_registers_and_promotes_from_elsewhere(
        tmp_path, tiny_model_dir, tracking, monkeypatch, capsys):
    project = tmp_path / "orig" / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.jsonl").write_text(_chat(16))
    (project / "data" / "eval.jsonl").write_text(_chat(4, start=100))
    monkeypatch.chdir(project)
    # relative paths, as a user types them in the project directory
    assert main(["train", "-q", *_common(tiny_model_dir, tracking, "runs", "portable"),
                 "data.train=data/train.jsonl", "eval.data=[data/eval.jsonl]",
                 "data.val_fraction=0.25", "train.max_steps=4", "train.save_steps=2",
                 "train.eval_steps=2", "eval.metrics=[exact_match]", "eval.max_new_tokens=3",
                 "eval.compare_base=false", "data.max_length=96"]) == 0
    inputs = json.loads((project / "runs" / "portable" / "inputs.json").read_text())
    # the record names the files that scored the run as well as those it trained on
    recorded = read_record(project / "runs" / "portable").data.files
    assert {(f.role, f.relative, f.rows) for f in recorded} == {
        ("train", "../../data/train.jsonl", 16), ("eval", "../../data/eval.jsonl", 4)}
    # a finished run has nothing to resume
    assert main(["train", "-q", "--resume", "runs/portable"]) == 2
    assert "already finished" in capsys.readouterr().err
    # make it a run interrupted after its step-2 checkpoint, as a crash would leave it
    shutil.rmtree(project / "runs" / "portable" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(project / "runs" / "portable" / "adapter")
    (project / "runs" / "portable" / "affina.json").unlink()
    assert {i["relative"] for i in inputs} == {"../../data/train.jsonl", "../../data/eval.jsonl"}

    moved = tmp_path / "moved" / "project"
    shutil.copytree(project, moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    shutil.rmtree(tmp_path / "orig")
    run = moved / "runs" / "portable"
    capsys.readouterr()

    assert main(["train", "-q", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert json.loads((run / "affina.json").read_text())["train"]["global_step"] == 4
    assert main(["registry", "register", str(run), "--name", "portable"]) == 0, capsys.readouterr().err
    tags = json.loads(_registered_tag("portable", "affina.eval_data", tracking))
    assert [Path(e["path"]) for e in tags] == [moved / "data" / "eval.jsonl"]
    assert main(["promote", "portable@1", "--to", "champion"]) == 0, capsys.readouterr().err

    # the decision record: evaluated with the run's own data.max_length / eval.max_new_tokens
    decision = _latest_report(tmp_path / "store" / "home")
    assert decision["decision"] == "promoted"
    assert decision["settings"]["max_length"] == 96
    assert decision["settings"]["max_new_tokens"] == 3
    assert "exact_match" in decision["results"]["candidate"]

    # a data file changed after the run started: --resume refuses it in one line
    with open(moved / "data" / "train.jsonl", "a") as f:
        f.write(_chat(1, start=50))
    capsys.readouterr()
    assert main(["train", "-q", "--resume", str(run)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "sha256" in err[0] and "changed" in err[0], err


def _registered_tag(name: str, tag: str, uri: str) -> str:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(name).tags[tag]


def _latest_report(home: Path) -> dict:
    reports = sorted((home / "registry" / "reports").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text())


def _artifact_paths(uri: str, run_dir: Path) -> set[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "affina.json").read_text())["mlflow_run_id"]
    return {a.path for a in client.list_artifacts(run_id, "run")}


def test_mlflow_gets_checkpoints_only_when_asked_and_jsonl_and_quiet_outputs(
        tmp_path, tiny_model_dir, tracking, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(_chat(8))
    base = [f"data.train={data}", "data.val_fraction=0", "train.max_steps=2", "train.save_steps=2",
            "train.logging_steps=1"]

    # default display would draw a bar; jsonl: every stdout line is a JSON object
    assert main(["train", "--log-format", "jsonl",
                 *_common(tiny_model_dir, tracking, tmp_path / "runs", "plain"), *base]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # raises on any non-JSON line
    assert events and events[-1]["event"] == "train_end"
    assert any(e["event"] == "log" for e in events)

    plain = tmp_path / "runs" / "plain"
    assert (plain / "checkpoints").is_dir()
    paths = _artifact_paths(tracking, plain)
    assert "run/adapter" in paths and "run/affina.json" in paths
    assert "run/checkpoints" not in paths

    assert main(["train", "-q", *_common(tiny_model_dir, tracking, tmp_path / "runs", "ckpt"), *base,
                 "track.log_checkpoints=true"]) == 0
    captured = capsys.readouterr()
    assert "run/checkpoints" in _artifact_paths(tracking, tmp_path / "runs" / "ckpt")
    # quiet: no progress bar, no raw trainer dicts, no status lines; the summary table stays
    for stream in (captured.out, captured.err):
        assert "{'loss'" not in stream and "it/s" not in stream and "training:" not in stream
        assert "%|" not in stream
    assert "affina run directory" not in captured.out
    assert "training summary" in captured.out
    assert "profile default, precision none" in captured.out  # the step it trained with


def test_promoting_a_classification_run_uses_the_one_evaluator(tmp_path, tiny_model_dir, tracking,
                                                               capsys):
    train_file, eval_file = tmp_path / "labels.jsonl", tmp_path / "labels-eval.jsonl"
    train_file.write_text(_labels(12))
    eval_file.write_text(_labels(6))
    assert main(["train", "-q", *_common(tiny_model_dir, tracking, tmp_path / "runs", "classifier"),
                 "method.name=head", f"data.train={train_file}", "data.val_fraction=0",
                 f"eval.data=[{eval_file}]", "train.max_steps=2", "train.save_steps=2"]) == 0
    run = tmp_path / "runs" / "classifier"
    assert main(["registry", "register", str(run), "--name", "classifier"]) == 0, capsys.readouterr().err
    assert _registered_tag("classifier", "affina.primary_metric", tracking) == "accuracy"
    capsys.readouterr()
    assert main(["promote", "classifier@1", "--to", "champion", "--metric", "loss"]) == 2
    assert "is a classifier" in capsys.readouterr().err
    assert main(["promote", "classifier@1", "--to", "champion"]) == 0, capsys.readouterr().err
    decision = _latest_report(tmp_path / "store" / "home")
    assert decision["decision"] == "promoted"
    assert "accuracy" in decision["results"]["candidate"]
    assert "base" not in decision["results"]  # a new head has no base to compare with


def test_a_truncated_latest_checkpoint_falls_back_to_the_intact_one(tmp_path, tiny_model_dir,
                                                                    monkeypatch, capsys):
    """A kill while the newest checkpoint was being written leaves it truncated: resume warns,
    skips it and continues from the newest intact one, to the asked number of steps."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text(_chat(16))
    assert main(["train", "-q", f"model.spec={tiny_model_dir}", "train.output_dir=runs",
                 "train.run_name=cut", "train.batch_size=4", "train.lr=5e-3", "method.r=2",
                 "track.mlflow=false", "data.train=train.jsonl", "data.val_fraction=0",
                 "train.max_steps=6", "train.save_steps=2", "train.save_total_limit=3",
                 "train.eval_steps=0", "data.max_length=96"]) == 0
    run = tmp_path / "runs" / "cut"
    # as a crash mid-write would leave it: no finished record, a half-written last checkpoint
    (run / "affina.json").unlink()
    shutil.rmtree(run / "adapter")
    weights = run / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "-q", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint checkpoint-6" in err
    record = json.loads((run / "affina.json").read_text())
    assert record["train"]["global_step"] == 6


def test_a_run_killed_after_its_final_checkpoint_finishes_without_an_extra_step(
        tmp_path, tiny_model_dir, monkeypatch):
    """Killed after the last checkpoint was saved but before the record was written: resume
    restores that checkpoint and finishes at the asked step, with the same weights."""
    from safetensors.torch import load_file
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text(_chat(16))
    args = ["train", "-q", f"model.spec={tiny_model_dir}", "train.output_dir=runs",
            "train.run_name=end", "train.batch_size=4", "train.lr=5e-3", "method.r=2",
            "track.mlflow=false", "data.train=train.jsonl", "data.val_fraction=0",
            "train.max_steps=4", "train.save_steps=2", "train.eval_steps=0", "data.max_length=96"]
    assert main(args) == 0
    run = tmp_path / "runs" / "end"
    finished = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    (run / "affina.json").unlink()
    shutil.rmtree(run / "adapter")
    assert main(["train", "-q", "--resume", str(run)]) == 0
    assert json.loads((run / "affina.json").read_text())["train"]["global_step"] == 4
    resumed = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(finished[k], resumed[k]) for k in finished)
