"""Where a worker's training runs: the executor seam.

A worker claims a job, holds its lease and turns the training's JSON lines into job events; an
executor only starts `affina train ...` somewhere and reports back:

- `local` (`LocalExecutor`): a subprocess of the worker, in its own process group, that dies
  with the worker.
- `ray` (`jobs/ray_executor.py`): a Ray job on an existing cluster, submitted through Ray's job
  submission API; it outlives the worker, and the next worker reattaches to it.

An executor's `start` returns a `Training`, which the worker heartbeats over until it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

__all__ = ["Executor", "Training", "LineSinks", "LocalExecutor", "make_executor", "EXECUTORS",
           "train_arguments", "error_line"]

EXECUTORS = ("local", "ray")
_STOP_GRACE_SECONDS = 3.0


def train_arguments(config_path: Path | None, resume_dir: Path | None) -> list[str]:
    """`affina train`'s arguments: a new run from a config, or `--resume` of a run."""
    base = ["train", "--log-format", "jsonl"]
    return base + (["--resume", str(resume_dir)] if resume_dir else ["-c", str(config_path)])


class LineSinks(Protocol):
    """What a worker does with the training's output: `event` takes a JSON line's object,
    `text` any other line (the log file, and `warning ...` lines as warn events), `note` a
    message of the executor's own (a job event)."""

    # Set by an executor that reattaches to a training an earlier worker followed: its output
    # is read again from the start, and steps already recorded are skipped.
    replaying: bool

    def event(self, event: dict) -> None: ...

    def text(self, line: str) -> None: ...

    def note(self, message: str) -> None: ...


class Training(Protocol):
    """One job's training, wherever it runs."""

    description: str  # where it runs, for the job's events ("on worker host h", "as Ray job ...")
    reattached: bool  # it was already running (or done) when this worker claimed the job

    def wait(self, timeout: float) -> bool:
        """True once the training has ended (by itself or stopped)."""

    def stop(self) -> None:
        """End it now, for good (a cancel or a pause)."""

    def release(self, lost: bool) -> str:
        """The worker lets go of the job (it is stopping, or `lost` its lease to another worker).
        Returns what became of the training, for the job's event."""

    def result(self) -> str | None:
        """After it ended by itself: None when it succeeded, else the one-line reason."""


class Executor(Protocol):
    name: str

    def start(self, job, args: list[str], *, workdir: Path, sinks: LineSinks) -> Training:
        """Start `affina <args>` for `job` (a JobRow) with `workdir` as its directory."""


def make_executor(name: str, *, ray_address: str | None = None, ray_num_cpus: float = 1,
                  ray_num_gpus: float = 1) -> Executor:
    """The executor a worker was configured with (`--executor`)."""
    from ..errors import AffinaError

    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(ray_address, num_cpus=ray_num_cpus, num_gpus=ray_num_gpus)
    raise AffinaError(f"--executor {name}: use one of {', '.join(EXECUTORS)}")


# -- local ------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: new process group (cancel kills the group), and SIGKILL when the
    worker dies, so a killed worker never leaves training running behind it (Linux)."""
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalExecutor:
    """`python -m affina train ...` as a subprocess of the worker, on the worker's machine."""

    name = "local"

    def start(self, job, args: list[str], *, workdir: Path, sinks: LineSinks) -> "LocalTraining":
        return LocalTraining([sys.executable, "-m", "affina", *args], workdir, sinks)


class LocalTraining:
    def __init__(self, command: list[str], workdir: Path, sinks: LineSinks):
        import socket

        self.description, self.reattached = f"on worker host {socket.gethostname()}", False
        # Wide columns: rich must not fold a warning over several lines.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}
        self._stderr_tail: list[str] = []
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     preexec_fn=_die_with_parent, cwd=str(workdir))
        self._readers = [threading.Thread(target=self._read_stdout, args=(sinks,), daemon=True),
                         threading.Thread(target=self._read_stderr, args=(sinks,), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, sinks: LineSinks) -> None:
        import json

        for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(event, dict):
                sinks.event(event)

    def _read_stderr(self, sinks: LineSinks) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._stderr_tail = (self._stderr_tail + [line])[-200:]
            sinks.text(line)

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        for reader in self._readers:
            reader.join(timeout=10)
        return True

    def stop(self) -> None:
        """The whole training process group: SIGTERM, then SIGKILL after a short grace."""
        for sig, wait in ((signal.SIGTERM, _STOP_GRACE_SECONDS), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for reader in self._readers:
            reader.join(timeout=10)

    def release(self, lost: bool) -> str:
        self.stop()  # a local training never outlives its worker
        return "its training was stopped"

    def result(self) -> str | None:
        rc = self.proc.returncode
        return None if rc == 0 else error_line(self._stderr_tail, f"training exited with code {rc}")


def error_line(lines: list[str], fallback: str) -> str:
    """The one-line reason the training process gave (`affina: error: ...`), else `fallback` and
    the last line it wrote."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("affina: error:"):
            return line.removeprefix("affina: error:").strip()
    tail = lines[-1] if lines else ""
    return fallback + (f": {tail[:500]}" if tail else "")

