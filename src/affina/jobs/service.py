"""The jobs service: what the HTTP API and the CLI ask of files and fine-tuning jobs.

- `add_file`: an upload checked with the data checks of `affina data inspect` (every row read
  and converted, one kind of example, duplicates counted), then published by rename; a bad file
  is refused with the one-line `file:line` message and nothing of it is kept.
- `create_job`: the request checked (files owned by the caller, the model, the method and its
  options, the hyperparameters), stored as `validating_files`; `validate_job` then reads the
  data with the base model's tokenizer, resolves "auto" hyperparameters (`auto.py`) and queues it.
- `cancel`, `pause`, `resume`: status moves; a worker running the job sees them at its next
  heartbeat (about a second) and stops the training process.
- `run_config`: the run config a worker trains a job with (the same `affina train` recipe).

A job whose `model` is a fine-tuned model (an `ft:` name this server produced, or a registry
reference `NAME@ALIAS|VERSION` of a run trained on this server's base) continues it, as
`affina train --continue-from` does: same method and options, its weights as the start,
`method.affina.replay_fraction` of the examples replayed from its training data, the learning
rate re-warmed, and every earlier evaluation set scored before and after (forgetting). The
reference is pinned to its version when the job is created, so a moving alias changes nothing.

Ownership: every file and job belongs to the API key that created it (None on an open server).
A caller that is not an admin sees only its own; another key's ids answer "not found".
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import AffinaError
from .request import (HYPERPARAMETERS, JobRequestError, NotFound, continued_method, distributed_options, eval_settings,
                      parse_hyperparameters, parse_metadata, parse_method, replay_fraction)
from .store import TERMINAL, FileRow, JobRow, JobStore, new_id

__all__ = ["CHECKPOINT_MODEL", "JobsService", "Caller", "JobRequestError", "NotFound", "FILE_SUFFIXES", "SUPPORTED_PURPOSES",
           "ft_registry_name", "run_config"]

CHECKPOINT_MODEL = re.compile(r"(?P<model>ft:.+):ckpt-step-(?P<step>\d+)")  # one of a job's checkpoints

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
SUPPORTED_PURPOSES = ("fine-tune",)
_SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Caller:
    """Who asks: an API key id (None on an open server) and whether it may see everything."""

    key_id: str | None
    admin: bool = True


def ft_registry_name(job: JobRow) -> str:
    """The registry name a job's result is registered under: `ft-<base>-<suffix>-<job id>`,
    cleaned to the registry's characters (the `ft:...` name itself holds colons). One name per
    job, ending in its id, so a registry reference is owned as the job is."""
    root = job.base_name
    middle = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{root}-{job.suffix}" if job.suffix else root)
    return f"ft-{middle.strip('-.')[:60]}-{job.id}"


class JobsService:
    def __init__(self, store: JobStore, files_dir: Path, models_dir: Path, *, base_spec: str,
                 base_names: tuple[str, ...] = ()):
        """`models_dir`: where job runs are written (the server's model store). `base_spec`: the
        base the server serves; `base_names`: the names it answers to (`base`, `default`...)."""
        self.store = store
        self.files_dir = Path(files_dir)
        self.models_dir = Path(models_dir).resolve()
        # Job runs live in a hidden directory of the store: the store's own listing (names that
        # start with a letter or digit) never serves them under a plain name, only as `ft:`
        # names, which are checked against their owner.
        self.runs_dir = self.models_dir / ".jobs"
        self.base_spec = base_spec
        self.base_names = tuple(dict.fromkeys((*base_names, base_spec)))
        if not self.files_dir.is_dir():  # uploaded data is nobody else's business: 0700
            self.files_dir.mkdir(parents=True, mode=0o700)
            os.chmod(self.files_dir, 0o700)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._tokenizer = None

    # -- files ---------------------------------------------------------------------------

    def upload_dir(self) -> Path:
        """A fresh private directory for one upload, inside the files directory (so that the
        final rename stays on one file system)."""
        return Path(tempfile.mkdtemp(prefix=".upload-", dir=self.files_dir))

    def add_file(self, staged: Path, filename: str, purpose: str, caller: Caller) -> FileRow:
        """Check and publish `staged` (a file in an `upload_dir`); the upload directory is
        removed whatever happens."""
        try:
            return self._add_file(staged, filename, purpose, caller)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)

    def _add_file(self, staged: Path, filename: str, purpose: str, caller: Caller) -> FileRow:
        from ..data.checks import find_duplicates
        from ..data.loading import load_records

        if purpose not in SUPPORTED_PURPOSES:
            raise JobRequestError(f"purpose {purpose!r} is not supported: this server takes "
                                  f"{', '.join(SUPPORTED_PURPOSES)} files", param="purpose")
        suffix = Path(filename).suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise JobRequestError(f"{filename}: unsupported file type {suffix or '(none)'!r}; upload "
                                  f"{', '.join(FILE_SUFFIXES)}", code="invalid_file_format", param="file")
        prefix = str(staged.parent) + os.sep
        try:
            loaded = load_records([staged])
        except AffinaError as e:  # the file:line message, naming the file as the client sent it
            raise JobRequestError(str(e).replace(prefix, "").splitlines()[0],
                                  code="invalid_file_format", param="file") from None
        if not loaded.records:
            raise JobRequestError(f"{filename}: no examples in the file", code="invalid_file_format",
                                  param="file")
        notes = [w.replace(prefix, "") for w in loaded.warnings]
        duplicates = find_duplicates(loaded.records)
        if duplicates and not any("duplicate" in n for n in notes):
            notes.append(f"{len(duplicates)} duplicate example(s)")
        file_id = new_id("file")
        final = self.files_dir / f"{file_id}{suffix}"
        digest = hashlib.sha256(staged.read_bytes()).hexdigest()
        size = staged.stat().st_size
        os.replace(staged, final)  # atomic: the file is whole under its final name, or absent
        row = FileRow(id=file_id, owner=caller.key_id, filename=filename, purpose=purpose, bytes=size,
                      created_at=int(time.time()), path=str(final), sha256=digest,
                      format=loaded.files[0]["format"], rows=len(loaded.records),
                      status_details="; ".join(notes) or None)
        try:
            return self.store.add_file(row)
        except Exception:
            final.unlink(missing_ok=True)
            raise

    def file(self, file_id: str, caller: Caller, param: str | None = None) -> FileRow:
        row = self.store.get_file(file_id, caller.key_id, admin=caller.admin)
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param=param)
        return row

    def delete_file(self, file_id: str, caller: Caller) -> FileRow:
        row = self.file(file_id, caller)
        job = self.store.file_in_use(file_id)
        if job:
            raise JobRequestError(f"file {file_id} is used by job {job}, which has not finished; "
                                  "cancel it or wait", status=409, code="file_in_use")
        self.store.delete_file(file_id)
        Path(row.path).unlink(missing_ok=True)
        return row

    # -- jobs ----------------------------------------------------------------------------

    def job(self, job_id: str, caller: Caller) -> JobRow:
        row = self.store.get_job(job_id, caller.key_id, admin=caller.admin)
        if row is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return row

    def create_job(self, body: dict, caller: Caller) -> JobRow:
        """Check a POST /v1/fine_tuning/jobs body and store the job as `validating_files`."""
        if not isinstance(body, dict):
            raise JobRequestError("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise JobRequestError("model is required: the base model to fine-tune", param="model")
        base_spec = self._base_of(model)
        continued = self._continuation(model, caller) if base_spec is None else None
        base_spec = base_spec or self.base_spec
        training = body.get("training_file")
        if not isinstance(training, str):
            raise JobRequestError("training_file is required: the id of an uploaded file",
                                  param="training_file")
        self.file(training, caller, "training_file")
        validation = body.get("validation_file")
        if validation is not None:
            if not isinstance(validation, str):
                raise JobRequestError("validation_file must be a file id", param="validation_file")
            self.file(validation, caller, "validation_file")
        method_obj, method_name, options, section_hp, train_extra = parse_method(body.get("method"))
        replay = replay_fraction(body.get("method"))
        if continued is not None:
            method_name, options = continued_method(continued, body.get("method"), method_name, options)
            continued["replay_fraction"] = 0.25 if replay is None else replay
        elif replay is not None:
            raise JobRequestError("method.affina.replay_fraction applies to a job that continues a "
                                  "fine-tuned model (model ft:... or NAME@ALIAS); this job fine-tunes the "
                                  "base", param="method.affina.replay_fraction")
        requested = {**parse_hyperparameters(body.get("hyperparameters"), "hyperparameters"), **section_hp}
        for key in HYPERPARAMETERS:
            requested.setdefault(key, "auto")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.fullmatch(suffix)):
            raise JobRequestError("suffix: up to 64 letters, digits, '.', '_' or '-'", param="suffix")
        seed = body.get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(3), "big")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2_147_483_647:
            raise JobRequestError("seed must be an integer between 0 and 2147483647", param="seed")
        metadata = parse_metadata(body.get("metadata"))
        spread = distributed_options(body.get("method"), method_name)
        train_extra = self._check_method(method_name, options, train_extra, spread)
        eval_extra = eval_settings(body.get("method"))
        job_id = new_id("ftjob")
        row = JobRow(id=job_id, owner=caller.key_id, model=model, base_spec=base_spec,
                     training_file=training, validation_file=validation, requested=requested,
                     hyperparameters=dict(requested),
                     method={**method_obj, "affina": {"method": method_name, "options": options,
                                                      **({"train": train_extra} if train_extra else {}),
                                                      **({"eval": eval_extra} if eval_extra else {}),
                                                      **({"distributed": spread} if spread else {}),
                                                      **({"continue": continued} if continued else {})}},
                     suffix=suffix, seed=seed, metadata=metadata, status="validating_files",
                     created_at=int(time.time()), run_dir=str(self.runs_dir / job_id))
        self.store.add_job(row)
        self.store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        self.store.add_event(job_id, f"Validating training file: {training}"
                             + (f" and validation file: {validation}" if validation else ""))
        return row

    def _base_of(self, model: str) -> str | None:
        """The spec a job trains from: the server serves one base, and a job's result must be
        answerable by it, so a job fine-tunes that base (named as the server names it), or
        continues a fine-tuned model of it (None: see `_continuation`)."""
        if model in self.base_names:
            return self.base_spec
        if model.startswith("ft:") or "@" in model:
            return None
        raise JobRequestError(f"model {model!r} is not a base model this server fine-tunes; use "
                              f"one of: {', '.join(self.base_names)}, a fine-tuned model (ft:...) or a "
                              "registry reference NAME@ALIAS to continue it", code="model_not_found",
                              param="model")

    def _continuation(self, model: str, caller: Caller) -> dict:
        """What a job continuing `model` starts from: the earlier run, its registry version
        (pinned), the method it was trained with, and the base name its result is named after.
        An unknown model, another key's, one on another base, or one whose method cannot be
        continued is refused here, before anything is stored."""
        from ..govern.registry import lookup, parse_ref
        from ..methods import get_method
        from ..record import read_record

        unknown = JobRequestError(f"model {model!r} does not exist: continue a fine-tuned model of this "
                                  "server (GET /v1/models lists them) or a registry reference NAME@ALIAS",
                                  code="model_not_found", param="model")
        checkpoint_dir = None
        if model.startswith("ft:"):
            step = CHECKPOINT_MODEL.fullmatch(model)  # ft:...:ckpt-step-N, one of a job's checkpoints
            job = self.store.job_by_model(step["model"] if step else model)
            if job is None or not (caller.admin or job.owner == caller.key_id):
                raise unknown
            if job.status != "succeeded" or not job.run_dir:
                raise unknown
            run_dir, ref = Path(job.run_dir), job.registered_as
            root = job.base_name
            if step:  # its weights, from the run (not the registered version, which is the last)
                checkpoint = self.store.checkpoint(job.id, int(step["step"]))
                if checkpoint is None or not Path(checkpoint.path).is_dir():
                    raise JobRequestError(f"model {model!r}: job {job.id} has no checkpoint at step {step['step']} "
                                          "any more; GET /v1/fine_tuning/jobs/{id}/checkpoints lists them",
                                          code="model_not_found", param="model")
                checkpoint_dir, ref = str(Path(checkpoint.path).resolve()), None
        else:
            parsed = parse_ref(model)
            owner_job = re.fullmatch(r"ft-.*-(?P<job>ftjob-[0-9a-f]{24})", parsed.name) if parsed else None
            if parsed is None:
                raise unknown
            if owner_job and not caller.admin:
                job = self.store.get_job(owner_job["job"])
                if job is not None and job.owner != caller.key_id:
                    raise unknown
            try:
                version = lookup(parsed)
            except AffinaError:
                raise unknown from None
            run_dir, ref = version.run_dir, f"{version.name}@{version.version}"
            root = next((n for n in self.base_names if n != self.base_spec), self.base_names[0])
        try:
            record = read_record(run_dir)
        except AffinaError:
            raise JobRequestError(f"model {model!r}: its run {run_dir} cannot be read; it cannot be "
                                  "continued", code="model_not_found", param="model") from None
        if not self._same_base(record.base_model):
            raise JobRequestError(f"model {model!r} was trained on base {record.base_model.spec}, not on "
                                  f"this server's base ({', '.join(self.base_names)}); continue it with "
                                  "`affina train --continue-from` or on a server of that base",
                                  code="model_not_supported", param="model")
        method = get_method(record.method.name)
        if not method.can_continue:
            raise JobRequestError(f"model {model!r} was trained with method {method.name}, which cannot "
                                  "be continued; fine-tune the base on the combined data instead",
                                  code="model_not_supported", param="model")
        return {"from": model, "ref": ref, "run_dir": str(Path(run_dir).resolve()),
                **({"checkpoint": checkpoint_dir} if checkpoint_dir else {}),
                "method": method.name, "options": dict(record.method.options), "base_name": root}

    def _same_base(self, base) -> bool:
        """Whether a run's base (its record's `base_model`) is the one this server serves: the
        same model directory, or the same fingerprint."""
        from ..models import resolve_model_path

        try:
            ours = resolve_model_path(self.base_spec).resolve()
        except AffinaError:
            return False
        if base.path and Path(base.path).resolve() == ours:
            return True
        if base.fingerprint:
            from ..models.fingerprint import model_fingerprint

            try:
                return model_fingerprint(ours) == base.fingerprint
            except (AffinaError, OSError):
                return False
        return False

    @staticmethod
    def _check_method(name: str, options: dict, train_extra: dict, spread: dict) -> dict:
        """Check the method, its options and the train keys, alone and with the method and the
        job's distributed settings (the training step's keys conflict with some); the train keys
        typed as the config reads them (`1e-4` is a number, not a string)."""
        from ..config import RunConfig, apply_values
        from ..methods import build_method_config, get_method

        try:
            method = get_method(name)
            build_method_config(method, options)
        except AffinaError as e:
            raise JobRequestError(f"method: {e}", param="method") from None
        allowed = {"save_steps", "eval_steps", "logging_steps", "max_steps", "warmup_ratio", "rewarm_ratio", "lr",
                   "scheduler", "weight_decay", "grad_accum", "save_total_limit", "gradient_checkpointing",
                   # the training step (docs/training.md#training-profiles-trainprofile)
                   "profile", "mixed_precision", "chunked_loss", "loss_chunk_tokens", "optimizer",
                   "cuda_graphs", "pad_to_multiple_of", "fuse_projections"}
        unknown = sorted(set(train_extra) - allowed)
        if unknown:
            raise JobRequestError(f"method.affina.train: unknown key(s) {', '.join(unknown)}; allowed: "
                                  f"{', '.join(sorted(allowed))}", param="method")
        try:
            values = {f"train.{k}": v for k, v in train_extra.items()}
            typed = apply_values(RunConfig(), {**values, **{f"distributed.{k}": v for k, v in spread.items()}})
            typed.validate()
            method.check_train_settings(typed.train)
        except (AffinaError, TypeError, ValueError) as e:
            raise JobRequestError(f"method.affina.train: {e}", param="method") from None
        return {k: getattr(typed.train, k) for k in train_extra}

    def validate_job(self, job_id: str) -> JobRow:
        """`validating_files` → `queued` with the hyperparameters resolved, or → `failed` with
        OpenAI's error object. Idempotent: a job no longer validating is left alone."""
        from ..methods import get_method
        from .auto import data_shape, resolve_hyperparameters

        job = self.store.get_job(job_id)
        if job is None or job.status != "validating_files":
            return job
        try:
            training = self.store.get_file(job.training_file)
            if training is None:
                raise JobRequestError(f"training file {job.training_file} was deleted",
                                      code="invalid_training_file", param="training_file")
            from ..data.loading import load_records

            records = load_records([training.path]).records
            method = get_method(job.method["affina"]["method"])
            preference = any(r.kind == "preference" for r in records)
            wants_preference = job.method.get("type") == "dpo" or method.name in ("dpo", "orpo", "kto")
            if wants_preference != preference:
                raise JobRequestError(
                    f"training file {job.training_file} ({training.filename}) holds "
                    f"{'preference' if preference else 'supervised'} examples, but method "
                    f"{method.name} needs {'preference (prompt/chosen/rejected)' if wants_preference else 'supervised'} "
                    "examples", code="invalid_training_file", param="training_file")
            val_fraction = 0.0 if job.validation_file else _val_fraction(len(records))
            shape = data_shape(records, self._base_tokenizer(), 512, val_fraction=val_fraction)
            spread = job.method["affina"].get("distributed") or {}
            processes = (int(spread.get("nproc_per_node") or 1)  # 0: one per GPU of the worker, unknown here
                         if spread.get("strategy", "none") != "none" else 1)
            resolved = resolve_hyperparameters(job.requested, shape, method, processes)
            resolved["val_fraction"] = val_fraction
            max_steps = (job.method["affina"].get("train") or {}).get("max_steps")
            if max_steps and max_steps > 0:  # an explicit step budget ends the job sooner
                resolved["total_steps"] = min(resolved["total_steps"], int(max_steps))
            lr = (job.method["affina"].get("train") or {}).get("lr")
            if lr:  # an explicit rate (affina's extension) replaces the multiplier's
                resolved["learning_rate"] = float(lr)
                resolved["learning_rate_multiplier"] = round(float(lr) / resolved["base_learning_rate"], 6)
        except JobRequestError as e:
            self.store.set_status(job_id, "failed", e.args[0], expect=("validating_files",), level="error",
                                  error={"code": e.code, "message": e.args[0], "param": e.param})
            return self.store.get_job(job_id)
        except AffinaError as e:
            message = str(e).splitlines()[0]
            self.store.set_status(job_id, "failed", message, expect=("validating_files",), level="error",
                                  error={"code": "invalid_training_file", "message": message,
                                         "param": "training_file"})
            return self.store.get_job(job_id)
        self.store.update_job(job_id, expect=("validating_files",), hyperparameters=resolved)
        self.store.add_event(job_id, f"Hyperparameters: {resolved['n_epochs']} epoch(s), batch size "
                             f"{resolved['batch_size']}, learning rate {resolved['learning_rate']:.3g} "
                             f"({resolved['total_steps']} steps)", data=resolved)
        self.store.set_status(job_id, "queued", "Files validated, moving job to queued state",
                              expect=("validating_files",))
        return self.store.get_job(job_id)

    def _base_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from ..models import resolve_model_path

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.base_spec))
        return self._tokenizer

    def cancel(self, job_id: str, caller: Caller) -> JobRow:
        job = self.job(job_id, caller)
        if job.status in TERMINAL:
            raise JobRequestError(f"job {job_id} has already {job.status}; it cannot be cancelled",
                                  code="job_not_cancellable")
        self.store.set_status(job_id, "cancelled", "Job was cancelled", expect=(job.status,))
        return self.job(job_id, caller)

    def pause(self, job_id: str, caller: Caller) -> JobRow:
        job = self.job(job_id, caller)
        if job.status not in ("queued", "running", "validating_files"):
            raise JobRequestError(f"job {job_id} is {job.status}; only a queued or running job can be "
                                  "paused", code="job_not_pausable")
        self.store.set_status(job_id, "paused", "Job was paused; it keeps its last checkpoint",
                              expect=(job.status,))
        return self.job(job_id, caller)

    def resume(self, job_id: str, caller: Caller) -> JobRow:
        job = self.job(job_id, caller)
        if job.status != "paused":
            raise JobRequestError(f"job {job_id} is {job.status}; only a paused job can be resumed",
                                  code="job_not_paused")
        validated = job.hyperparameters.get("total_steps") is not None
        status = "queued" if validated else "validating_files"
        self.store.set_status(job_id, status, "Job was resumed; it continues from its last checkpoint",
                              expect=("paused",), worker_id=None, lease_until=None)
        if not validated:
            self.validate_job(job_id)
        return self.job(job_id, caller)

    def pending_validation(self) -> list[str]:
        """Jobs left in `validating_files` (a server stopped while checking them)."""
        return [j.id for j in self.store.list_jobs(limit=10_000, status="validating_files").data]


def _val_fraction(rows: int) -> float:
    """The share held out for validation when no validation file is given: 10%, none below 20 rows."""
    return 0.1 if rows >= 20 else 0.0


def run_config(job: JobRow, training_path: str, validation_path: str | None):
    """The RunConfig the worker trains `job` with: the server's base, the uploaded files, the
    method and options, the resolved hyperparameters; checkpoints about five times a job."""
    from ..config import RunConfig

    hp = job.hyperparameters
    cfg = RunConfig()
    cfg.model.spec = job.base_spec
    cfg.data.train = [training_path]
    cfg.data.validation = [validation_path] if validation_path else []
    steps = hp.get("total_steps") or 1
    cfg.data.val_fraction = 0.0 if validation_path else hp.get("val_fraction", 0.1)
    cfg.method.name = job.method["affina"]["method"]
    cfg.method.options = dict(job.method["affina"].get("options") or {})
    run_dir = Path(job.run_dir)
    t = cfg.train
    t.output_dir, t.run_name = str(run_dir.parent), run_dir.name
    t.seed = job.seed
    t.epochs = float(hp["n_epochs"])
    t.batch_size = int(hp["batch_size"])
    t.lr = float(hp["learning_rate"])
    every = max(1, math.ceil(steps / 5))
    t.save_steps = t.eval_steps = every
    t.logging_steps = max(1, min(5, every))
    t.save_total_limit = 3
    for key, value in (job.method["affina"].get("train") or {}).items():
        setattr(t, key, value)
    for key, value in (job.method["affina"].get("distributed") or {}).items():
        setattr(cfg.distributed, key, value)  # the worker's `affina train` launches torchrun
    for key, value in (job.method["affina"].get("eval") or {}).items():
        setattr(cfg.eval, key, value)
    continued = job.method["affina"].get("continue")
    if continued:  # `affina train --continue-from`: a checkpoint, the pinned version, else the run
        cfg.train.continue_from = continued.get("checkpoint") or continued.get("ref") or continued["run_dir"]
        cfg.replay.fraction = float(continued.get("replay_fraction", cfg.replay.fraction))
        if validation_path:  # the new task's evaluation set, scored before and after
            cfg.eval.data = [validation_path]
    return cfg.validate()
