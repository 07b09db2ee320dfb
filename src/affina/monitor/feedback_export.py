"""`affina feedback export`: corrected and approved replies → chat training rows.

A request with a corrected reply becomes its prompt messages followed by the corrected reply; a
request rated at least `approve_at` (default 1: approved) without a correction becomes its prompt
followed by the reply the model gave. The latest feedback on a request wins. Every row carries
its lineage (request id, feedback id, model, rating) in a `lineage` field beside `messages`,
which the chat format ignores for training and lineage keeps. Rows that cannot become training
data are counted by reason: no usable feedback, a completions request (a raw text prompt, not a
chat), a prompt not logged (`affina serve --redact`), an empty reply or prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import AffinaError
from ..record.feedback import FeedbackStore
from ..record.requestlog import RequestLog
from .redact import PATTERNS, redact_text

__all__ = ["ExportResult", "export_feedback", "feedback_rows"]


@dataclass
class ExportResult:
    path: Path | None
    rows: int
    sha256: str | None
    skipped: dict[str, int] = field(default_factory=dict)
    redacted: dict[str, int] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)


def feedback_rows(store: FeedbackStore, *, model: str | None = None, since: datetime | None = None,
                  until: datetime | None = None, approve_at: float = 1.0, redact: bool = False,
                  request_ids: list[str] | None = None) -> tuple[list[dict], dict, dict]:
    """(training rows, skipped counts by reason, redaction counts by kind)."""
    latest: dict[str, dict] = {}
    for row in store.query(model=model, since=since, until=until, request_ids=request_ids):
        latest[row["request_id"]] = row  # oldest first: the last one seen is the latest
    rows, skipped, redacted = [], {}, dict.fromkeys(PATTERNS, 0)

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    def clean(text: str) -> str:
        if not redact:
            return text
        out, counts = redact_text(text)
        for k, v in counts.items():
            redacted[k] += v
        return out

    for request_id, fb in latest.items():
        if fb["corrected"]:
            reply, kind = fb["corrected"], "corrected"
        elif fb["rating"] >= approve_at and fb["response"]:
            reply, kind = fb["response"], "approved"
        else:
            skip("not corrected or approved")
            continue
        if fb["endpoint"] != "chat.completions":
            skip("completions request (raw text prompt)" if fb["endpoint"] else "request not in the log")
            continue
        if not isinstance(fb["prompt"], list):
            skip("prompt not logged (served with --redact)")
            continue
        if not reply.strip():  # training data needs a reply to learn
            skip("empty reply")
            continue
        messages = [{"role": m["role"], "content": clean(m["content"])} for m in fb["prompt"]
                    if isinstance(m, dict) and isinstance(m.get("content"), str) and m["content"].strip()]
        if not any(m["role"] == "user" for m in messages):
            skip("empty prompt")
            continue
        messages.append({"role": "assistant", "content": clean(reply)})
        rows.append({"messages": messages, "lineage": {
            "source": "feedback", "kind": kind, "request_id": request_id,
            "feedback_id": fb["feedback_id"], "model": fb["model"], "rating": fb["rating"],
            "feedback_at": fb["created_at"].isoformat(), "redacted": redact}})
    return rows, skipped, redacted


def export_feedback(out: Path, *, log_url: str | None = None, model: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    approve_at: float = 1.0, redact: bool = False,
                    request_ids: list[str] | None = None) -> ExportResult:
    """Write the rows to `out` (JSONL, replaced atomically). No rows: nothing is written."""
    log = RequestLog(log_url, create=False)
    try:
        rows, skipped, redacted = feedback_rows(FeedbackStore(log), model=model, since=since,
                                                until=until, approve_at=approve_at, redact=redact,
                                                request_ids=request_ids)
    finally:
        log.close()
    if not rows:
        return ExportResult(None, 0, None, skipped, redacted)
    out = Path(out)
    if out.is_dir():
        raise AffinaError(f"--out {out} is a directory; name a .jsonl file")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return ExportResult(out, len(rows), hashlib.sha256(text.encode("utf-8")).hexdigest(), skipped,
                        redacted, [r["lineage"]["request_id"] for r in rows])
