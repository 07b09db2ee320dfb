"""What keeps one request from hurting the server or the next request.

- `check_stops`: stop strings bounded in count and length before they reach the worker;
- `wait_for`: a non-streamed request's wait, which notices a client that gave up (and stops its
  generation) and a request whose time ran out before the worker reached it;
- `JsonErrors`: any exception a handler lets escape becomes OpenAI's 500 error object, answered
  on a connection that stays usable (uvicorn closes the connection of an app that raises);
- `loggable`: a log entry whose text the database can store whatever the request held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import CancelledError as FutureCancelled
from dataclasses import fields

from fastapi.responses import JSONResponse

from .engine import Overloaded
from .schemas import ApiError, error_body

__all__ = ["check_stops", "wait_for", "ClientGone", "JsonErrors", "loggable", "internal_error",
           "RETRY_AFTER"]

logger = logging.getLogger("affina.serve")

RETRY_AFTER = {"Retry-After": "1"}  # on every 503: the queue moves in about a generation's time
CHARS_PER_STOP_TOKEN = 8  # strings this long per allowed token are refused without tokenising
POLL_SECONDS = 0.25  # how often a waiting request checks its client is still there


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def check_stops(stops: tuple[str, ...], max_tokens: int, tokenizer) -> None:
    """Each stop string at most `max_tokens` tokens of the target's tokenizer (400 `stop`).
    The count (at most 4) is the schema's. Called off the event loop: it tokenises."""
    for i, stop in enumerate(stops):
        if len(stop) > CHARS_PER_STOP_TOKEN * max_tokens:
            raise ApiError(400, f"stop[{i}] is {len(stop)} characters long; this server allows stop "
                           f"strings of at most {max_tokens} tokens", "stop_too_long", "stop")
        count = len(tokenizer(stop, add_special_tokens=False)["input_ids"])
        if count > max_tokens:
            raise ApiError(400, f"stop[{i}] is {count} tokens long; this server allows stop strings "
                           f"of at most {max_tokens} tokens", "stop_too_long", "stop")


async def wait_for(request, job, deadline: float):
    """The job's result. Cancels the job and raises ClientGone when the client disconnects;
    raises Overloaded when `deadline` (time.monotonic) passes before the worker started it."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=POLL_SECONDS)
        if done:
            try:
                return future.result()
            except (asyncio.CancelledError, FutureCancelled):
                raise Overloaded("the server is busy: the request waited its whole time budget "
                                 "for the model; retry later") from None
        if await request.is_disconnected():
            job.cancelled.set()  # the worker skips it, or stops it at the next token
            raise ClientGone()
        if time.monotonic() >= deadline:
            job.future.cancel()  # succeeds only while it still waits in the queue


def internal_error(request_id: str | None = None) -> ApiError:
    where = f" (request {request_id})" if request_id else ""
    return ApiError(500, f"internal server error{where}; the server log has the details",
                    "internal_error")


class JsonErrors:
    """ASGI middleware: an unhandled exception before the response started is answered as a JSON
    500, and not re-raised, so uvicorn keeps the keep-alive connection open for the next request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half an answer is out: only closing the connection tells the client
            await JSONResponse(error_body(internal_error()), status_code=500)(scope, receive, send)


def _clean(value):
    """Text with each lone surrogate replaced by one U+FFFD, so it encodes as UTF-8. (Through
    UTF-16, where a lone surrogate is one undecodable unit and a proper pair stays a character.)"""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def loggable(entry):
    """A copy of `entry` whose strings all encode as UTF-8."""
    return type(entry)(**{f.name: _clean(getattr(entry, f.name)) for f in fields(entry)})
