"""Registry, lineage and eval-gated promotion on tiny runs, with a real MLflow sqlite store."""

import json

import pytest

from affina.cli import main
from affina.errors import AffinaError
from affina.govern.lineage import lineage, runs_for_dataset
from affina.govern.promote import promote
from affina.govern.registry import register_run, resolve_ref, set_alias, show_model
from tests.govern.tracked import tracked_runs


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dir):
    """Two runs on the same data: `weak` (1 step) and `strong` (30 steps, much lower loss)."""
    with tracked_runs(tmp_path_factory.mktemp("registry"), tiny_model_dir, {"weak": 1, "strong": 30},
                      "data.val_fraction=0", "train.lr=1e-2", "train.batch_size=8", "method.r=8",
                      "eval.metrics=[exact_match]", "eval.max_new_tokens=4") as runs:
        yield runs


def test_register_alias_resolve_and_rollback(store):
    v1 = register_run(store["weak"], "prod", metric="loss")
    v2 = register_run(store["strong"], "prod")
    assert (v1.version, v2.version) == (1, 2)
    assert "adapter/adapter_model.safetensors" in json.loads(v1.tags["affina.hashes"])
    set_alias("prod@1", "champion")
    assert resolve_ref("prod@champion").run_dir == store["weak"].resolve()
    set_alias("prod@2", "champion")
    assert resolve_ref("prod@champion").version == 2
    set_alias("prod@1", "champion")  # rollback is moving the alias back
    assert resolve_ref("prod@champion").version == 1
    info = show_model("prod")
    assert info["aliases"] == {"champion": 1}
    assert info["tags"]["affina.primary_metric"] == "loss"
    assert [e["path"] for e in json.loads(info["tags"]["affina.eval_data"])] == [str(store["data"].resolve())]
    with pytest.raises(AffinaError, match="no such alias"):
        resolve_ref("prod@nope")
    with pytest.raises(AffinaError, match="not registered"):
        resolve_ref("prod@9")


def test_promotion_passes_when_better_refused_when_worse_and_forced(store):
    register_run(store["weak"], "gated", metric="loss")
    register_run(store["strong"], "gated")
    passed = promote("gated@2", "champion")  # no incumbent: compared with the base model
    assert passed["decision"] == "promoted" and passed["incumbent"] is None
    assert passed["results"]["candidate"]["loss"] < passed["results"]["base"]["loss"]
    assert resolve_ref("gated@champion").version == 2

    refused = promote("gated@1", "champion")
    assert refused["decision"] == "refused" and refused["incumbent"] == "gated@2"
    assert resolve_ref("gated@champion").version == 2  # the alias did not move
    assert not refused["gates"][0]["passed"]

    forced = promote("gated@1", "champion", force=True)
    assert forced["decision"] == "forced" and forced["forced"] is True
    assert resolve_ref("gated@champion").version == 1
    promotions = {v["version"]: v["promotions"] for v in show_model("gated")["versions"]}
    assert promotions[1]["champion"]["decision"] == "forced"
    assert promotions[2]["champion"]["decision"] == "promoted"
    assert json.loads(open(forced["report"]).read())["forced"] is True

    # A generous margin lets a worse candidate through.
    register_run(store["weak"], "lenient", metric="loss")
    register_run(store["strong"], "lenient")
    set_alias("lenient@2", "champion")
    assert promote("lenient@1", "champion", margin=100.0)["decision"] == "promoted"


def test_tampered_artifact_is_refused(store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store["weak"], copy)
    register_run(copy, "tamper")
    assert resolve_ref("tamper@1").version == 1
    weights = copy / "adapter" / "adapter_model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:]))
    with pytest.raises(AffinaError, match="modified after registration"):
        resolve_ref("tamper@1")
    from affina.cli import main

    # Every command that opens a model resolves NAME@VERSION through the verified path.
    assert main(["generate", "tamper@1", "--prompt", "q", "--max-new-tokens", "2"]) == 2


def test_lineage_text_json_graph_and_reverse_query(store, tmp_path, capsys):
    register_run(store["strong"], "lin")
    set_alias("lin@1", "candidate")
    info = lineage("lin@candidate")
    assert info["sources"][0]["path"] == str(store["data"].resolve())
    assert info["sources"][0]["rows"] == 8
    fp = info["prepared"]["train"]["fingerprint"]
    assert fp.startswith("sha256:") and info["prepared"]["train"]["rows"] == 8
    assert info["run"]["base_model"]["fingerprint"].startswith("sha256:")
    assert info["run"]["seed"] == 42 and info["run"]["method"]["name"] == "lora"
    assert info["artifact"]["verified"] is True
    lin = [v for v in info["registry"] if v["name"] == "lin"]
    assert len(lin) == 1 and lin[0]["version"] == 1 and lin[0]["aliases"] == ["candidate"]

    graph = tmp_path / "lineage.png"
    assert main(["lineage", "lin@1", "--graph", str(graph)]) == 0
    text = capsys.readouterr().out
    assert "source data" in text and fp in text and "lin@1" in text and "verified" in text
    assert graph.stat().st_size > 5000
    assert main(["lineage", "lin@1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prepared"]["train"]["fingerprint"] == fp

    found = runs_for_dataset(fp)
    by_dir = {f["run_dir"]: f for f in found}
    assert str(store["strong"].resolve()) in by_dir and str(store["weak"].resolve()) in by_dir
    assert "lin@1" in by_dir[str(store["strong"].resolve())]["versions"]
    assert runs_for_dataset("sha256:" + "0" * 64) == []


def test_cli_promote_exit_codes_and_errors(store, capsys):
    register_run(store["strong"], "cli")
    register_run(store["weak"], "cli")
    assert main(["registry", "list"]) == 0
    assert main(["promote", "cli@1", "--metric", "loss"]) == 0
    assert main(["promote", "cli@2", "--metric", "loss"]) == 1  # refused: a result, not a usage error
    capsys.readouterr()
    assert main(["promote", "cli@7"]) == 2
    assert "not registered" in capsys.readouterr().err
    assert main(["registry", "register", str(store["weak"]), "--name", "../bad"]) == 2
    assert "invalid model name" in capsys.readouterr().err


@pytest.mark.parametrize("alias", ["7", "bad alias!"])
def test_promote_refuses_an_unusable_alias_before_anything(alias, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AFFINA_TRACKING_URI", f"sqlite:///{tmp_path}/ml.db")
    assert main(["promote", "prod@1", "--to", alias]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "invalid alias" in err
    assert not (tmp_path / "ml.db").exists()  # refused before the registry was even opened
