"""The feedback table: what people said about served replies, beside the request log.

One row per `POST /v1/feedback`: the request it is about, a rating in [-1, 1] (1: approved,
-1: wrong), an optional corrected reply and a free-text comment. It lives in the same service
database as the request log (`record/requestlog.py`), in its own table with its own schema
version, so monitoring can join ratings to requests and `affina feedback export` can turn
corrected and approved replies into training rows. Change the schema only by adding nullable
columns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

from sqlalchemy import (Column, DateTime, Float, Integer, MetaData, String, Table, Text, func,
                        select)

from .requestlog import RequestLog, requests_table

__all__ = ["FeedbackStore", "FeedbackEntry", "feedback_table", "FEEDBACK_SCHEMA_VERSION",
           "RATING_RANGE"]

FEEDBACK_SCHEMA_VERSION = 1
RATING_RANGE = (-1.0, 1.0)
metadata = MetaData()

feedback_table = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("feedback_id", String(64), nullable=False, unique=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("key_id", String(32), index=True),
    Column("model", String(200), index=True),  # the request's model, copied for queries
    Column("rating", Float, nullable=False),
    Column("corrected", Text),  # the reply the model should have given
    Column("comment", Text),
    Column("schema_version", Integer, nullable=False, default=FEEDBACK_SCHEMA_VERSION),
)


@dataclass
class FeedbackEntry:
    request_id: str
    rating: float
    key_id: str | None = None
    model: str | None = None
    corrected: str | None = None
    comment: str | None = None
    feedback_id: str = field(default_factory=lambda: "fb-" + uuid.uuid4().hex)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class FeedbackStore:
    """Feedback rows in the request log's database (the same engine, so one URL configures both)."""

    def __init__(self, log: RequestLog):
        self.log = log
        self.engine = log.engine
        metadata.create_all(self.engine)

    def request(self, request_id: str) -> dict | None:
        """The logged request with this id (its answered row), or None."""
        t = requests_table
        stmt = select(t).where(t.c.request_id == request_id).order_by(t.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return dict(row._mapping) if row is not None else None

    def add(self, entry: FeedbackEntry) -> FeedbackEntry:
        row = dict(entry.__dict__)
        row["schema_version"] = FEEDBACK_SCHEMA_VERSION
        with self.engine.begin() as conn:
            conn.execute(feedback_table.insert().values(**row))
        return entry

    def query(self, *, model: str | None = None, since: datetime | None = None,
              until: datetime | None = None, request_ids: list[str] | None = None) -> Iterator[dict]:
        """Feedback rows joined with their request (`prompt`, `response`, `endpoint`), oldest first."""
        f, r = feedback_table, requests_table
        stmt = (select(f, r.c.prompt, r.c.response, r.c.endpoint, r.c.created_at.label("requested_at"))
                .select_from(f.outerjoin(r, r.c.request_id == f.c.request_id)).order_by(f.c.id))
        if model:
            stmt = stmt.where(f.c.model == model)
        if since:
            stmt = stmt.where(f.c.created_at >= _utc(since))
        if until:
            stmt = stmt.where(f.c.created_at < _utc(until))
        if request_ids is not None:
            stmt = stmt.where(f.c.request_id.in_(request_ids))
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                out = dict(row._mapping)
                for key in ("created_at", "requested_at"):
                    if out.get(key) is not None and out[key].tzinfo is None:  # sqlite drops the zone
                        out[key] = out[key].replace(tzinfo=timezone.utc)
                yield out

    def count(self, model: str | None = None) -> int:
        stmt = select(func.count()).select_from(feedback_table)
        if model:
            stmt = stmt.where(feedback_table.c.model == model)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
