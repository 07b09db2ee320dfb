"""Alias history (manual moves and every promotion decision), lineage by the fingerprint
`affina data inspect` prints, `--runs runs/*`, and only answered requests counted as served."""

import json

import pytest

from affina.cli import main
from affina.data.loading import dataset_fingerprint, load_records
from affina.govern.lineage import runs_for_dataset
from affina.govern.promote import promote
from affina.govern.registry import register_run, set_alias, show_model
from affina.record import read_record
from affina.record.requestlog import LogEntry, RequestLog, usage_summary
from tests.govern.tracked import tracked_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    with tracked_runs(tmp_path_factory.mktemp("history"), tiny_model_dir, {"a": 1, "b": 2},
                      "data.val_fraction=0.25", "method.r=2", "eval.max_new_tokens=2") as out:
        yield out


def test_inspect_fingerprint_finds_runs_in_mlflow_and_in_run_dirs(runs, capsys):
    whole = dataset_fingerprint(load_records([runs["data"]]).records)  # what data inspect prints
    record = read_record(runs["a"])
    assert record.data.source_fingerprint == whole
    assert whole not in (record.data.train.fingerprint, record.data.validation.fingerprint)
    found = {f["run_dir"]: f for f in runs_for_dataset(whole)}  # through the MLflow tags
    assert str(runs["a"].resolve()) in found and found[str(runs["a"].resolve())]["roles"] == ["source"]

    empty_uri = f"sqlite:///{runs['tmp']}/empty.db"  # only the run directories to go by
    for dirs in ([runs["tmp"] / "runs"], [runs["a"], runs["b"]]):  # `--runs runs` and `--runs runs/*`
        found = runs_for_dataset(whole, runs_dirs=dirs, uri=empty_uri)
        assert {f["run_dir"] for f in found} == {str(runs["a"].resolve()), str(runs["b"].resolve())}
    assert main(["lineage", "--dataset", whole, "--runs", str(runs["a"]), str(runs["b"]), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_old_records_without_source_fingerprint_still_load(runs, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(runs["a"], copy)
    body = json.loads((copy / "affina.json").read_text())
    del body["data"]["source_fingerprint"]
    (copy / "affina.json").write_text(json.dumps(body))
    assert read_record(copy).data.source_fingerprint is None


def test_every_alias_move_and_promotion_decision_is_kept(runs, capsys):
    register_run(runs["a"], "hist", metric="loss")
    register_run(runs["b"], "hist")
    set_alias("hist@1", "champion")
    set_alias("hist@2", "champion")
    promote("hist@1", "champion", margin=100.0)
    promote("hist@2", "champion", margin=-100.0)  # refused: the alias stays on v1
    history = show_model("hist")["history"]
    assert [(e["kind"], e["from"], e["to"]) for e in history] == [
        ("alias", None, 1), ("alias", 1, 2), ("promotion", 2, 1), ("promotion", 1, 1)]
    assert [e.get("decision") for e in history[2:]] == ["promoted", "refused"]
    assert all(e["who"] and e["time"] for e in history)
    assert main(["registry", "show", "hist"]) == 0
    out = capsys.readouterr().out
    assert "alias history" in out and "refused" in out and "set by hand" in out


def test_only_answered_requests_count_as_served(tmp_path):
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log = RequestLog(url)
    for status in (200, 200, 403, 429, 500):
        log.write(LogEntry(request_id=str(status), endpoint="chat", status=status, latency_ms=1,
                           model="m@1", prompt_tokens=3, completion_tokens=2))
    log.close()
    usage = usage_summary(["m@1"], None, url)
    assert usage["requests"] == 2 and usage["prompt_tokens"] == 6
