"""A real server with the jobs API on loopback, over a tiny base, plus real worker processes.

One server per test module (starting a base and a registry costs seconds); workers are
`python -m affina jobs worker` subprocesses, started and killed by the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_tiny_model
from tests.serve.conftest import ServerThread

ROOT = Path(__file__).resolve().parents[2]


def chat_rows(n: int = 24) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"say the number {i}"},
                                            {"role": "assistant", "content": f"number {i}"}]}) + "\n"
                   for i in range(n))


class JobsEnv:
    """The server's pieces and helpers: keys, a worker launcher, a client factory."""

    def __init__(self, root: Path, base: Path):
        from affina.serve.auth import KeyStore

        self.root, self.base = root, base
        self.store_dir = root / "runs"
        self.db_url = f"sqlite:///{root / 'service.db'}"
        self.keys = KeyStore(root / "keys.db")
        _, self.alice = self.keys.create("alice", ["*"])
        _, self.bob = self.keys.create("bob", ["*"])
        _, self.admin = self.keys.create("admin", ["*"], admin=True)
        self.workers: list[subprocess.Popen] = []
        self.server = None

    def start_server(self):
        from affina.record.requestlog import RequestLog
        from affina.serve.app import Limits, create_app
        from affina.serve.server import ServeOptions, build_engine, jobs_service

        opts = ServeOptions(store=self.store_dir, base=str(self.base), threads=1,
                            limits=Limits(max_prompt_tokens=300, max_tokens=32, default_max_tokens=8),
                            files_dir=self.root / "files")
        self.engine = build_engine(opts)
        self.engine.start()
        log = RequestLog(self.db_url)
        self.service = jobs_service(opts, self.engine, log.url)
        app = create_app(self.engine, self.keys, log, opts.limits, auth="keys", jobs=self.service)
        self.server = ServerThread(app).__enter__()
        return self.server

    def stop_server(self):
        self.server.__exit__(None, None, None)
        self.engine.stop()
        self.server = None

    def client(self, key: str):
        from openai import OpenAI

        return OpenAI(base_url=self.server.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def start_worker(self, lease_seconds: float = 30.0, extra: list[str] = ()) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "affina", "jobs", "worker", "--db", self.db_url,
                                 "--lease-seconds", str(lease_seconds), *extra],
                                stdout=subprocess.DEVNULL, stderr=open(self.root / "worker.log", "ab"))
        self.workers.append(proc)
        return proc

    def stop_workers(self):
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.workers = []

    def upload(self, client, name: str = "train.jsonl", text: str | None = None):
        path = self.root / name
        path.write_text(text if text is not None else chat_rows())
        with open(path, "rb") as f:
            return client.files.create(file=f, purpose="fine-tune")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_status(client, job_id: str, statuses, timeout: float = 120):
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in statuses and j,
                    timeout, f"job {job_id} to reach {statuses}")


@pytest.fixture(scope="module")
def jobs_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    mp = pytest.MonkeyPatch()
    # The worker's training subprocesses and the registry use this home (files, MLflow store).
    mp.setenv("AFFINA_HOME", str(root / "home"))
    mp.setenv("AFFINA_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.setenv("PYTHONPATH", str(ROOT / "src") + os.pathsep + str(ROOT) + os.pathsep
              + os.environ.get("PYTHONPATH", ""))
    base = make_tiny_model(root / "tiny-base", seed=3, initializer_range=0.3)
    env = JobsEnv(root, base)
    env.start_server()
    try:
        yield env
    finally:
        env.stop_workers()
        if env.server is not None:
            env.stop_server()
        mp.undo()
