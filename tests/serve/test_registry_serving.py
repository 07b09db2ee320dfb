"""Serving registered versions: NAME@ALIAS resolved per request, tampered files refused, and the
request log feeding lineage."""

import json
import shutil
import time

import openai
import pytest

from affina.record import artifact_version as adapter_version
from affina.record.requestlog import usage_summary
from affina.cli import main
from affina.govern.registry import register_run, set_alias

from tests.serve.conftest import start_server


def _ask(client, model):
    return client.chat.completions.create(model=model, temperature=0, max_tokens=8,
                                          messages=[{"role": "user", "content": "hello there"}]
                                          ).choices[0].message.content


def _within(seconds, check):
    """True once `check()` is: an alias lookup is reused for a couple of seconds."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_alias_moves_without_restart_and_tampered_versions_are_refused(serve_store, tmp_path, monkeypatch,
                                                                        capsys):
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
        set_alias("prod@2", "champion")  # roll out: no restart, within seconds
        assert _within(10, lambda: _ask(client, "prod@champion") == beta)
        set_alias("prod@1", "champion")  # roll back
        assert _within(10, lambda: _ask(client, "prod@champion") == alpha)
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
    # alpha answered directly once and through the alias at least twice; its weights are the
    # same files.
    assert alpha_usage["requests"] >= 3 and alpha_usage["first"] <= alpha_usage["last"]
    assert usage_summary(["nobody@1"], None, log_url)["requests"] == 0
    # `affina lineage --db` reads this server's log, not the default one in $AFFINA_HOME
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    assert main(["lineage", "prod@1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["served"] is None
    assert main(["lineage", "prod@1", "--json", "--db", log_url]) == 0
    assert json.loads(capsys.readouterr().out)["served"]["requests"] == alpha_usage["requests"]


def _register_two(store, tmp_path, monkeypatch):
    monkeypatch.setenv("AFFINA_TRACKING_URI", f"sqlite:///{tmp_path}/registry.db")
    copies = tmp_path / "registered"
    for name in ("alpha", "beta"):
        shutil.copytree(store / name, copies / name)
    register_run(copies / "alpha", "prod")
    register_run(copies / "beta", "prod")
    return copies


def test_registered_files_are_hashed_once_per_change_and_aliases_cached_briefly(serve_store, tmp_path,
                                                                                 monkeypatch):
    from affina.serve import registry_cache
    from affina.serve.store import ModelStore, UnservableModel

    _, store = serve_store
    copies = _register_two(store, tmp_path, monkeypatch)
    set_alias("prod@1", "champion")
    hashed = []
    real_verify = registry_cache.verify_hashes
    monkeypatch.setattr(registry_cache, "verify_hashes", lambda *a: hashed.append(a[2]) or real_verify(*a))
    models = ModelStore(store)
    for _ in range(5):
        assert models.resolve("prod@1").run_dir == (copies / "alpha").resolve()
    assert hashed == ["prod@1"]  # verified once, not per request

    weights = copies / "alpha" / "adapter" / "adapter_model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))
    for _ in range(3):  # a change is seen at once, and the refusal is remembered too
        with pytest.raises(UnservableModel, match="modified after registration"):
            models.resolve("prod@1")
    assert hashed == ["prod@1", "prod@1"]

    now = [0.0]
    resolver = registry_cache.RegistryResolver(ttl=2.0, clock=lambda: now[0])
    from affina.govern.registry import parse_ref

    assert resolver.lookup(parse_ref("prod@champion")).version == 1
    set_alias("prod@2", "champion")
    assert resolver.lookup(parse_ref("prod@champion")).version == 1  # within the TTL
    now[0] = 2.5
    assert resolver.lookup(parse_ref("prod@champion")).version == 2


def test_a_directory_named_like_a_reference_is_never_served(serve_store, tmp_path, monkeypatch):
    from affina.serve.store import ModelStore, UnknownModel

    _, store = serve_store
    copies = _register_two(store, tmp_path, monkeypatch)
    local = tmp_path / "local-store"
    shutil.copytree(store / "beta", local / "prod@1")  # impostors, in the store...
    shutil.copytree(store / "beta", local / "other@1")
    shutil.copytree(store / "beta", tmp_path / "prod@1")  # ...and in the current directory
    monkeypatch.chdir(tmp_path)
    models = ModelStore(local)
    assert models.resolve("prod@1").run_dir == (copies / "alpha").resolve()
    with pytest.raises(UnknownModel):
        models.resolve("other@1")
    assert models.run_names() == []


def test_registry_lookups_run_off_the_event_loop(serve_store, tmp_path, monkeypatch):
    import threading

    import httpx

    from affina.serve import registry_cache

    base, store = serve_store
    _register_two(store, tmp_path, monkeypatch)
    real_lookup = registry_cache.lookup

    def slow_lookup(ref):  # as a slow MLflow server would be
        time.sleep(2)
        return real_lookup(ref)

    monkeypatch.setattr(registry_cache, "lookup", slow_lookup)
    thread, engine, _ = start_server(tmp_path, base, store)
    with thread:
        client = openai.OpenAI(base_url=thread.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        asking = threading.Thread(target=_ask, args=(client, "prod@2"))
        asking.start()
        time.sleep(0.5)
        started = time.monotonic()
        assert httpx.get(thread.url + "/healthz", timeout=10).status_code == 200
        assert time.monotonic() - started < 1.0
        asking.join()
    engine.stop()
