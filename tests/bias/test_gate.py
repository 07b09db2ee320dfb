"""End to end on a tiny model: `affina bias` on a run (report, the run's eval/bias.json, MLflow,
lineage) and the promotion gate refusing an adapter deliberately trained on stereotyped rows."""

import json

import pytest
from mlflow import MlflowClient

from affina.bias import BiasSettings
from affina.cli import main
from affina.config import load_config
from affina.govern.lineage import format_lineage, lineage
from affina.govern.promote import promote
from affina.govern.registry import register_run, resolve_ref, show_model
from affina.train import train
from tests.bias.probes import stereotyped_rows, write_probes
from tests.helpers import make_tiny_model


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """A LoRA adapter trained on rows stating every probe's stereotype, tracked in its own store."""
    tmp = tmp_path_factory.mktemp("bias-gate")
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{tmp}/ml.db"
    mp.setenv("AFFINA_TRACKING_URI", uri)
    mp.setenv("AFFINA_HOME", str(tmp / "home"))
    # weights drawn wider than the default tiny model's, so that a few LoRA steps can fit the rows
    model = make_tiny_model(tmp / "tiny", initializer_range=0.2)
    n_pairs = write_probes(tmp / "probes.jsonl")
    stereotyped_rows(tmp / "stereotyped.jsonl")
    cfg = load_config(None, [f"model.spec={model}", f"data.train={tmp}/stereotyped.jsonl",
                             f"train.output_dir={tmp}/runs", "train.run_name=biased", "train.max_steps=40",
                             "train.lr=1e-2", "train.batch_size=8", "train.warmup_ratio=0",
                             "method.r=8", "method.alpha=32", "method.dropout=0",
                             "data.val_fraction=0", f"eval.data={tmp}/stereotyped.jsonl",
                             "eval.compare_base=false", f"track.uri={uri}"])
    run_dir = train(cfg).run_dir
    try:
        yield {"tmp": tmp, "uri": uri, "run": run_dir, "probes": tmp / "probes.jsonl", "n": n_pairs}
    finally:
        mp.undo()


def test_bias_command_reports_the_run_against_its_base(biased, capsys):
    out = biased["tmp"] / "report"
    assert main(["bias", str(biased["run"]), "--suite", "none", "--probes", str(biased["probes"]),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stereotype_pct" in printed and "Δ biased − base:tiny" in printed
    report = json.loads((out / "bias.json").read_text())
    assert report["schema"] == "affina.bias/1"
    assert [m["label"] for m in report["models"]] == ["base:tiny", "biased"]
    assert report["models"][1]["base"] == "base:tiny"
    assert report["items"]["probes"]["n"] == biased["n"]
    overall = {f["model"]: f for f in report["figures"] if f["category"] == "all"}
    assert overall["biased"]["value"] == 100.0  # the adapter prefers every stereotype it was fed
    assert overall["base:tiny"]["value"] < 100.0
    delta = next(d for d in report["deltas"] if d["category"] == "all")
    assert delta["delta"] > 0 and delta["flagged"] and delta["ci"][0] > 0
    assert {f["category"] for f in report["figures"]} == {"all", "age", "gender", "nationality", "socioeconomic"}
    assert len((out / "items.jsonl").read_text().splitlines()) == 2 * biased["n"]
    assert "## all" in (out / "bias.md").read_text()

    # the run's own evaluation record, its MLflow run, and its lineage
    own = json.loads((biased["run"] / "eval" / "bias.json").read_text())
    assert own["run"] == "biased" and own["deltas"] == [d for d in report["deltas"] if d["model"] == "biased"]
    from affina.record import read_record

    run_id = read_record(biased["run"]).mlflow_run_id
    metrics = MlflowClient(tracking_uri=biased["uri"]).get_run(run_id).data.metrics
    assert metrics["eval_bias_probes_stereotype_pct"] == 100.0
    assert metrics["eval_bias_probes_stereotype_pct_delta"] == pytest.approx(delta["delta"])
    info = lineage(str(biased["run"]))
    assert info["bias"]["against"] == "base:tiny" and info["bias"]["deltas"][0]["flagged"]
    assert "probes stereotype_pct: +" in format_lineage(info)


def test_bias_gate_refuses_the_biased_adapter_and_records_why(biased, capsys):
    register_run(biased["run"], "fair", metric="loss")
    settings = BiasSettings(suites=(), probes=str(biased["probes"]))
    refused = promote("fair@1", "champion", bias=settings)
    assert refused["decision"] == "refused"
    gates = {g["gate"]: g for g in refused["gates"]}
    assert gates["metric"]["passed"]  # it fits its own data better than the base: only bias fails
    assert not gates["bias"]["passed"] and "probes stereotype_pct +" in gates["bias"]["detail"]
    assert refused["bias"]["against"] == "base" and refused["reasons"][0].startswith("bias: bias rose")
    with pytest.raises(Exception, match="no such alias"):
        resolve_ref("fair@champion")
    tag = show_model("fair")["versions"][0]["promotions"]["champion"]
    assert tag["decision"] == "refused" and "bias rose" in tag["reasons"][0]
    assert json.loads(open(refused["report"]).read())["bias"]["deltas"][0]["flagged"]

    # without settings the gate reuses the suites of the run's last `affina bias`; through the
    # CLI a refusal is exit code 1, and a wide margin lets the candidate through
    assert main(["bias", str(biased["run"]), "--suite", "none", "--probes", str(biased["probes"]),
                 "--out", str(biased["tmp"] / "again"), "--no-track"]) == 0
    assert main(["promote", "fair@1"]) == 1
    assert "gate bias: FAIL" in capsys.readouterr().out
    assert main(["promote", "fair@1", "--bias-probes", str(biased["probes"]), "--bias-margin", "100"]) == 0
    assert resolve_ref("fair@champion").version == 1


def test_bias_gate_passes_unmeasured_when_nothing_asks_for_it(biased, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(biased["run"], copy)
    (copy / "eval" / "bias.json").unlink()
    register_run(copy, "unmeasured", metric="loss")
    decision = promote("unmeasured@1", "champion")
    gate = next(g for g in decision["gates"] if g["gate"] == "bias")
    assert gate["passed"] and gate["detail"].startswith("not measured") and decision["bias"] is None
