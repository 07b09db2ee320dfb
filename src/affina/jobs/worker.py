"""A worker: claims queued jobs from the service database and trains each one with the CLI's own
recipe (`affina train ... --log-format jsonl`), never in the API process. Where the training runs
is the worker's executor (`executors.py`): a local subprocess, or a job on a Ray cluster.

One job at a time per worker. While the training runs, the worker reads its JSON events
(status, step metrics, checkpoints) into job events and checkpoint rows, and heartbeats about
once a second: the heartbeat renews the job's lease and reads its status, so a cancel or a pause
stops the training within seconds (and with it all its memory). A worker killed outright
(SIGKILL) stops renewing its lease; a local training dies with it (the kernel's parent-death
signal), and once the lease runs out another worker (or the same one restarted) claims the job
again and resumes it from its last intact checkpoint (`affina train --resume`); a Ray job keeps
running on its cluster, and the next worker reattaches to it.

Workers on other machines share the queue by pointing at the same database (PostgreSQL) and
seeing the same files and model store paths (a shared file system).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from ..errors import AffinaError
from .executors import Executor, LocalExecutor, Training, train_arguments
from .store import JobRow, JobStore

__all__ = ["Worker", "newest_checkpoint", "DEFAULT_LEASE_SECONDS"]

DEFAULT_LEASE_SECONDS = 30.0


class Worker:
    def __init__(self, store: JobStore, *, worker_id: str | None = None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, poll_seconds: float = 1.0,
                 register: bool = True, executor: Executor | None = None):
        self.store = store
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.lease_seconds, self.poll_seconds = lease_seconds, poll_seconds
        self.register = register
        self.executor = executor or LocalExecutor()
        self._stop = threading.Event()

    # -- the loop ------------------------------------------------------------------------

    def run_forever(self, *, once: bool = False) -> None:
        """Claim and run jobs until stopped (SIGTERM/SIGINT: the running job is put back in the
        queue and continues from its checkpoint with the next worker). `once`: stop when the
        queue is empty."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        while not self._stop.is_set():
            job = self.store.claim(self.worker_id, self.lease_seconds)
            if job is None:
                if once:
                    return
                self._stop.wait(self.poll_seconds)
                continue
            self.run_job(job)

    def stop(self) -> None:
        self._stop.set()

    # -- one job -------------------------------------------------------------------------

    def run_job(self, job: JobRow) -> str:
        """Train one claimed job to its end (succeeded, failed) or until it is cancelled, paused
        or taken away; returns the status it ended in."""
        from ..record.run_record import MANIFEST_NAME

        store = self.store
        run_dir = Path(job.run_dir)
        if (run_dir / MANIFEST_NAME).is_file():
            # Its training finished (the record is written last) before the job was paused or its
            # worker lost it: nothing is left to train, only the result to register.
            store.add_event(job.id, "Training had already finished; registering its result")
            return self._succeed(job)
        checkpoint = newest_checkpoint(run_dir)
        try:
            args = self._arguments(job, run_dir, checkpoint)
        except AffinaError as e:
            return self._fail(job, "invalid_training_file", str(e), "training_file")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(run_dir.parent / f"{job.id}.stderr", "a", encoding="utf-8") as log:
            sinks = _JobSinks(self, job, log)
            try:
                training = self.executor.start(job, args, workdir=run_dir.parent, sinks=sinks)
            except AffinaError as e:  # the cluster refused it or cannot be reached
                return self._fail(job, "executor_failed", str(e), None)
            if job.attempts > 1 and checkpoint and not training.reattached:
                store.add_event(job.id, f"Resuming from {Path(checkpoint).name} (attempt {job.attempts})",
                                data={"checkpoint": Path(checkpoint).name, "attempt": job.attempts})
            store.add_event(job.id, f"Fine-tuning job started on worker {self.worker_id}, training "
                            f"{training.description}",
                            data={"status": "running", "worker": self.worker_id,
                                  "executor": self.executor.name})
            stopped_for = self._watch(job, training)
        if stopped_for is not None:
            return stopped_for
        error = training.result()
        if error is None:
            return self._succeed(job)
        return self._fail(job, "training_failed", error, None)

    def _arguments(self, job: JobRow, run_dir: Path, checkpoint: str | None) -> list[str]:
        import yaml

        from ..config import config_to_dict
        from .service import run_config

        if checkpoint:
            return train_arguments(None, run_dir)
        training = self.store.get_file(job.training_file)
        validation = self.store.get_file(job.validation_file) if job.validation_file else None
        if training is None or (job.validation_file and validation is None):
            raise AffinaError(f"a file of job {job.id} was deleted before it ran")
        cfg = run_config(job, training.path, validation.path if validation else None)
        config_path = run_dir.parent / f"{job.id}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return train_arguments(config_path, None)

    def _watch(self, job: JobRow, training: Training) -> str | None:
        """Heartbeat until the training ends. Returns None when it ended by itself, else the
        status it was stopped for (cancelled, paused, lost, queued)."""
        while True:
            if training.wait(1.0):
                return None
            if self._stop.is_set():  # this worker is shutting down: hand the job back
                what = training.release(lost=False)
                self.store.set_status(job.id, "queued", f"Worker {self.worker_id} stopped and {what}; "
                                      "the job is queued again for the next worker",
                                      expect=("running",), worker_id=None, lease_until=None)
                return "queued"
            try:
                status = self.store.heartbeat(job.id, self.worker_id, self.lease_seconds)
            except Exception:  # noqa: BLE001 — a database hiccup: keep training, try again
                continue
            if status == "running":
                continue
            if status is None:  # the lease ran out and another worker took the job
                training.release(lost=True)
                return "lost"
            training.stop()
            if status == "paused":
                self.store.add_event(job.id, "Training stopped for the pause; the last checkpoint is kept")
            elif status == "cancelled":
                self.store.add_event(job.id, "Training stopped for the cancellation")
            return status

    def _event(self, job: JobRow, event: dict) -> None:
        """One of the training's JSON events → job events and checkpoint rows."""
        store = self.store
        kind = event.get("event")
        if kind == "train_begin":
            store.add_event(job.id, f"Training at step {event.get('step')} of "
                            f"{event.get('max_steps')}", data=event)
        elif kind == "log":
            self._metrics(job, event)
        elif kind == "checkpoint":
            store.add_checkpoint(job.id, int(event["step"]), str(event["path"]),
                                 event.get("loss"), event.get("eval_loss"))
            _drop_deleted_checkpoints(store, job.id)
            store.add_event(job.id, f"Checkpoint created at step {event['step']}",
                            data={"step": event["step"], "train_loss": event.get("loss"),
                                  "valid_loss": event.get("eval_loss")})
        elif kind == "train_end":
            store.add_event(job.id, f"Training finished at step {event.get('step')} in "
                            f"{event.get('seconds')} s", data=event)

    def _metrics(self, job: JobRow, event: dict) -> None:
        step, total = event.get("step"), event.get("max_steps")
        data = {"step": step, "total_steps": total, "epoch": event.get("epoch"),
                "tokens_per_s": event.get("tokens_per_s")}
        if "loss" in event:
            data["train_loss"] = event["loss"]
        if "eval_loss" in event:
            data["valid_loss"] = event["eval_loss"]
        if "learning_rate" in event:
            data["learning_rate"] = event["learning_rate"]
        if not ("train_loss" in data or "valid_loss" in data):
            return  # the trainer's end-of-run summary line: the record has it
        parts = [f"Step {step}/{total}"]
        if "train_loss" in data:
            parts.append(f"training loss={data['train_loss']:.4f}")
        if "valid_loss" in data:
            parts.append(f"validation loss={data['valid_loss']:.4f}")
        self.store.add_event(job.id, ", ".join(parts), type="metrics", data=data)
        updates = {"trained_tokens": int(event.get("tokens_seen") or 0) or None}
        if step and total:
            started = self.store.get_job(job.id).started_at or int(time.time())
            elapsed = max(1.0, time.time() - started)
            updates["estimated_finish"] = int(time.time() + elapsed / step * max(0, total - step))
        self.store.update_job(job.id, expect=("running",), **updates)

    # -- endings -------------------------------------------------------------------------

    def _succeed(self, job: JobRow) -> str:
        from ..record import read_record

        run_dir = Path(job.run_dir)
        registered = None
        try:
            record = read_record(run_dir)
            (run_dir / "job.json").write_text(json.dumps({
                "job_id": job.id, "owner": job.owner, "model": job.model,
                "training_file": job.training_file, "validation_file": job.validation_file,
                "fine_tuned_model": job.ft_name, "hyperparameters": job.hyperparameters,
                "method": job.method,
                "continues": _continues(job)}, indent=1))
            if self.register:
                from ..govern.registry import register_run
                from .service import ft_registry_name

                version = register_run(run_dir, ft_registry_name(job))
                registered = version.ref
                self.store.add_event(job.id, f"Registered as {registered}",
                                     data={"registered_as": registered})
        except AffinaError as e:
            return self._fail(job, "registration_failed", str(e), None)
        tokens = self.store.get_job(job.id).trained_tokens
        done = self.store.set_status(
            job.id, "succeeded", f"New fine-tuned model created: {job.ft_name}",
            expect=("running",), fine_tuned_model=job.ft_name, registered_as=registered,
            estimated_finish=None, trained_tokens=tokens or None)
        if done:
            self.store.add_event(job.id, "The job has successfully completed",
                                 data={"train_loss": record.train.train_loss if record.train else None,
                                       "valid_loss": record.metrics.validation_loss if record.metrics else None})
        return "succeeded" if done else self.store.get_job(job.id).status

    def _fail(self, job: JobRow, code: str, message: str, param: str | None) -> str:
        self.store.set_status(job.id, "failed", message, expect=("running",), level="error",
                              error={"code": code, "message": message, "param": param},
                              estimated_finish=None)
        return "failed"


def newest_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint that looks whole (its trainer state parses, its weights are not
    empty), or None. The training process checks it again properly when it resumes (and skips a
    corrupt one); this cheap look keeps torch out of the worker process."""
    def step(path: Path) -> int:
        tail = path.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    for ckpt in sorted(Path(run_dir).glob("checkpoints/checkpoint-*"), key=step, reverse=True):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            weights = [p for p in ckpt.iterdir() if p.suffix in (".safetensors", ".bin")]
        except (OSError, ValueError):
            continue
        if weights and all(p.stat().st_size > 0 for p in weights):
            return str(ckpt)
    return None


def _drop_deleted_checkpoints(store: JobStore, job_id: str) -> None:
    """The trainer keeps a few checkpoints and deletes older ones: list only those on disk."""
    for row in store.list_checkpoints(job_id, limit=1000).data:
        if not Path(row.path).is_dir():
            store.drop_checkpoint(job_id, row.step)


class _JobSinks:
    """The training's output for one job: JSON events into the job's rows, other lines into its
    log file (`<job>.stderr` beside the run), `warning ...` lines also as warn events."""

    def __init__(self, worker: Worker, job: JobRow, log):
        self.worker, self.job, self.log = worker, job, log
        self.replaying = False
        self._recorded_step: int | None = None
        self._lock = threading.Lock()  # two reader threads may write the log

    def event(self, event: dict) -> None:
        try:
            if self.replaying and event.get("event") in ("train_begin", "log", "checkpoint") \
                    and int(event.get("step") or 0) <= self._recorded():
                return  # an earlier worker recorded it
            self.worker._event(self.job, event)
        except Exception:  # noqa: BLE001 — one bad event must not stop the reading
            pass

    def _recorded(self) -> int:
        """The last step this job's events or checkpoints record (-1: none)."""
        if self._recorded_step is None:
            store, steps = self.worker.store, [-1]
            steps += [int(e.data["step"]) for e in store.events_since(self.job.id, 0)
                      if e.type == "metrics" and isinstance(e.data, dict) and e.data.get("step") is not None]
            steps += [c.step for c in store.list_checkpoints(self.job.id, limit=1000).data]
            self._recorded_step = max(steps)
        return self._recorded_step

    def note(self, message: str) -> None:
        try:
            self.worker.store.add_event(self.job.id, message)
        except Exception:  # noqa: BLE001
            pass

    def text(self, line: str) -> None:
        with self._lock:
            self.log.write(line + "\n")
            self.log.flush()
        line = line.strip()
        if line.startswith("warning "):
            try:
                self.worker.store.add_event(self.job.id, line.removeprefix("warning ").strip(), level="warn")
            except Exception:  # noqa: BLE001
                pass


def _continues(job) -> str | None:
    """What a continuing job started from: the registered version, or the checkpoint's directory."""
    continued = (job.method.get("affina") or {}).get("continue") or {}
    return continued.get("ref") or continued.get("checkpoint")
