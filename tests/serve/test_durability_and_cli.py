"""The request log survives SIGKILL; store names stay inside the store; the CLI commands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from affina.errors import AffinaError
from affina.serve.commands import register
from affina.record.requestlog import RequestLog
from affina.serve.store import InvalidModelName, ModelStore, UnknownModel, UnservableModel
from tests.serve.conftest import free_port, make_lora_run

ROOT = Path(__file__).resolve().parents[2]


def _cli(argv) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_log_holds_every_acknowledged_request_after_sigkill(serve_store, tmp_path):
    base, store = serve_store
    port, log_url = free_port(), f"sqlite:///{tmp_path / 'requests.db'}"
    env = {**os.environ, "AFFINA_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "tests.serve.serve_proc", str(store), str(base), str(port),
                             log_url, str(tmp_path / "keys.db"), "--batching", "static"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    assert ready.json()["batching"] == "static"  # `affina serve --batching static`
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        acknowledged = []
        for i in range(7):
            model = ("base", "alpha", "beta")[i % 3]
            if i == 3:  # a streamed answer counts once its [DONE] has arrived
                chunks = list(client.chat.completions.create(
                    model=model, stream=True, temperature=0, max_tokens=6,
                    messages=[{"role": "user", "content": f"question {i}"}]))
                acknowledged.append(chunks[0].id)
            else:
                acknowledged.append(client.chat.completions.create(
                    model=model, temperature=0, max_tokens=6,
                    messages=[{"role": "user", "content": f"question {i}"}]).id)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = list(RequestLog(log_url).query())
    assert [r["request_id"] for r in rows] == acknowledged
    assert [r["prompt"][-1]["content"] for r in rows] == [f"question {i}" for i in range(7)]
    assert all(r["status"] == 200 and r["response"] is not None for r in rows)
    assert rows[3]["stream"] is True

    # `affina logs` exports the same rows, filtered.
    out = tmp_path / "alpha.jsonl"
    assert _cli(["logs", "--db", log_url, "--model", "alpha", "--jsonl", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["request_id"] for e in exported] == [r["request_id"] for r in rows if r["model"] == "alpha"]
    assert _cli(["logs", "--db", log_url, "--status", "4xx", "--jsonl", str(out)]) == 0
    assert out.read_text() == ""
    assert _cli(["logs", "--db", log_url, "--since", "2999-01-01", "--jsonl", str(out)]) == 0
    assert out.read_text() == ""
    with pytest.raises(AffinaError, match="--status"):
        _cli(["logs", "--db", log_url, "--status", "ok"])


def test_store_refuses_names_outside_it(serve_store, tmp_path):
    base, runs = serve_store
    store = ModelStore(runs)
    assert store.resolve("alpha").artifact_dir == (runs / "alpha" / "adapter").resolve()
    for name in ("..", "../alpha", "/etc", str(runs / "alpha"), "alpha/adapter", ".", ".x", "a\\b", "", "a\x00"):
        with pytest.raises(InvalidModelName):
            store.resolve(name)
    with pytest.raises(InvalidModelName, match="outside"):
        store.resolve("escape")
    with pytest.raises(UnknownModel):
        store.resolve("gamma")
    # A run whose artifact path climbs out of the run directory is refused too.
    sneaky = tmp_path / "store"
    sneaky.mkdir()
    run = make_lora_run(sneaky, "sneaky", base, seed=5)
    manifest = json.loads((run / "affina.json").read_text())
    (run / "affina.json").write_text(json.dumps({**manifest, "artifact": "../../store/sneaky/adapter/.."}))
    with pytest.raises(InvalidModelName):
        ModelStore(sneaky).resolve("sneaky")
    (run / "affina.json").write_text(json.dumps({**manifest, "artifact": "missing"}))
    with pytest.raises(UnservableModel):
        ModelStore(sneaky).resolve("sneaky")


def test_other_base_is_refused_and_base_is_chosen_from_manifests(serve_store, tmp_path):
    from affina.serve.server import choose_base
    from tests.helpers import make_tiny_model

    base, runs = serve_store
    assert choose_base(ModelStore(runs), None) == str(base)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    make_lora_run(mixed, "one", base, seed=1)
    make_lora_run(mixed, "two", make_tiny_model(tmp_path / "other-base", seed=9), seed=1)
    with pytest.raises(AffinaError, match="different bases"):
        choose_base(ModelStore(mixed), None)

    from affina.serve.server import ServeOptions, build_engine
    engine = build_engine(ServeOptions(store=mixed, base=str(base)))
    assert [r.name for r in engine.served_runs()] == ["one"]
    with pytest.raises(UnservableModel, match="other-base"):
        engine.resolve("two")


def test_keys_cli_and_print_vllm(serve_store, tmp_path, capsys):
    base, runs = serve_store
    db = str(tmp_path / "keys.db")
    assert _cli(["keys", "create", "--name", "app", "--models", "alpha,beta", "--keys-db", db]) == 0
    key = capsys.readouterr().out.strip()
    key_id = key.split("-")[1]
    assert _cli(["keys", "list", "--keys-db", db]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "alpha,beta" in listing and key.split("-", 2)[2] not in listing
    assert _cli(["keys", "revoke", key_id, "--keys-db", db]) == 0
    assert key_id in capsys.readouterr().out
    assert _cli(["keys", "list", "--active", "--keys-db", db]) == 0
    assert key_id not in capsys.readouterr().out

    assert _cli(["serve", "--store", str(runs), "--print-vllm"]) == 0
    command = capsys.readouterr().out
    assert command.startswith("vllm serve ") and "--enable-lora" in command
    assert f"alpha={runs.resolve() / 'alpha' / 'adapter'}" in command and "--max-lora-rank 8" in command
    assert "escape" not in command

    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(AffinaError, match="--port"):
            _cli(["serve", "--store", str(runs), "--port", str(busy.getsockname()[1])])


def test_redacted_log_keeps_hashes_only(tmp_path):
    from affina.record.requestlog import LogEntry

    log = RequestLog(f"sqlite:///{tmp_path / 'r.db'}", redact=True)
    log.write(LogEntry(request_id="cmpl-1", endpoint="completions", status=200, latency_ms=1.0,
                       model="alpha", prompt="secret prompt", response="secret answer"))
    (row,) = log.query()
    assert row["prompt"] is None and row["response"] is None
    assert row["prompt_sha256"] and row["response_sha256"] and row["created_at"].tzinfo is not None
    assert b"secret" not in b"".join(p.read_bytes() for p in tmp_path.glob("r.db*"))
    with log.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
