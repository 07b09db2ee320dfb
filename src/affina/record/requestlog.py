"""The request log: one row per API request, committed before its response is sent.

SQLite in WAL mode with `synchronous=FULL` by default (`$AFFINA_HOME/serve/requests.db`), or any
SQLAlchemy database URL (`postgresql+psycopg://...`). The schema is documented in docs/serving.md;
drift detection reads it, so change it only by adding nullable columns.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table,
                        Text, create_engine, event, select)
from sqlalchemy.exc import ArgumentError, OperationalError

from ..errors import AffinaError
from ..paths import affina_home, private_file

__all__ = ["RequestLog", "LogEntry", "default_log_url", "requests_table", "SCHEMA_VERSION",
           "usage_summary", "open_service_db", "sqlite_pragmas"]

SCHEMA_VERSION = 1
metadata = MetaData()

requests_table = Table(
    "requests", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("endpoint", String(64), nullable=False),
    Column("key_id", String(32), index=True),
    Column("model", String(200), index=True),
    Column("adapter_version", String(64)),
    Column("status", Integer, nullable=False, index=True),
    Column("error_code", String(64)),
    Column("stream", Boolean, nullable=False, default=False),
    Column("params", JSON),
    Column("prompt", JSON),
    Column("response", Text),
    Column("prompt_sha256", String(64)),
    Column("response_sha256", String(64)),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("finish_reason", String(16)),
    Column("latency_ms", Float, nullable=False),
    Column("schema_version", Integer, nullable=False, default=SCHEMA_VERSION),
)


def default_log_url() -> str:
    return f"sqlite:///{affina_home() / 'serve' / 'requests.db'}"


def _sha256(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class LogEntry:
    """What the API knows about one request once it has its answer (or its error)."""

    request_id: str
    endpoint: str
    status: int
    latency_ms: float
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    key_id: str | None = None
    model: str | None = None
    adapter_version: str | None = None
    error_code: str | None = None
    stream: bool = False
    params: dict | None = None
    prompt: Any = None  # chat: the messages list; completions: the prompt string
    response: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class RequestLog:
    """Append and query the request log. `redact` keeps hashes of prompts/responses, not the text."""

    def __init__(self, url: str | None = None, *, redact: bool = False, create: bool = True,
                 min_free_bytes: int = 8 << 20):
        """`create=False`: refuse a sqlite log whose directory does not exist (a reader given a
        mistyped path should not make one). `min_free_bytes`: below this much free space in a
        sqlite log's directory, `unwritable_reason` says so (the server is then not ready)."""
        self.url = url or default_log_url()
        self.redact = redact
        self.min_free_bytes = min_free_bytes
        # the sqlite file, if the log is one
        self.engine, self.path = open_service_db(self.url, "request log", metadata, create=create)

    @property
    def display_url(self) -> str:
        """The URL with any password masked, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def unwritable_reason(self) -> str | None:
        """Why a row could not be written now (full disk, directory gone), or None. Cheap: a
        free-space check for sqlite, a round trip for a database server."""
        if self.path is not None:
            directory = self.path.parent
            if not directory.is_dir():
                return f"directory {directory} is gone"
            if not os.access(directory, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
                return f"{self.path} is not writable"
            free = shutil.disk_usage(directory).free
            if free < self.min_free_bytes:
                return f"only {free} bytes free in {directory}"
            return None
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as e:  # noqa: BLE001 — any failure means rows cannot be written
            return f"database unreachable ({type(e).__name__})"
        return None

    def write(self, entry: LogEntry) -> None:
        """Insert one row and commit it: when this returns, the row survives a crash."""
        row = {k: v for k, v in entry.__dict__.items()}
        row["prompt_sha256"] = _sha256(entry.prompt)
        row["response_sha256"] = _sha256(entry.response)
        row["schema_version"] = SCHEMA_VERSION
        if self.redact:
            row["prompt"] = row["response"] = None
        with self.engine.begin() as conn:
            conn.execute(requests_table.insert().values(**row))

    def query(self, *, model: str | None = None, since: datetime | None = None,
              until: datetime | None = None, status: str | None = None,
              limit: int | None = None, newest_first: bool = False) -> Iterator[dict]:
        """Rows as dicts, oldest first. `status` is a code (`200`) or a class (`4xx`)."""
        t = requests_table
        stmt = select(t)
        if model:
            stmt = stmt.where(t.c.model == model)
        if since:
            stmt = stmt.where(t.c.created_at >= _utc(since))
        if until:
            stmt = stmt.where(t.c.created_at < _utc(until))
        if status:
            stmt = stmt.where(_status_clause(status))
        stmt = stmt.order_by(t.c.id.desc() if newest_first else t.c.id)
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                out = dict(row._mapping)
                created = out["created_at"]
                if created is not None and created.tzinfo is None:  # sqlite drops the zone
                    out["created_at"] = created.replace(tzinfo=timezone.utc)
                yield out

    def close(self) -> None:
        self.engine.dispose()


def _utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC, the zone every row is written in."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _status_clause(status: str):
    t = requests_table
    text = str(status).strip().lower()
    if len(text) == 3 and text[0].isdigit() and text[1:] == "xx":
        low = int(text[0]) * 100
        return (t.c.status >= low) & (t.c.status < low + 100)
    if text.isdigit():
        return t.c.status == int(text)
    raise AffinaError(f"--status {status!r}: pass a status code (200) or a class (2xx, 4xx, 5xx)")


def open_service_db(url: str, what: str, tables: MetaData, *, create: bool = True):
    """The engine of the service database at `url` with `tables` created in it, and its sqlite
    file (None for a database server or an in-memory one). `what` names it in errors (request
    log, jobs database). The settings every table there shares: `sqlite_pragmas` on each
    connection, and a sqlite file mode 0600 (the WAL files sqlite adds take the same mode), since
    it holds prompts and uploaded data. `create=False`: refuse a sqlite file whose directory does
    not exist (a reader given a mistyped path should not make one)."""
    try:
        engine = create_engine(url)
    except (ArgumentError, ImportError) as e:
        raise AffinaError(f"{what} URL {url!r} is not usable ({e}); pass e.g. "
                          "sqlite:///path/requests.db or postgresql+psycopg://user@host/db") from None
    path = None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite_pragmas)
        database = engine.url.database
        if database and database != ":memory:":
            path = Path(database).expanduser()
            if not create and not path.parent.is_dir():
                raise AffinaError(f"{what} {path}: directory {path.parent} does not exist; check "
                                  "the --db URL")
            private_file(path)
    try:
        tables.create_all(engine)
    except OperationalError as e:
        raise AffinaError(f"{what} {engine.url.render_as_string(hide_password=True)}: cannot open "
                          f"({e.orig})") from None
    return engine, path


def sqlite_pragmas(dbapi_connection, _record) -> None:
    """Connection settings of every table in the service database (request log, jobs)."""
    cursor = dbapi_connection.cursor()
    # WAL lets `affina logs` read while the server writes; FULL syncs the WAL on every commit,
    # so an acknowledged request survives a crash of the process and of the machine.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def usage_summary(models: list[str], adapter_version: str | None = None,
                  url: str | None = None) -> dict | None:
    """How many logged requests were answered by these model names or by this exact adapter
    (its weights' hash), and when: the last link of a version's lineage. None without a log.
    Only 2xx rows count as served: a refused (401/403/429) or failed request was not."""
    from sqlalchemy import func, or_

    if url is None:
        path = affina_home() / "serve" / "requests.db"
        if not path.is_file():
            return None
        url = f"sqlite:///{path}"
    engine = create_engine(url)
    t = requests_table
    clauses = [t.c.model.in_(models)] if models else []
    if adapter_version:
        clauses.append(t.c.adapter_version == adapter_version)
    if not clauses:
        return {"requests": 0}
    stmt = select(func.count(), func.min(t.c.created_at), func.max(t.c.created_at),
                  func.sum(t.c.prompt_tokens), func.sum(t.c.completion_tokens)).where(
        or_(*clauses), _status_clause("2xx"))
    try:
        with engine.connect() as conn:
            count, first, last, prompt_tokens, completion_tokens = conn.execute(stmt).one()
    except OperationalError:  # a database without the requests table yet
        return {"requests": 0}
    finally:
        engine.dispose()
    return {"requests": int(count), "first": str(first) if first else None,
            "last": str(last) if last else None, "prompt_tokens": int(prompt_tokens or 0),
            "completion_tokens": int(completion_tokens or 0)}
