"""`affina serve` as a real process: it starts its training workers (`--workers N`), serves the
jobs API on its one port, and stops its workers when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import make_tiny_model
from tests.jobs.conftest import wait_for
from tests.serve.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_serve_starts_and_stops_its_workers(tmp_path):
    from openai import OpenAI

    base = make_tiny_model(tmp_path / "tiny")
    port = free_port()
    env = {**os.environ, "AFFINA_HOME": str(tmp_path / "home"),
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    server = subprocess.Popen([sys.executable, "-m", "affina", "serve", "--base", str(base), "--store",
                               str(tmp_path / "runs"), "--port", str(port), "--workers", "2",
                               "--auth", "open"], env=env, stdout=open(tmp_path / "serve.log", "wb"),
                              stderr=subprocess.STDOUT)
    try:
        def workers():
            try:
                return [p for p in psutil.Process(server.pid).children()
                        if "worker" in p.cmdline() and "jobs" in p.cmdline()]
            except psutil.NoSuchProcess:
                return []
        found = wait_for(lambda: len(workers()) == 2 and workers(), 90, "two worker processes")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        wait_for(lambda: _answers(client), 90, "the server to answer")
        assert list(client.fine_tuning.jobs.list()) == []
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        # The workers went with it.
        wait_for(lambda: not any(_alive(p) for p in found), 30, "the workers to stop")
    finally:
        if server.poll() is None:
            server.kill()
    log = (tmp_path / "serve.log").read_text()
    assert "fine-tuning jobs: 2 local worker(s)" in " ".join(log.split())


def _answers(client) -> bool:
    try:
        client.models.list()
        return True
    except Exception:  # noqa: BLE001 — not listening yet
        time.sleep(0.5)
        return False


def _alive(process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
