"""The `ray` executor: a worker hands its job's training to an existing Ray cluster, through
Ray's job submission API (the cluster's dashboard address, http://HEAD:8265).

The worker still claims the job and holds its lease; the training runs as a Ray job whose
entrypoint is `cd <job dir> && python -m affina train --log-format jsonl ...` on whichever node
has the resources asked for (`--ray-num-cpus`, `--ray-num-gpus`; a distributed job asks for its
`nproc_per_node` GPUs). The worker follows the Ray job's log and turns its JSON lines into the
same job events and checkpoint rows as a local training; a cancel or a pause stops the Ray job.

Ray job ids derive from the job id (`affina-<job id>-<n>`): a worker that claims a job whose
latest Ray job is still pending, running or has succeeded reattaches to it (it replays the log
and records only steps not yet recorded) instead of submitting it again; after a failed or
stopped one it submits the next `n`, which resumes from the newest checkpoint.

What the cluster's nodes need (docs/jobs.md): affina installed in the Python on the PATH of
`ray start`, the same paths for the model store and the uploaded files (a shared file system),
and the base model. They never need the service database.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import threading
import time
from pathlib import Path

from ..errors import AffinaError
from .executors import LineSinks, error_line

__all__ = ["RayExecutor", "RayTraining", "submission_prefix"]

_PENDING_NOTE_SECONDS = 10.0  # a job still pending this long gets a "waiting for the cluster" event
_UNREACHABLE_SECONDS = 300.0  # the cluster unanswered this long: the job fails
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def submission_prefix(job_id: str) -> str:
    return f"affina-{job_id}-"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    # The job API answers errors with a server-side traceback; its last line names the reason.
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "."]
    return (lines[-1] if len(lines) > 1 and "Traceback" in text else lines[0] if lines else repr(error))[:300]


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, *, num_cpus: float = 1, num_gpus: float = 1):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise AffinaError("--executor ray needs Ray's job submission client, which is not installed: "
                              "pip install 'affina[ray]' (or 'ray[default]')") from None
        address = (address or "").strip()
        if not address:
            raise AffinaError("--executor ray: pass --ray-address http://HEAD:8265 (the address of the "
                              "cluster's dashboard, which serves Ray's job submission API)")
        if "://" not in address:
            address = "http://" + address
        if not address.startswith(("http://", "https://")):
            raise AffinaError(f"--ray-address {address}: give the dashboard's HTTP address, "
                              "http://HEAD:8265")
        if num_cpus < 0 or num_gpus < 0:
            raise AffinaError("--ray-num-cpus and --ray-num-gpus: give 0 or more")
        self.address, self.num_cpus, self.num_gpus = address.rstrip("/"), num_cpus, num_gpus
        try:
            self.client = JobSubmissionClient(self.address)
        except Exception as e:  # noqa: BLE001 — ConnectionError, or a server that is not Ray's
            raise AffinaError(f"cannot reach Ray's job submission API at {self.address} ({_first_line(e)}): "
                              "is the cluster's head running (`ray start --head --dashboard-host "
                              "0.0.0.0`)? pass its dashboard address as --ray-address") from None

    # -- submitting or reattaching -------------------------------------------------------

    def start(self, job, args: list[str], *, workdir: Path, sinks: LineSinks) -> "RayTraining":
        prefix = submission_prefix(job.id)
        gpus = self.gpus_for(job)
        asks = f"{self.num_cpus:g} CPU and {gpus:g} GPU"
        try:
            n, latest = self._latest(prefix)
            if latest is not None and latest.status.value in ("PENDING", "RUNNING", "SUCCEEDED"):
                sinks.replaying = True
                return RayTraining(self, latest.submission_id, sinks, reattached=True, asks=asks)
            submission_id = f"{prefix}{n + 1}"
            self.client.submit_job(
                entrypoint=self.entrypoint(args, workdir), submission_id=submission_id,
                entrypoint_num_cpus=self.num_cpus, entrypoint_num_gpus=gpus,
                runtime_env={"env_vars": self.env_vars()},
                metadata={"affina_job": job.id, "affina_model": job.ft_name})
        except (OSError, RuntimeError) as e:
            raise AffinaError(f"the Ray cluster at {self.address} did not take the job: {_first_line(e)}") from None
        return RayTraining(self, submission_id, sinks, reattached=False, asks=asks)

    def _latest(self, prefix: str):
        """(how many Ray jobs this job has had, the newest one's JobDetails or None)."""
        n, latest = 0, None
        while True:
            try:
                info = self.client.get_job_info(f"{prefix}{n + 1}")
            except RuntimeError as e:
                if "does not exist" in str(e):
                    return n, latest
                raise
            n, latest = n + 1, info

    def entrypoint(self, args: list[str], workdir: Path) -> str:
        """A shell line for the Ray job: the job's directory, then `affina` in the node's Python
        (`exec`: Ray's stop signal reaches the training itself)."""
        command = ["python", "-m", "affina", *args]
        return f"cd {shlex.quote(str(Path(workdir).resolve()))} && exec {shlex.join(command)}"

    def gpus_for(self, job) -> float:
        """A distributed job asks for one GPU per process (when it names the count); others
        for --ray-num-gpus."""
        spread = (job.method or {}).get("affina", {}).get("distributed") or {}
        if spread.get("strategy", "none") != "none" and int(spread.get("nproc_per_node") or 0) > 0 \
                and self.num_gpus > 0:
            return float(spread["nproc_per_node"])
        return float(self.num_gpus)

    def env_vars(self) -> dict[str, str]:
        """What the training needs from the worker's environment: affina's settings (its home
        and tracking URI; never the service database's URL, which may hold a password) and the
        Hugging Face cache settings. Ray starts a job with OMP_NUM_THREADS=1, which would train
        on one core: the job gets the CPUs it asked for (or the worker's own setting)."""
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, int(self.num_cpus)))
        env = {"PYTHONUNBUFFERED": "1", "COLUMNS": "1000", "OMP_NUM_THREADS": threads}
        for key, value in os.environ.items():
            if (key.startswith("AFFINA_") and key != "AFFINA_SERVICE_DB") or key in (
                    "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
                env[key] = value
        return env


class RayTraining:
    """One Ray job, followed by a thread that tails its log into the worker's sinks."""

    def __init__(self, executor: RayExecutor, submission_id: str, sinks: LineSinks, *, reattached: bool,
                 asks: str):
        self.executor, self.client, self.submission_id = executor, executor.client, submission_id
        self.sinks, self.reattached = sinks, reattached
        self.description = (f"on the Ray cluster at {executor.address}, "
                            + (f"reattached to Ray job {submission_id}" if reattached
                               else f"as Ray job {submission_id}"))
        self._tail: list[str] = []  # the last lines that were not JSON events
        self._partial = ""
        self._consumed = 0  # characters of the log already read (a re-tail starts from 0)
        self._released = threading.Event()
        self._finished = threading.Event()
        self._status: str | None = None
        self._message = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task = None
        self._asks = asks
        self._next_look = time.monotonic() + _PENDING_NOTE_SECONDS  # None: seen running
        self._reader = threading.Thread(target=self._follow, name=f"ray-log-{submission_id}", daemon=True)
        self._reader.start()

    # -- the log -------------------------------------------------------------------------

    def _follow(self) -> None:
        """Tail the Ray job's log until the job ends; the tail restarts (skipping what was read)
        when the connection drops, and the whole log is read once more at the end."""
        unreachable_since = None
        while not self._released.is_set():
            try:
                self._loop = asyncio.new_event_loop()
                self._loop.run_until_complete(self._tail_once())
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 — a dropped connection (look at
                pass                                     # the status, then tail again) or a release
            finally:
                self._loop.close()
                self._loop = None
            if self._released.is_set():
                return
            try:
                info = self.client.get_job_info(self.submission_id)
                unreachable_since = None
            except Exception as e:  # noqa: BLE001 — the cluster does not answer: retry a while
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > _UNREACHABLE_SECONDS:
                    self._status = "UNREACHABLE"
                    self._message = (f"lost contact with the Ray cluster at {self.executor.address} for "
                                     f"{_UNREACHABLE_SECONDS:.0f} s ({_first_line(e)})")
                    break
                time.sleep(2.0)
                continue
            status = info.status.value
            if status in _TERMINAL:
                try:  # whatever the tail missed
                    self._feed_from(self.client.get_job_logs(self.submission_id), 0)
                except Exception:  # noqa: BLE001
                    pass
                self._status, self._message = status, info.message or ""
                break
            time.sleep(1.0)
        if self._partial and not self._released.is_set():
            self._line(self._partial)
            self._partial = ""
        self._finished.set()

    async def _tail_once(self) -> None:
        self._task = asyncio.current_task()
        position = 0
        async for chunk in self.client.tail_job_logs(self.submission_id):
            if self._released.is_set():
                return
            self._feed_from(chunk, position)
            position += len(chunk)

    def _feed_from(self, chunk: str, position: int) -> None:
        """`chunk` starts at character `position` of the log: read only its unread part."""
        start = self._consumed - position
        if start >= len(chunk):
            return
        text = chunk[max(0, start):]
        self._consumed = position + len(chunk)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.rstrip("\r"))

    def _line(self, line: str) -> None:
        brace = line.find('{"')
        if brace >= 0:
            try:
                event = json.loads(line[brace:])
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                self.sinks.event(event)
                return
        self._tail = (self._tail + [line])[-200:]
        self.sinks.text(line)

    def _note_pending(self) -> None:
        """Once, if the Ray job still waits for resources after a while: say so in its events."""
        if self._next_look is None or time.monotonic() < self._next_look:
            return
        try:
            status = self.client.get_job_status(self.submission_id).value
        except Exception:  # noqa: BLE001 — the follower thread deals with an absent cluster
            status = None
        if status == "PENDING":
            self.sinks.note(f"Waiting for the Ray cluster to start Ray job {self.submission_id}: it asks "
                            f"for {self._asks} (`ray status` shows what the cluster has free)")
            self._next_look = None
        elif status is None:
            self._next_look = time.monotonic() + _PENDING_NOTE_SECONDS
        else:
            self._next_look = None  # it started

    # -- the worker's side ---------------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        if self._finished.wait(timeout):
            return True
        self._note_pending()
        return False

    def stop(self) -> None:
        """Stop the Ray job (Ray signals its process group) and wait for it to end. A Ray job
        still pending keeps pending: Ray queues the stop, and the job ends the moment the
        cluster places it, before its training loads anything."""
        try:
            self.client.stop_job(self.submission_id)
            pending = self.client.get_job_status(self.submission_id).value == "PENDING"
        except Exception:  # noqa: BLE001 — already ended, or the cluster is away: nothing to stop
            pending = False
        if pending:
            self.sinks.note(f"Ray job {self.submission_id} was still waiting for the cluster; Ray ends it "
                            "as soon as the cluster places it")
            self._release_reader()
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self._finished.wait(1.0):
            pass
        self._release_reader()

    def release(self, lost: bool) -> str:
        self._release_reader()
        return (f"its Ray job {self.submission_id} keeps running on the cluster"
                + ("" if lost else "; the next worker reattaches to it"))

    def _release_reader(self) -> None:
        self._released.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass
        self._reader.join(timeout=10)

    def result(self) -> str | None:
        if self._status == "SUCCEEDED":
            return None
        if self._status == "FAILED":
            message = self._message.strip().splitlines()[0] if self._message.strip() else "failed"
            message = message.split(", last available logs")[0]  # Ray's own words, without its log copy
            return f"Ray job {self.submission_id} failed on the cluster: " + error_line(self._tail, message)
        if self._status == "STOPPED":
            return (f"Ray job {self.submission_id} was stopped on the cluster, not through this "
                    "service (`ray job stop`?)")
        return self._message or f"Ray job {self.submission_id} ended as {self._status}"
