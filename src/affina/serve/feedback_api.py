"""`POST /v1/feedback`: a rating, a corrected reply or a comment on one served request.

Feedback is about a request this server answered and logged: a key may rate only the requests
made with that key (another key's request reads as not found, so ids cannot be probed), and a
request that was refused or failed has no reply to rate. Rows go to the feedback table in the
request log's database (`record/feedback.py`); `affina feedback export` turns them into training
rows. Errors are OpenAI's error object.
"""

from __future__ import annotations

import json
from typing import Annotated, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool

from ..record.feedback import RATING_RANGE, FeedbackEntry, FeedbackStore
from ..record.requestlog import RequestLog
from .schemas import ApiError, error_body, parse_request

__all__ = ["FeedbackRequest", "feedback_router", "MAX_FEEDBACK_CHARS"]

MAX_FEEDBACK_CHARS = 32_000  # a corrected reply or a comment; longer is refused, not cut


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not dropped

    request_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    rating: Annotated[float, Field(strict=False, ge=RATING_RANGE[0], le=RATING_RANGE[1],
                                   allow_inf_nan=False)]
    corrected_reply: Annotated[StrictStr, Field(max_length=MAX_FEEDBACK_CHARS)] | None = None
    comment: Annotated[StrictStr, Field(max_length=MAX_FEEDBACK_CHARS)] | None = None


def feedback_router(log: RequestLog, authenticate: Callable, read_body: Callable) -> APIRouter:
    """The route, over the app's own request log, key check and bounded body reader."""
    store = FeedbackStore(log)
    router = APIRouter()

    @router.post("/v1/feedback")
    async def post_feedback(request: Request):
        try:
            body = await read_body(request)
            key = authenticate(request)
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON ({e})", "invalid_json") from None
            if isinstance(payload, dict) and isinstance(payload.get("rating"), bool):
                raise ApiError(400, "rating: a number from -1 (wrong) to 1 (approved), not true/false",
                               "invalid_request", "rating")
            req = parse_request(FeedbackRequest, payload)
            row = await run_in_threadpool(store.request, req.request_id)
            # Another key's request is answered exactly like an unknown one: ids are not probed.
            if row is None or (key is not None and row["key_id"] != key.key_id):
                raise ApiError(404, f"no request {req.request_id!r} made with this API key",
                               "request_not_found", "request_id")
            if row["status"] != 200 or row["response"] is None and row["response_sha256"] is None:
                raise ApiError(400, f"request {req.request_id!r} was not answered (status "
                               f"{row['status']}); there is no reply to give feedback on",
                               "request_not_answered", "request_id")
            entry = FeedbackEntry(request_id=req.request_id, rating=float(req.rating),
                                  key_id=key.key_id if key else None, model=row["model"],
                                  corrected=req.corrected_reply, comment=req.comment)
            await run_in_threadpool(store.add, entry)
        except ApiError as e:
            return JSONResponse(error_body(e), status_code=e.status)
        return {"id": entry.feedback_id, "object": "feedback", "request_id": entry.request_id,
                "model": entry.model, "rating": entry.rating,
                "created": int(entry.created_at.timestamp())}

    return router
