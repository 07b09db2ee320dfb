"""The jobs service's rows: uploaded files, fine-tuning jobs, their events and checkpoints, and
the durable queue, in the same database as the request log (`record/requestlog.py`).

SQLite by default (`$AFFINA_HOME/serve/requests.db`), any SQLAlchemy URL otherwise. Tables have
their own `MetaData`, so creating them never touches another module's tables.

The queue: a job is claimable when it is `queued`, or `running` with an expired lease (its
worker died). On PostgreSQL a worker claims with `SELECT ... FOR UPDATE SKIP LOCKED` (workers on
several machines never wait on each other's rows); on SQLite with a conditional UPDATE that
succeeds for exactly one claimant (a compare-and-set on status and lease). A worker renews its
lease with every heartbeat; the heartbeat also tells it whether the job was cancelled or paused.

Ids look like OpenAI's (`file-…`, `ftjob-…`, `ftevent-…`, `ftckpt-…`); pagination cursors are
ids, ordered by an integer sequence column, newest first.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (JSON, Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        and_, func, or_, select, update)

from ..errors import AffinaError
from ..record.requestlog import open_service_db

__all__ = ["JobStore", "FileRow", "JobRow", "EventRow", "CheckpointRow", "Page", "TERMINAL",
           "ACTIVE", "STATUSES", "files_table", "jobs_table", "events_table", "checkpoints_table",
           "new_id"]

STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")

metadata = MetaData()

files_table = Table(
    "ft_files", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("owner", String(32), index=True),  # the API key id; NULL on an open server
    Column("filename", String(255), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("format", String(32)),
    Column("rows", Integer),
    Column("status_details", Text),  # warnings found by the data checks
    Column("deleted", Integer, nullable=False, default=0),
)

jobs_table = Table(
    "ft_jobs", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("owner", String(32), index=True),
    Column("model", String(200), nullable=False),  # as the client named it
    Column("base_spec", Text, nullable=False),  # the model spec the worker trains from
    Column("training_file", String(40), nullable=False),
    Column("validation_file", String(40)),
    Column("requested", JSON, nullable=False),  # hyperparameters as asked ("auto" kept)
    Column("hyperparameters", JSON, nullable=False),  # as resolved by the auto policy
    Column("method", JSON, nullable=False),  # OpenAI's method object, affina extension included
    Column("suffix", String(64)),
    Column("seed", Integer, nullable=False),
    Column("metadata", JSON),
    Column("status", String(20), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("started_at", Integer),
    Column("finished_at", Integer),
    Column("estimated_finish", Integer),
    Column("fine_tuned_model", String(300), unique=True),
    Column("error", JSON),
    Column("run_dir", Text),
    Column("registered_as", String(200)),  # NAME@VERSION in the model registry
    Column("trained_tokens", Integer),
    Column("worker_id", String(100)),
    Column("lease_until", Float),
    Column("attempts", Integer, nullable=False, default=0),
)

events_table = Table(
    "ft_job_events", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(40), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("level", String(8), nullable=False),
    Column("type", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON),
)

checkpoints_table = Table(
    "ft_job_checkpoints", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("job_id", String(40), nullable=False, index=True),
    Column("step", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("train_loss", Float),
    Column("valid_loss", Float),
    Column("path", Text, nullable=False),
    UniqueConstraint("job_id", "step", name="ft_job_checkpoints_job_step"),
)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _now() -> int:
    return int(time.time())


@dataclass
class FileRow:
    id: str
    owner: str | None
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: str
    sha256: str
    format: str | None = None
    rows: int | None = None
    status_details: str | None = None

    def to_openai(self) -> dict:
        """OpenAI's FileObject."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "status_details": self.status_details, "expires_at": None}


@dataclass
class JobRow:
    id: str
    owner: str | None
    model: str
    base_spec: str
    training_file: str
    validation_file: str | None
    requested: dict
    hyperparameters: dict
    method: dict
    suffix: str | None
    seed: int
    metadata: dict | None
    status: str
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    fine_tuned_model: str | None = None
    error: dict | None = None
    run_dir: str | None = None
    registered_as: str | None = None
    trained_tokens: int | None = None
    worker_id: str | None = None
    lease_until: float | None = None
    attempts: int = 0

    @property
    def base_name(self) -> str:
        """The base as the server names it: `model`, or for a job that continues a fine-tuned
        model, the base that model was trained on."""
        continued = (self.method.get("affina") or {}).get("continue") or {}
        return continued.get("base_name") or self.model

    @property
    def ft_name(self) -> str:
        """`ft:<base>:<suffix>:<job id>`, the name the result is served under."""
        return f"ft:{self.base_name}:{self.suffix or ''}:{self.id}"

    def to_openai(self) -> dict:
        """OpenAI's FineTuningJob. `status` is one of OpenAI's, plus `paused`."""
        hp = {k: self.hyperparameters.get(k, "auto")
              for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        method = dict(self.method)
        kind = method.get("type", "supervised")
        if kind in ("supervised", "dpo"):
            section = dict(method.get(kind) or {})
            section["hyperparameters"] = {**(section.get("hyperparameters") or {}), **hp}
            method[kind] = section
        return {"id": self.id, "object": "fine_tuning.job", "created_at": self.created_at,
                "error": self.error, "fine_tuned_model": self.fine_tuned_model,
                "finished_at": self.finished_at, "hyperparameters": hp, "model": self.model,
                "organization_id": self.owner or "affina", "result_files": [],
                "seed": self.seed, "status": self.status, "trained_tokens": self.trained_tokens,
                "training_file": self.training_file, "validation_file": self.validation_file,
                "estimated_finish": self.estimated_finish, "integrations": [],
                "metadata": self.metadata, "method": method, "suffix": self.suffix,
                "user_provided_suffix": self.suffix}


@dataclass
class EventRow:
    seq: int
    job_id: str
    created_at: int
    level: str
    type: str
    message: str
    data: dict | None = None

    @property
    def id(self) -> str:
        return f"ftevent-{self.seq:012d}"

    def to_openai(self) -> dict:
        return {"id": self.id, "object": "fine_tuning.job.event", "created_at": self.created_at,
                "level": self.level, "message": self.message, "data": self.data, "type": self.type}


@dataclass
class CheckpointRow:
    id: str
    job_id: str
    step: int
    created_at: int
    train_loss: float | None
    valid_loss: float | None
    path: str

    def to_openai(self, ft_name: str) -> dict:
        return {"id": self.id, "object": "fine_tuning.job.checkpoint", "created_at": self.created_at,
                "fine_tuned_model_checkpoint": f"{ft_name}:ckpt-step-{self.step}",
                "fine_tuning_job_id": self.job_id, "step_number": self.step,
                "metrics": {"step": float(self.step), "train_loss": self.train_loss,
                            "valid_loss": self.valid_loss, "full_valid_loss": self.valid_loss}}


@dataclass
class Page:
    """One page of a list, newest first; `has_more` says whether an `after` cursor would find more."""

    data: list
    has_more: bool = False
    extra: dict = field(default_factory=dict)


def _row(cls, row) -> Any:
    values = dict(row._mapping)
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in values.items() if k in names})


class JobStore:
    """All reads and writes of the jobs service. Thread-safe (one short transaction per call);
    several processes and machines may share one database."""

    def __init__(self, url: str):
        self.url = url
        self.engine, _ = open_service_db(url, "jobs database", metadata)  # the request log's settings
        self.dialect = self.engine.dialect.name

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- files ---------------------------------------------------------------------------

    def add_file(self, row: FileRow) -> FileRow:
        with self.engine.begin() as conn:
            conn.execute(files_table.insert().values(**row.__dict__))
        return row

    def get_file(self, file_id: str, owner: str | None = None, *, admin: bool = True) -> FileRow | None:
        """The file, or None when it does not exist, was deleted, or belongs to another key
        (`admin=False` scopes to `owner`)."""
        t = files_table
        stmt = select(t).where(t.c.id == file_id, t.c.deleted == 0)
        if not admin:
            stmt = stmt.where(_owned(t, owner))
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _row(FileRow, row) if row else None

    def list_files(self, owner: str | None = None, *, admin: bool = True, purpose: str | None = None,
                   after: str | None = None, limit: int = 20, order: str = "desc") -> Page:
        t = files_table
        stmt = select(t).where(t.c.deleted == 0)
        if not admin:
            stmt = stmt.where(_owned(t, owner))
        if purpose:
            stmt = stmt.where(t.c.purpose == purpose)
        return self._page(stmt, t, FileRow, after, limit, order)

    def delete_file(self, file_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(files_table).where(files_table.c.id == file_id).values(deleted=1))

    def file_in_use(self, file_id: str) -> str | None:
        """The id of an unfinished job that trains on this file, or None."""
        t = jobs_table
        with self.engine.connect() as conn:
            return conn.execute(select(t.c.id).where(
                or_(t.c.training_file == file_id, t.c.validation_file == file_id),
                t.c.status.in_(ACTIVE)).limit(1)).scalar()

    # -- jobs ----------------------------------------------------------------------------

    def add_job(self, row: JobRow) -> JobRow:
        with self.engine.begin() as conn:
            conn.execute(jobs_table.insert().values(**row.__dict__))
        return row

    def get_job(self, job_id: str, owner: str | None = None, *, admin: bool = True) -> JobRow | None:
        t = jobs_table
        stmt = select(t).where(t.c.id == job_id)
        if not admin:
            stmt = stmt.where(_owned(t, owner))
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _row(JobRow, row) if row else None

    def job_by_model(self, fine_tuned_model: str) -> JobRow | None:
        t = jobs_table
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.fine_tuned_model == fine_tuned_model)).first()
        return _row(JobRow, row) if row else None

    def list_jobs(self, owner: str | None = None, *, admin: bool = True, after: str | None = None,
                  limit: int = 20, metadata: dict | None = None, status: str | None = None) -> Page:
        """Jobs newest first. `metadata`: only jobs whose metadata holds every given key=value."""
        t = jobs_table
        stmt = select(t)
        if not admin:
            stmt = stmt.where(_owned(t, owner))
        if status:
            stmt = stmt.where(t.c.status == status)
        if metadata:
            # Filtered here rather than in SQL: JSON operators differ between SQLite and
            # PostgreSQL, and a job list is small.
            with self.engine.connect() as conn:
                rows = [_row(JobRow, r) for r in conn.execute(stmt.order_by(t.c.seq.desc()))]
            rows = [r for r in rows if all((r.metadata or {}).get(k) == v for k, v in metadata.items())]
            if after:
                ids = [r.id for r in rows]
                rows = rows[ids.index(after) + 1:] if after in ids else []
            return Page(rows[:limit], len(rows) > limit)
        return self._page(stmt, t, JobRow, after, limit, "desc")

    def update_job(self, job_id: str, *, expect: tuple[str, ...] | None = None, **values) -> bool:
        """Set columns; with `expect`, only while the job's status is one of those (True if it was)."""
        t = jobs_table
        stmt = update(t).where(t.c.id == job_id)
        if expect:
            stmt = stmt.where(t.c.status.in_(expect))
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(**values)).rowcount == 1

    def set_status(self, job_id: str, status: str, message: str, *, expect: tuple[str, ...] | None = None,
                   level: str = "info", **values) -> bool:
        """Move a job to `status` (from one of `expect`) and record the change as an event."""
        if status in TERMINAL:
            values.setdefault("finished_at", _now())
            values.setdefault("lease_until", None)
        if not self.update_job(job_id, expect=expect, status=status, **values):
            return False
        self.add_event(job_id, message, level=level, data={"status": status})
        return True

    # -- the queue -----------------------------------------------------------------------

    def claim(self, worker_id: str, lease_seconds: float) -> JobRow | None:
        """Take the oldest claimable job for `worker_id`: status `running`, lease renewed. A job
        whose lease ran out (its worker died) is claimable again; its `attempts` says so."""
        t = jobs_table
        now = time.time()
        claimable = or_(t.c.status == "queued", and_(t.c.status == "running", t.c.lease_until < now))
        if self.dialect == "postgresql":
            with self.engine.begin() as conn:
                row = conn.execute(select(t).where(claimable).order_by(t.c.seq).limit(1)
                                   .with_for_update(skip_locked=True)).first()
                if row is None:
                    return None
                conn.execute(update(t).where(t.c.seq == row.seq).values(
                    **self._claimed(row, worker_id, now, lease_seconds)))
            return self.get_job(row.id)
        for _ in range(20):  # SQLite: compare-and-set on the row we saw; retry if another won
            with self.engine.connect() as conn:
                row = conn.execute(select(t).where(claimable).order_by(t.c.seq).limit(1)).first()
            if row is None:
                return None
            same = and_(t.c.seq == row.seq, t.c.status == row.status,
                        (t.c.lease_until.is_(None) if row.lease_until is None
                         else t.c.lease_until == row.lease_until))
            with self.engine.begin() as conn:
                won = conn.execute(update(t).where(same).values(
                    **self._claimed(row, worker_id, now, lease_seconds))).rowcount == 1
            if won:
                return self.get_job(row.id)
        return None

    @staticmethod
    def _claimed(row, worker_id: str, now: float, lease_seconds: float) -> dict:
        return {"status": "running", "worker_id": worker_id, "lease_until": now + lease_seconds,
                "attempts": (row.attempts or 0) + 1, "started_at": row.started_at or int(now)}

    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float) -> str | None:
        """Renew the lease while the job is still this worker's and running. Returns the job's
        status now (e.g. `cancelled` or `paused`: stop), or None when another worker owns it."""
        t = jobs_table
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == job_id, t.c.worker_id == worker_id,
                                         t.c.status == "running")
                         .values(lease_until=time.time() + lease_seconds))
            row = conn.execute(select(t.c.status, t.c.worker_id).where(t.c.id == job_id)).first()
        if row is None or row.worker_id != worker_id:
            return None
        return row.status

    # -- events and checkpoints ------------------------------------------------------------

    def add_event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
                  data: dict | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(events_table.insert().values(job_id=job_id, created_at=_now(), level=level,
                                                      type=type, message=message, data=data))

    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> Page:
        """Newest first, as OpenAI lists them; `after` is an event id."""
        t = events_table
        stmt = select(t).where(t.c.job_id == job_id)
        if after:
            try:
                stmt = stmt.where(t.c.seq < int(after.rsplit("-", 1)[-1]))
            except ValueError:
                raise AffinaError(f"after={after!r} is not an event id") from None
        with self.engine.connect() as conn:
            rows = [_row(EventRow, r) for r in conn.execute(stmt.order_by(t.c.seq.desc()).limit(limit + 1))]
        return Page(rows[:limit], len(rows) > limit)

    def events_since(self, job_id: str, seq: int = 0) -> list[EventRow]:
        """Every event after sequence number `seq`, oldest first (for following a job)."""
        t = events_table
        with self.engine.connect() as conn:
            return [_row(EventRow, r) for r in conn.execute(
                select(t).where(t.c.job_id == job_id, t.c.seq > seq).order_by(t.c.seq))]

    def add_checkpoint(self, job_id: str, step: int, path: str, train_loss: float | None,
                       valid_loss: float | None) -> None:
        """Record a checkpoint (once per step: a resumed job may report a step again)."""
        t = checkpoints_table
        with self.engine.begin() as conn:
            existing = conn.execute(select(t.c.id).where(t.c.job_id == job_id, t.c.step == step)).first()
            values = dict(created_at=_now(), train_loss=train_loss, valid_loss=valid_loss, path=path)
            if existing:
                conn.execute(update(t).where(t.c.id == existing.id).values(**values))
            else:
                conn.execute(t.insert().values(id=new_id("ftckpt"), job_id=job_id, step=step, **values))

    def drop_checkpoint(self, job_id: str, step: int) -> None:
        t = checkpoints_table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.job_id == job_id, t.c.step == step))

    def list_checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10) -> Page:
        """Newest (highest step) first; `after` is a checkpoint id."""
        t = checkpoints_table
        with self.engine.connect() as conn:
            rows = [_row(CheckpointRow, r) for r in conn.execute(
                select(t).where(t.c.job_id == job_id).order_by(t.c.step.desc()))]
        if after:
            ids = [r.id for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return Page(rows[:limit], len(rows) > limit)

    def checkpoint(self, job_id: str, step: int) -> CheckpointRow | None:
        t = checkpoints_table
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.job_id == job_id, t.c.step == step)).first()
        return _row(CheckpointRow, row) if row else None

    # -- helpers -------------------------------------------------------------------------

    def _page(self, stmt, t, cls, after: str | None, limit: int, order: str) -> Page:
        descending = order != "asc"
        if after:
            with self.engine.connect() as conn:
                cursor = conn.execute(select(t.c.seq).where(t.c.id == after)).scalar()
            if cursor is None:
                return Page([], False)
            stmt = stmt.where(t.c.seq < cursor if descending else t.c.seq > cursor)
        stmt = stmt.order_by(t.c.seq.desc() if descending else t.c.seq).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = [_row(cls, r) for r in conn.execute(stmt)]
        return Page(rows[:limit], len(rows) > limit)

    def counts(self) -> dict[str, int]:
        """Jobs per status (for a dashboard or `affina jobs list`)."""
        t = jobs_table
        with self.engine.connect() as conn:
            return {s: n for s, n in conn.execute(select(t.c.status, func.count()).group_by(t.c.status))}


def _owned(t, owner: str | None):
    return t.c.owner.is_(None) if owner is None else t.c.owner == owner
