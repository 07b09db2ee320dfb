"""`affina eval` with two REFs (a tiny base model and a tiny trained run): the report files and
the scores logged to the run's tracking record."""

import json
from pathlib import Path

import pytest

from affina.cli import main
from affina.config import load_config
from affina.evaluate.metrics import score_predictions
from affina.train import train


def _rows(n, offset=0):
    return [{"messages": [{"role": "user", "content": f"say the number {i}"},
                          {"role": "assistant", "content": f"number {i}"}]} for i in range(offset, offset + n)]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("eval-run")
    cfg = load_config(None, [
        f"model.spec={tiny_model_dir}", f"data.train={_write(tmp / 'train.jsonl', _rows(16))}",
        "data.val_fraction=0.25", f"train.output_dir={tmp / 'runs'}", "train.run_name=tuned",
        "train.max_steps=6", "train.eval_steps=3", "train.save_steps=3", "train.batch_size=4",
        "train.lr=1e-2", "method.r=4", f"track.uri=sqlite:///{tmp}/ml.db"])
    return train(cfg).run_dir, f"sqlite:///{tmp}/ml.db"


def test_eval_two_refs_writes_side_by_side_reports(tmp_path, tiny_model_dir, trained_run):
    run_dir, uri = trained_run
    data = _write(tmp_path / "heldout.jsonl", _rows(7, offset=100))
    out = tmp_path / "report"
    metrics = ["exact_match", "token_f1", "rouge_l", "chrf"]
    code = main(["eval", str(tiny_model_dir), str(run_dir), "--data", str(data), "--fewshot", "2",
                 "--metrics", ",".join(metrics), "--max-new-tokens", "6", "--out", str(out)])
    assert code == 0

    report = json.loads((out / "report.json").read_text())
    base, tuned = Path(tiny_model_dir).name, "tuned"
    labels = [m["label"] for m in report["models"]]
    assert labels == [base, f"{base} (2-shot)", tuned, f"{tuned} (2-shot)"]
    assert report["data"]["examples"] == 5  # 7 rows, the first 2 went into the prompt
    assert report["data"]["fewshot"]["lines"] == [1, 2]
    for model in report["models"]:
        assert set(metrics) <= set(model["metrics"]) and model["loss"] > 0
        assert model["perplexity"] == pytest.approx(2.718281828 ** model["loss"], rel=1e-6)
    by_label = {m["label"]: m for m in report["models"]}
    assert by_label[base]["loss"] != pytest.approx(by_label[tuned]["loss"])
    assert by_label[base]["loss"] != pytest.approx(by_label[f"{base} (2-shot)"]["loss"])

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == [f"say the number {i}" for i in range(102, 107)]
    assert [r["reference"] for r in rows] == [f"number {i}" for i in range(102, 107)]
    for label in labels:
        outputs = [r["outputs"][label] for r in rows]
        # The summary scores are exactly the scores of the outputs listed per example.
        expected = score_predictions(outputs, [r["reference"] for r in rows], metrics)
        for name in metrics:
            assert by_label[label]["metrics"][name] == pytest.approx(expected[name])
        assert [r["scores"][label]["exact_match"] for r in rows] == [
            float(o.strip().casefold() == r["reference"]) for o, r in zip(outputs, rows)]

    md = (out / "report.md").read_text()
    assert f"| measure | {base} | {base} (2-shot) | {tuned} | {tuned} (2-shot) |" in md
    assert "| validation loss |" in md and "| rouge_l |" in md
    assert "say the number 102" in md

    # The run's own MLflow record got the scores and the report files.
    from mlflow import MlflowClient

    manifest = json.loads((run_dir / "affina.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(manifest["mlflow_run_id"]).data.metrics
    assert logged["eval_heldout_rouge_l"] == pytest.approx(by_label[tuned]["metrics"]["rouge_l"])
    assert logged["eval_heldout_2shot_loss"] == pytest.approx(by_label[f"{tuned} (2-shot)"]["loss"])
    artifacts = [a.path for a in client.list_artifacts(manifest["mlflow_run_id"], "eval/heldout")]
    assert "eval/heldout/report.json" in artifacts


def test_eval_errors_are_one_line(tmp_path, tiny_model_dir, capsys):
    data = _write(tmp_path / "d.jsonl", _rows(3))
    assert main(["eval", str(tiny_model_dir), "--data", str(data), "--metrics", "nope.mod:fn",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.mod" in err[0]
    assert main(["eval", str(tiny_model_dir), "--data", str(data), "--fewshot", "5"]) == 2


def test_eval_classification_run_beside_a_generative_base(tmp_path, tiny_model_dir):
    rows = [{"text": f"this is {'great' if i % 2 else 'awful'} number {i}",
             "label": "pos" if i % 2 else "neg"} for i in range(16)]
    data = _write(tmp_path / "labels.jsonl", rows)
    cfg = load_config(None, [
        f"model.spec={tiny_model_dir}", f"data.train={data}", "data.val_fraction=0.25",
        f"train.output_dir={tmp_path / 'runs'}", "train.run_name=head", "train.max_steps=2",
        "train.batch_size=4", "train.eval_steps=0", "train.save_steps=100", "track.mlflow=false",
        "method.name=head"])
    run_dir = train(cfg).run_dir
    out = tmp_path / "report"
    assert main(["eval", str(tiny_model_dir), str(run_dir), "--data", str(data), "--limit", "6",
                 "--max-new-tokens", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["metrics"] == ["accuracy", "macro_f1"]  # chosen for labelled data
    head = next(m for m in report["models"] if m["label"] == "head")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    predicted = [r["outputs"]["head"] for r in rows]
    assert set(predicted) <= {"neg", "pos"}  # a label head answers with a class
    expected = score_predictions(predicted, [r["reference"] for r in rows], ["accuracy", "macro_f1"])
    assert head["metrics"] == pytest.approx(expected)
