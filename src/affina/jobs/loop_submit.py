"""The retraining loop's submitter through the jobs API: the continued training becomes a
fine-tuning job like any other (queued, run by a worker, shown on the jobs page, registered).

    upload   the feedback rows (train split, and the held-out split as the validation file,
             which a continued job also scores before and after as the new task)
    create   a job whose `model` is the served version (NAME@N), with
             `method.affina.replay_fraction` and the policy's train keys
    wait     until it ends; a failed or cancelled job is an error with the job's own message
    return   the job's run directory (through the registry, shared with the workers)

Two queues, one shape: `HttpQueue` talks to a server's /v1 API (`affina monitor --loop
--jobs-url URL`), `LocalQueue` adds to the queue in the service database directly (the server's
own scheduled monitor: `affina serve --monitor-every ... --monitor-policy ...`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import AffinaError, ConfigError
from ..monitor.loop import TrainedRun, TrainingJob
from ..ui import info

__all__ = ["HttpQueue", "LocalQueue", "JobsSubmitter", "job_body", "LOOP_JOBS_ENV", "local_queue_from_env"]

# How `affina serve` tells its scheduled monitor where its own queue is (a JSON object with the
# files directory, model store, base spec and base names; the database URL travels with the
# request log's, in monitor.commands.LOG_URL_ENV).
LOOP_JOBS_ENV = "AFFINA_LOOP_JOBS"
_TERMINAL = ("succeeded", "failed", "cancelled")
_EVAL_KEYS = ("max_new_tokens", "batch_size", "metrics")


def job_body(job: TrainingJob, model: str, training_file: str, validation_file: str | None) -> dict:
    """The POST /v1/fine_tuning/jobs body of a retraining: the policy's `train` overrides become
    OpenAI's hyperparameters (epochs, batch size) and affina's `method.affina.train` keys."""
    from ..config import load_config

    typed = load_config(None, job.extra)  # values as `affina train` reads them (`3e-2` is a number)
    hp: dict = {}
    train: dict = {}
    evaluation: dict = {}
    for item in job.extra:
        key = item.partition("=")[0].strip()
        section, _, name = key.partition(".")
        value = getattr(getattr(typed, section, None), name, None)
        if key == "train.epochs":
            hp["n_epochs"] = value
        elif key == "train.batch_size":
            hp["batch_size"] = value
        elif section == "train" and name:
            train[name] = value
        elif section == "eval" and name in _EVAL_KEYS:
            evaluation[name] = value
        else:
            raise ConfigError(f"policy key 'train': {item!r} cannot be set on a fine-tuning job; use "
                              f"train.* keys and eval.{', eval.'.join(_EVAL_KEYS)}")
    extension = {"replay_fraction": job.replay_fraction,
                 **({"train": train} if train else {}), **({"eval": evaluation} if evaluation else {})}
    return {"model": model, "training_file": training_file,
            **({"validation_file": validation_file} if validation_file else {}),
            "seed": job.seed, "suffix": "retrain",
            "metadata": {"trigger": "retraining loop", "monitored": job.continue_from},
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp} if hp else {},
                       "affina": extension}}


class HttpQueue:
    """A server's jobs API over HTTP (the CLI's own client, `affina jobs submit`)."""

    def __init__(self, url: str, api_key: str | None):
        from .commands import ApiClient

        self.client = ApiClient(url, api_key)
        self.where = url

    def upload(self, path: Path) -> str:
        return self.client.upload(path)["id"]

    def create(self, body: dict) -> dict:
        return self.client.request("POST", "/fine_tuning/jobs", body)

    def get(self, job_id: str) -> dict:
        return self.client.request("GET", f"/fine_tuning/jobs/{job_id}")

    def registered_as(self, job_id: str) -> str | None:
        page = self.client.request("GET", f"/fine_tuning/jobs/{job_id}/events?limit=100")
        for event in page.get("data", []):
            name = (event.get("data") or {}).get("registered_as")
            if name:
                return name
        return None

    def run_dir(self, job_id: str) -> Path | None:
        return None  # not part of the API: the registry tells


class LocalQueue:
    """The queue in a service database, as the server's own jobs service (same files directory,
    model store and base): a job added here is one the server's workers run."""

    def __init__(self, service):
        from .service import Caller

        self.service, self.caller = service, Caller(None, True)
        self.where = f"the queue in {service.store.display_url}"

    def upload(self, path: Path) -> str:
        staged = self.service.upload_dir() / path.name
        shutil.copyfile(path, staged)
        return self.service.add_file(staged, path.name, "fine-tune", self.caller).id

    def create(self, body: dict) -> dict:
        row = self.service.create_job(body, self.caller)
        return self.service.validate_job(row.id).to_openai()

    def get(self, job_id: str) -> dict:
        return self.service.job(job_id, self.caller).to_openai()

    def registered_as(self, job_id: str) -> str | None:
        return self.service.job(job_id, self.caller).registered_as

    def run_dir(self, job_id: str) -> Path | None:
        row = self.service.job(job_id, self.caller)
        return Path(row.run_dir) if row.run_dir else None


def local_queue_from_env() -> LocalQueue | None:
    """The server's own queue when `affina serve` started this monitor, else None."""
    import json

    from ..monitor.commands import LOG_URL_ENV
    from .service import JobsService
    from .store import JobStore

    raw, db = os.environ.get(LOOP_JOBS_ENV), os.environ.get(LOG_URL_ENV)
    if not raw or not db:
        return None
    spec = json.loads(raw)
    service = JobsService(JobStore(db), Path(spec["files"]), Path(spec["store"]), base_spec=spec["base"],
                          base_names=tuple(spec["names"]))
    return LocalQueue(service)


@dataclass
class JobsSubmitter:
    """`run_loop`'s `submit`: the retraining as a job on `queue`, waited for."""

    queue: object  # HttpQueue | LocalQueue
    poll_seconds: float = 2.0
    timeout_seconds: float = 6 * 3600.0

    def __call__(self, job: TrainingJob) -> TrainedRun:
        from ..govern.registry import lookup, parse_ref

        training = self.queue.upload(job.train_file)
        validation = self.queue.upload(job.eval_file) if job.eval_file else None
        created = self.queue.create(job_body(job, job.version, training, validation))
        job_id = created["id"]
        info(f"retraining submitted as fine-tuning job {job_id} ({self.queue.where})")
        deadline = time.monotonic() + self.timeout_seconds
        state = created
        while state["status"] not in _TERMINAL:
            if time.monotonic() > deadline:
                raise AffinaError(f"fine-tuning job {job_id} did not finish within "
                                  f"{self.timeout_seconds:.0f}s; it keeps running (affina jobs show {job_id})")
            time.sleep(self.poll_seconds)
            state = self.queue.get(job_id)
        if state["status"] != "succeeded":
            error = (state.get("error") or {}).get("message") or state["status"]
            raise AffinaError(f"fine-tuning job {job_id} {state['status']}: {error}")
        registered = self.queue.registered_as(job_id)
        run_dir = lookup(parse_ref(registered)).run_dir if registered else self.queue.run_dir(job_id)
        if run_dir is None:
            raise AffinaError(f"fine-tuning job {job_id} succeeded but its run was not registered (a worker "
                              "with --no-register); the loop finds the run through the registry")
        return TrainedRun(Path(run_dir), job_id=job_id, fine_tuned_model=state.get("fine_tuned_model"),
                          registered_as=registered, training_file=training, validation_file=validation)
