"""Authentication as a start-up mode, metrics labels, broken runs in the store, readiness and the
small refusals (query-string keys, access-log query strings, trailing newlines, file modes)."""

from __future__ import annotations

import json
import logging
import shutil
import stat

import httpx
import openai
import pytest

from affina.errors import AffinaError
from affina.record.requestlog import RequestLog
from affina.serve.auth import KeyStore
from affina.serve.server import DropQueryStrings, ServeOptions, auth_mode, vllm_command
from affina.serve.store import InvalidModelName, check_model_name
from tests.serve.conftest import start_server


def _client(url, key="unused"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def _ask(client, model):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                          temperature=0, max_tokens=2)


def _status(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value.status_code, info.value.body["code"]


def test_auth_mode_is_fixed_at_start_up(tmp_path):
    keys = KeyStore(tmp_path / "keys.db")
    assert auth_mode(None, keys, "127.0.0.1") == "open"
    assert auth_mode(None, keys, "0.0.0.0") == "keys"
    assert auth_mode("keys", keys, "127.0.0.1") == "keys"
    with pytest.raises(AffinaError, match="loopback only"):
        auth_mode("open", keys, "0.0.0.0")
    key, _ = keys.create("x", ["*"])
    assert auth_mode(None, keys, "127.0.0.1") == "keys"
    keys.revoke(key.key_id)  # a revoked key still leaves a server that had keys in keys mode...
    assert auth_mode("keys", keys, "::1") == "keys"


def test_revoking_the_last_key_never_opens_a_loopback_server(serve_store, tmp_path):
    base, runs = serve_store
    keys = KeyStore(tmp_path / "keys.db")
    only, plaintext = keys.create("only", ["base"])
    thread, engine, _ = start_server(tmp_path, base, runs, keys_path=tmp_path / "keys.db")
    with thread:
        url = thread.url
        # Allowed `base`, so also the base's other names (here the base directory's name).
        assert _ask(_client(url, plaintext), "tiny-base").usage.completion_tokens > 0
        assert [m.id for m in _client(url, plaintext).models.list().data] == ["base"]
        # A key in the URL is refused (and never needed): use the header.
        r = httpx.get(url + "/v1/models", params={"api_key": plaintext},
                      headers={"Authorization": f"Bearer {plaintext}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_in_query"

        keys.revoke(only.key_id)  # the last active key
        assert _status(lambda: _ask(_client(url, plaintext), "base")) == (401, "invalid_api_key")
        r = httpx.post(url + "/v1/chat/completions", json={"model": "base", "messages": []})
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
    engine.stop()


def test_metrics_labels_only_served_models_and_readyz_checks_the_log(serve_store, tmp_path):
    base, runs = serve_store
    thread, engine, app = start_server(tmp_path, base, runs)
    with thread:
        client = _client(thread.url)
        _ask(client, "alpha")
        for name in ("no-such-run", "x" * 150, "bad name!", "y" * 5000):
            with pytest.raises(openai.APIStatusError):
                _ask(client, name)
        text = httpx.get(thread.url + "/metrics").text
        assert 'model="alpha"' in text and 'model="other"' in text and 'model="invalid"' in text
        assert "no-such-run" not in text and "xxxxxxxx" not in text and "bad name" not in text
        assert len(text) < 50_000

        assert httpx.get(thread.url + "/readyz").status_code == 200
        app.state.log.min_free_bytes = 1 << 62  # as if the disk were full
        r = httpx.get(thread.url + "/readyz")
        assert r.status_code == 503 and "request log" in r.json()["reason"]
        assert r.headers["retry-after"] == "1"
    engine.stop()


def _broken_store(tmp_path, runs):
    store = tmp_path / "store"
    store.mkdir()
    for name in ("alpha", "truncated", "typed", "nomethod"):
        shutil.copytree(runs / "alpha", store / name)
    config = store / "truncated" / "adapter" / "adapter_config.json"
    config.write_text(config.read_text()[:25])
    for name, patch in (("typed", {"artifact": 5}), ("nomethod", {"method": None})):
        record = json.loads((store / name / "affina.json").read_text())
        (store / name / "affina.json").write_text(json.dumps({**record, **patch}))
    return store


def test_broken_runs_are_listed_as_unavailable_not_500(serve_store, tmp_path, capsys):
    base, runs = serve_store
    store = _broken_store(tmp_path, runs)
    line = vllm_command(ServeOptions(store=store, base=str(base)))
    assert "alpha=" in line and "truncated" not in line and "typed" not in line
    assert "truncated is left out" in capsys.readouterr().err.replace("\n", " ")

    thread, engine, _ = start_server(tmp_path, base, store)
    with thread:
        assert [m.id for m in _client(thread.url).models.list().data] == ["base", "alpha"]
        body = httpx.get(thread.url + "/v1/models").json()
        assert {u["id"] for u in body["unavailable"]} == {"truncated", "typed", "nomethod"}
        assert all(u["reason"] for u in body["unavailable"])
        assert _status(lambda: _ask(_client(thread.url), "typed")) == (400, "model_not_servable")
    engine.stop()


def test_names_with_a_trailing_newline_are_refused():
    from affina.govern.registry import parse_ref

    with pytest.raises(InvalidModelName):
        check_model_name("dates\n")
    assert parse_ref("prod@1\n") is None and parse_ref("prod@1").selector == "1"


def test_access_log_drops_query_strings():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/v1/models?api_key=aff-1-secret", "1.1", 401), None)
    assert DropQueryStrings().filter(record)
    assert "secret" not in record.getMessage() and "/v1/models" in record.getMessage()


def test_key_and_log_files_are_private(tmp_path):
    KeyStore(tmp_path / "new" / "keys.db")
    RequestLog(f"sqlite:///{tmp_path / 'logs' / 'requests.db'}")
    for path in (tmp_path / "new" / "keys.db", tmp_path / "logs" / "requests.db"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_logs_refuses_a_missing_directory(tmp_path, capsys):
    from affina.cli import main

    missing = tmp_path / "nope" / "deeper"
    assert main(["logs", "--db", f"sqlite:///{missing / 'requests.db'}"]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.exists()
