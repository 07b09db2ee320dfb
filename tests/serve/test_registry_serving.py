"""Serving registered versions: NAME@ALIAS resolved per request, tampered files refused, and the
request log feeding lineage."""

import shutil

import openai
import pytest

from affina.record import artifact_version as adapter_version
from affina.record.requestlog import usage_summary
from affina.govern.registry import register_run, set_alias

from tests.serve.conftest import start_server


def _ask(client, model):
    return client.chat.completions.create(model=model, temperature=0, max_tokens=8,
                                          messages=[{"role": "user", "content": "hello there"}]
                                          ).choices[0].message.content


def test_alias_moves_without_restart_and_tampered_versions_are_refused(serve_store, tmp_path, monkeypatch):
    base, store = serve_store
    monkeypatch.setenv("AFFINA_TRACKING_URI", f"sqlite:///{tmp_path}/registry.db")
    copies = tmp_path / "registered"
    for name in ("alpha", "beta"):
        shutil.copytree(store / name, copies / name)
    register_run(copies / "alpha", "prod")
    register_run(copies / "beta", "prod")
    set_alias("prod@1", "champion")

    thread, engine, _ = start_server(tmp_path, base, store)
    with thread:
        client = openai.OpenAI(base_url=thread.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        alpha, beta = _ask(client, "alpha"), _ask(client, "beta")
        assert alpha != beta
        assert _ask(client, "prod@champion") == alpha
        set_alias("prod@2", "champion")  # roll out: no restart
        assert _ask(client, "prod@champion") == beta
        set_alias("prod@1", "champion")  # roll back
        assert _ask(client, "prod@champion") == alpha
        assert _ask(client, "prod@2") == beta

        with pytest.raises(openai.NotFoundError):
            _ask(client, "prod@nosuchalias")
        weights = copies / "beta" / "adapter" / "adapter_model.safetensors"
        raw = weights.read_bytes()
        weights.write_bytes(raw[:-4] + bytes(b ^ 0xFF for b in raw[-4:]))
        with pytest.raises(openai.BadRequestError, match="modified after registration"):
            _ask(client, "prod@2")
    engine.stop()

    log_url = f"sqlite:///{tmp_path / 'requests.db'}"
    alpha_usage = usage_summary(["prod@1"], adapter_version(copies / "alpha" / "adapter"), log_url)
    # alpha answered directly once and through the alias twice; its weights are the same files.
    assert alpha_usage["requests"] == 3 and alpha_usage["first"] <= alpha_usage["last"]
    assert usage_summary(["nobody@1"], None, log_url)["requests"] == 0
