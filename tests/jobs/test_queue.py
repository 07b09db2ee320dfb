"""The durable queue: claims, leases, pagination; on SQLite and on a real PostgreSQL cluster that
the test starts on loopback (two worker processes claiming at once never take a job twice)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from affina.jobs.store import JobRow, JobStore, new_id

ROOT = Path(__file__).resolve().parents[2]


def _job(i: int = 0, status: str = "queued") -> JobRow:
    return JobRow(id=new_id("ftjob"), owner="k1", model="base", base_spec="default",
                  training_file="file-x", validation_file=None, requested={}, hyperparameters={},
                  method={"type": "supervised"}, suffix=None, seed=i, metadata={"i": str(i)},
                  status=status, created_at=int(time.time()), run_dir=f"/tmp/nowhere/{i}")


def test_claim_lease_and_reclaim_on_sqlite(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'q.db'}")
    first, second = store.add_job(_job(1)), store.add_job(_job(2))
    store.add_job(_job(3, status="paused"))
    a = store.claim("worker-a", lease_seconds=0.5)
    assert a.id == first.id and a.status == "running" and a.worker_id == "worker-a" and a.attempts == 1
    b = store.claim("worker-b", lease_seconds=30)
    assert b.id == second.id
    assert store.claim("worker-c", lease_seconds=30) is None  # paused jobs are not claimable
    assert store.heartbeat(a.id, "worker-a", 0.5) == "running"
    time.sleep(0.7)  # worker-a stops heartbeating: its lease runs out
    again = store.claim("worker-c", lease_seconds=30)
    assert again.id == first.id and again.worker_id == "worker-c" and again.attempts == 2
    assert store.heartbeat(a.id, "worker-a", 0.5) is None  # the old worker learns it lost the job
    store.set_status(b.id, "cancelled", "Job was cancelled")
    assert store.heartbeat(b.id, "worker-b", 30) == "cancelled"


def test_pagination_and_metadata_filter(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'q.db'}")
    jobs = [store.add_job(_job(i)) for i in range(5)]
    page = store.list_jobs(limit=2)
    assert [j.id for j in page.data] == [jobs[4].id, jobs[3].id] and page.has_more
    page = store.list_jobs(limit=2, after=page.data[-1].id)
    assert [j.id for j in page.data] == [jobs[2].id, jobs[1].id] and page.has_more
    assert not store.list_jobs(limit=2, after=jobs[1].id).has_more
    assert [j.id for j in store.list_jobs(metadata={"i": "3"}).data] == [jobs[3].id]
    assert store.list_jobs("someone-else", admin=False).data == []
    for n in range(5):
        store.add_event(jobs[0].id, f"event {n}")
    events = store.list_events(jobs[0].id, limit=3)
    assert [e.message for e in events.data] == ["event 4", "event 3", "event 2"] and events.has_more
    rest = store.list_events(jobs[0].id, after=events.data[-1].id, limit=3)
    assert [e.message for e in rest.data] == ["event 1", "event 0"] and not rest.has_more


_CLAIMER = """
import json, sys, time
from affina.jobs.store import JobStore
store = JobStore(sys.argv[1])
claimed = []
while (job := store.claim(sys.argv[2], lease_seconds=60)) is not None:
    claimed.append(job.id)
    time.sleep(0.02)  # hold it a moment, as a real worker would, so the claimers interleave
print(json.dumps(claimed))
"""


def _claim_concurrently(url: str, n_jobs: int) -> tuple[set[str], list[list[str]]]:
    store = JobStore(url)
    ids = {store.add_job(_job(i)).id for i in range(n_jobs)}
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, url, f"w{i}"], stdout=subprocess.PIPE,
                              env=env, text=True) for i in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    store.close()
    return ids, results


def test_two_workers_never_claim_one_job_twice_on_sqlite(tmp_path):
    ids, (a, b) = _claim_concurrently(f"sqlite:///{tmp_path / 'q.db'}", 30)
    assert sorted(a + b) == sorted(ids)  # every job claimed, none twice


# -- PostgreSQL ------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@contextmanager
def pg_cluster():
    """A throwaway PostgreSQL cluster on loopback; its URL. initdb refuses to run as root, so
    as root the cluster belongs to (and runs as) the `postgres` user."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's initdb/pg_ctl not found: install PostgreSQL (apt-get install "
                    "postgresql) to run the PostgreSQL queue test")
    from tests.serve.conftest import free_port

    # Directly under the system temp directory: pytest's own (0700, root's) is not reachable by
    # the postgres user.
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="affina-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    def run(*command):
        done = subprocess.run(prefix + list(command), capture_output=True, text=True)
        assert done.returncode == 0, f"{command[0]} failed: {done.stderr or done.stdout}"

    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_queue_skips_locked_rows_and_never_claims_twice():
    with pg_cluster() as url:
        store = JobStore(url)
        assert store.dialect == "postgresql"
        first, second = store.add_job(_job(1)), store.add_job(_job(2))
        # Another worker's transaction holds the oldest job's row: a claim takes the next one
        # at once instead of waiting for that lock (FOR UPDATE SKIP LOCKED).
        from sqlalchemy import select

        from affina.jobs.store import jobs_table as t

        with store.engine.begin() as conn:
            conn.execute(select(t).where(t.c.id == first.id).with_for_update())
            started = time.monotonic()
            claimed = store.claim("w-fast", lease_seconds=60)
            assert claimed.id == second.id and time.monotonic() - started < 5
        assert store.claim("w-fast", lease_seconds=60).id == first.id
        store.close()

        ids, (a, b) = _claim_concurrently(url, 40)
        assert sorted(a + b) == sorted(ids)
        assert a and b  # both workers got work: they shared the queue


def test_a_job_whose_training_finished_before_it_was_paused_is_registered_not_retrained(
        tmp_path, tiny_model_dir):
    """Paused (or its worker lost) after the training process wrote its record but before the
    worker saw it exit: resuming must not ask the trainer to go on from its final checkpoint."""
    from affina.jobs.worker import Worker
    from tests.govern.tracked import tracked_runs

    with tracked_runs(tmp_path, tiny_model_dir, {"done": 2}) as runs:
        store = JobStore(f"sqlite:///{tmp_path / 'q.db'}")
        job = store.add_job(JobRow(**{**_job(7).__dict__, "run_dir": str(runs["done"])}))
        claimed = store.claim("worker-a", lease_seconds=30)
        assert claimed.id == job.id and claimed.attempts == 1
        assert Worker(store, worker_id="worker-a").run_job(claimed) == "succeeded"
        done = store.get_job(job.id)
        assert done.status == "succeeded" and done.registered_as.endswith("@1")
        messages = [e.message for e in store.list_events(job.id, limit=20).data]
        assert "Training had already finished; registering its result" in messages
        assert not (tmp_path / "runs" / f"{job.id}.stderr").exists()  # no training process ran
