"""API keys: hashed at rest, 401 / 403 at the door, revocation at once, no open network port."""

from __future__ import annotations

import openai
import pytest

from affina.errors import AffinaError
from affina.serve.auth import KeyStore
from affina.record.requestlog import RequestLog
from affina.serve.server import ServeOptions, build_app, is_loopback
from tests.serve.conftest import start_server


def _client(url, key):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def _status(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value.status_code, info.value.body["code"]


def _ask(client, model):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                          temperature=0, max_tokens=4)


def test_keys_are_stored_hashed(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    key, plaintext = store.create("app", ["alpha"])
    secret = plaintext.split("-", 2)[2]
    assert secret.encode() not in (tmp_path / "keys.db").read_bytes()
    assert store.verify(plaintext).key_id == key.key_id
    assert store.verify(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert store.verify(f"aff-{key.key_id}-") is None and store.verify("sk-whatever") is None
    other, _ = store.create("other", ["*"])
    assert {k.key_id for k in store.list()} == {key.key_id, other.key_id}
    store.revoke(key.key_id)
    assert store.verify(plaintext) is None
    with pytest.raises(AffinaError, match="no API key"):
        store.revoke("nope")


def test_auth_over_http(serve_store, tmp_path):
    base, runs = serve_store
    keys = KeyStore(tmp_path / "keys.db")
    _, only_alpha = keys.create("alpha-app", ["alpha"])
    every_id, every = keys.create("admin", ["*"])
    thread, engine, _ = start_server(tmp_path, base, runs, keys_path=tmp_path / "keys.db")
    with thread:
        url = thread.url
        assert _status(lambda: _ask(_client(url, "aff-000000000000-wrong"), "alpha")) == (401, "invalid_api_key")
        import httpx

        r = httpx.post(url + "/v1/chat/completions", json={"model": "alpha", "messages": []})
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401

        limited = _client(url, only_alpha)
        assert _ask(limited, "alpha").choices[0].message.content is not None
        assert _status(lambda: _ask(limited, "beta")) == (403, "model_not_allowed")
        # Not allowed is answered before existence, so names cannot be probed.
        assert _status(lambda: _ask(limited, "no-such-run")) == (403, "model_not_allowed")
        assert [m.id for m in limited.models.list().data] == ["alpha"]
        assert [m.id for m in _client(url, every).models.list().data] == ["base", "alpha", "beta"]
        assert _ask(_client(url, every), "beta").usage.completion_tokens > 0

        keys.revoke(every_id.key_id)
        assert _status(lambda: _ask(_client(url, every), "beta")) == (401, "invalid_api_key")
    engine.stop()

    rows = list(RequestLog(f"sqlite:///{tmp_path / 'requests.db'}").query())
    assert {r["status"] for r in rows} == {200, 401, 403}
    assert {r["key_id"] for r in rows if r["status"] == 200} == {only_alpha.split("-")[1], every_id.key_id}
    for secret in (only_alpha, every):  # keys never reach the log
        assert secret.encode() not in (tmp_path / "requests.db").read_bytes()


def test_open_server_only_on_loopback(serve_store, tmp_path):
    base, runs = serve_store
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    options = ServeOptions(store=runs, base=str(base), host="0.0.0.0", keys_path=tmp_path / "keys.db",
                           log_url=f"sqlite:///{tmp_path / 'log.db'}")
    with pytest.raises(AffinaError, match="without API keys"):
        build_app(options, engine=None)
    # Bound beyond loopback, revoking every key must not open the server.
    keys = KeyStore(tmp_path / "keys.db")
    key, _ = keys.create("x", ["*"])
    keys.revoke(key.key_id)
    thread, engine, _ = start_server(tmp_path, base, runs, keys_path=tmp_path / "keys.db", require_keys=True)
    with thread:
        assert _status(lambda: _ask(_client(thread.url, "anything"), "base")) == (401, "invalid_api_key")
    engine.stop()
