"""The HTTP API: OpenAI's /v1 endpoints over the engine, with keys, limits, the log and metrics.

Every inference request (/v1/chat/completions, /v1/completions) ends in exactly one request-log
row, committed before the response (or, for a stream, before its final `data: [DONE]`) leaves
the server. The Files and Fine-tuning APIs are in serve/jobs_api.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import AffinaError
from .auth import ApiKey, KeyStore
from .engine import BadPrompt, Engine, GenerationParams, Overloaded
from .guards import (RETRY_AFTER as _RETRY_AFTER, ClientGone, JsonErrors, check_stops, internal_error,
                     loggable, logger, wait_for)
from ..record.requestlog import LogEntry, RequestLog
from .schemas import (ApiError, ChatRequest, CompletionRequest, chat_chunk, chat_response,
                      completion_chunk, completion_response, error_body, parse_request, usage)
from .retrieval import Retrievals
from .store import InvalidModelName, StoreError, check_model_name

__all__ = ["Limits", "create_app"]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 2048
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # what a request that names none gets
    max_stop_tokens: int = 64  # each stop string's length (at most 4 of them: the schema's)
    max_request_seconds: float = 120.0  # wall-clock budget: generation stops there ("length")


# Query parameters a client might put a key in: refused, since URLs end up in logs and histories.
_KEY_PARAMS = ("api_key", "api-key", "apikey", "key", "token", "access_token")
_RETRY_AFTER = {"Retry-After": "1"}  # on every 503: overloaded or not ready is worth a retry


class _Metrics:
    """Prometheus metrics. `/metrics` needs no key, so label values never come straight from a
    request: a model label is a name this server has answered for (the base's names, a run, a
    registry reference that resolved), else "other" (a well-formed name) or "invalid"."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.served: set[str] = set()  # names answered with 200: bounded by the store and registry
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("affina_requests", "API requests answered", ["endpoint", "model", "status"],
                                registry=r)
        self.latency = Histogram("affina_request_latency_seconds", "Time to the full answer",
                                 ["endpoint", "model"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("affina_tokens", "Tokens processed", ["model", "kind"], registry=r)
        Gauge("affina_loaded_adapters", "Adapters held in memory", registry=r).set_function(
            lambda: len(engine.loaded_adapters()))
        Gauge("affina_loaded_models", "Runs held on their own copy of the base", registry=r).set_function(
            lambda: len(engine.loaded_models()))
        Gauge("affina_queue_depth", "Requests waiting for the model", registry=r).set_function(
            engine.queue_depth)

    _MAX_SERVED = 10_000  # a backstop: a store or registry this large is not labelled per name

    @staticmethod
    def _canonical(model: str | None) -> tuple[str | None, bool]:
        """(the name as labelled, whether it is well-formed). `prod@007` is `prod@7`, so one
        version cannot be spelled into any number of labels."""
        from ..govern.registry import parse_ref

        if isinstance(model, str) and model.startswith("ft:"):
            return model, True  # a fine-tuning job's model: labelled by name once it answered
        if isinstance(model, str) and "@" in model:
            ref = parse_ref(model)
            if ref is None:
                return model, False
            return (f"{ref.name}@{int(ref.selector)}" if ref.is_version else model), True
        try:
            return check_model_name(model), True
        except InvalidModelName:
            return model, False

    def observe(self, entry: LogEntry) -> None:
        name, well_formed = self._canonical(entry.model)
        if entry.status == 200 and well_formed and len(self.served) < self._MAX_SERVED:
            self.served.add(name)  # it resolved and was served: a real model's name
        if name in self.served or name in self.engine.base_aliases:
            model = name
        else:
            model = "other" if well_formed else "invalid"
        self.requests.labels(entry.endpoint, model, str(entry.status)).inc()
        self.latency.labels(entry.endpoint, model).observe(entry.latency_ms / 1000)
        if entry.prompt_tokens:
            self.tokens.labels(model, "prompt").inc(entry.prompt_tokens)
        if entry.completion_tokens:
            self.tokens.labels(model, "completion").inc(entry.completion_tokens)


def _created(run_dir) -> int:
    try:
        return int(run_dir.stat().st_mtime)
    except OSError:  # removed since the scan
        return 0


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, keys: KeyStore, log: RequestLog, limits: Limits = Limits(), *,
               auth: str = "keys", jobs=None) -> FastAPI:
    """`auth`: "keys" (every /v1 request needs an active key, even while none exists) or "open"
    (no keys; loopback only, checked by the caller). Fixed for the app's life. `jobs`: a
    `jobs.service.JobsService` to serve the Files and Fine-tuning APIs (serve/jobs_api.py) and
    answer for its `ft:` models; None: inference only."""
    if auth not in ("open", "keys"):
        raise ValueError(f"auth must be 'open' or 'keys', not {auth!r}")
    app = FastAPI(title="affina", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = _Metrics(engine)
    retrievals = Retrievals()
    from ..monitor.gauges import DriftCollector

    metrics.registry.register(DriftCollector())  # the latest drift report of each monitored model
    app.state.engine, app.state.log, app.state.metrics = engine, log, metrics
    app.state.jobs = jobs  # the jobs service, or None (the scheduled monitor's loop submits to it)
    app.add_middleware(JsonErrors)

    def error_response(error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error), status_code=error.status,
                            headers=_RETRY_AFTER if error.status == 503 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(ApiError(exc.status_code, str(exc.detail), "not_found"
                                       if exc.status_code == 404 else None))

    def authenticate(request: Request) -> ApiKey | None:
        if any(name.lower() in _KEY_PARAMS for name in request.query_params):
            raise ApiError(401, "API keys are not accepted in the URL (URLs end up in logs): send "
                           "the header 'Authorization: Bearer <key>'", "api_key_in_query")
        if auth == "open":
            return None  # loopback only, announced at start-up
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           "missing_api_key")
        key = keys.verify(token.strip())
        if key is None:
            raise ApiError(401, "invalid API key (unknown or revoked)", "invalid_api_key")
        return key

    def allowed(key: ApiKey | None, model: str) -> bool:
        """A key allowed the base under one of its names (`base`, `default`, ...) may use all."""
        if key is None or key.allows(model):
            return True
        return model in engine.base_aliases and any(key.allows(a) for a in engine.base_aliases)

    fine_tuned = None
    if jobs is not None:
        from .jobs_api import FineTunedModels, caller_of, jobs_router

        fine_tuned = FineTunedModels(jobs)
        if engine.store is not None:
            engine.store.fine_tuned = fine_tuned
        app.include_router(jobs_router(jobs, authenticate))

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of "
                           f"{limits.max_body_bytes} bytes", "request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(413, f"request body is over the limit of {limits.max_body_bytes} bytes",
                               "request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def finish(entry: LogEntry, started: float) -> None:
        entry.latency_ms = (time.perf_counter() - started) * 1000
        try:
            await run_in_threadpool(log.write, entry)  # committed before the client hears back
        except Exception:  # e.g. text the database cannot encode: store it cleaned, still one row
            logger.exception("request log write failed for %s; writing it cleaned", entry.request_id)
            await run_in_threadpool(log.write, loggable(entry))
        metrics.observe(entry)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not engine.ready:
            return JSONResponse({"status": "not ready"}, status_code=503, headers=_RETRY_AFTER)
        # Every /v1 request writes a log row before it answers: no log, no service.
        problem = await run_in_threadpool(log.unwritable_reason)
        if problem:
            return JSONResponse({"status": "not ready", "reason": f"request log: {problem}"},
                                status_code=503, headers=_RETRY_AFTER)
        return {"status": "ready", "base": engine.base_name, "loaded_adapters": engine.loaded_adapters(),
                "loaded_models": engine.loaded_models(), "batching": engine.batching}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request):
        try:
            key = authenticate(request)
        except ApiError as e:
            return error_response(e)
        scan = await run_in_threadpool(engine.scan)
        names = [(engine.base_name, 0)] + [(r.name, _created(r.run_dir)) for r in scan.servable]
        if fine_tuned is not None:
            names += await run_in_threadpool(fine_tuned.names_for, caller_of(key))
        data = [{"id": name, "object": "model", "created": created, "owned_by": "affina"}
                for name, created in names if allowed(key, name)]
        # An affina extension beside OpenAI's list: runs in the store that cannot be served.
        unavailable = [{"id": name, "reason": reason} for name, reason in scan.unavailable
                       if allowed(key, name)]
        return {"object": "list", "data": data, "unavailable": unavailable}

    async def generate(request: Request, chat: bool):
        started = time.perf_counter()
        deadline = time.monotonic() + limits.max_request_seconds
        endpoint = "chat.completions" if chat else "completions"
        entry = LogEntry(request_id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
                         endpoint=endpoint, status=200, latency_ms=0.0)
        try:
            body = await read_body(request)
            key = authenticate(request)
            entry.key_id = key.key_id if key else None
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON ({e})", "invalid_json") from None
            req = parse_request(ChatRequest if chat else CompletionRequest, payload)
            entry.model, entry.stream = req.model, req.stream
            entry.prompt = req.as_messages() if chat else req.prompt
            max_tokens = req.requested_max_tokens() or limits.default_max_tokens
            params = GenerationParams(max_tokens=max_tokens, temperature=req.effective_temperature,
                                      top_p=req.top_p or 1.0, stop=tuple(req.stop or ()), seed=req.seed,
                                      min_tokens=req.min_tokens or 0)
            entry.params = {k: v for k, v in params.__dict__.items()}
            rag = req.rag if chat else None
            if rag is not None:
                entry.params["rag"] = rag.model_dump()
            if not allowed(key, req.model):
                raise ApiError(403, f"this API key may not use model {req.model!r}", "model_not_allowed",
                               "model")
            if fine_tuned is not None and not await run_in_threadpool(fine_tuned.may_use, caller_of(key),
                                                                      req.model):
                # Another key's fine-tuned model: as unknown as one that does not exist.
                raise ApiError(404, f"model {req.model!r} does not exist: GET /v1/models lists the "
                               "models served", "model_not_found", "model")
            try:
                # Off the event loop: a registry reference may query MLflow and hash files.
                target = await run_in_threadpool(engine.resolve, req.model)
            except StoreError as e:
                raise ApiError(e.status, str(e), e.code, "model") from None
            if max_tokens > limits.max_tokens:
                raise ApiError(400, f"max_tokens is {max_tokens}, over this server's limit of "
                               f"{limits.max_tokens}", "max_tokens_too_large", "max_tokens")
            if params.min_tokens > max_tokens:
                raise ApiError(400, f"min_tokens is {params.min_tokens}, more than max_tokens "
                               f"({max_tokens})", "invalid_request", "min_tokens")
            if params.stop:
                await run_in_threadpool(lambda: check_stops(params.stop, limits.max_stop_tokens,
                                                            engine.models.tokenizer(target.run)))
            messages, citations = entry.prompt, None
            if rag is not None:  # sources into the prompt; the log keeps the client's messages
                messages, citations = await run_in_threadpool(
                    retrievals.augment, entry.prompt, rag, engine.models.tokenizer(target.run))
            try:
                # Off the event loop: a long prompt takes a while to render and tokenise.
                prompt_ids = await (run_in_threadpool(engine.chat_prompt_ids, messages, target) if chat
                                    else run_in_threadpool(engine.text_prompt_ids, req.prompt, target))
            except BadPrompt as e:
                raise ApiError(400, str(e), "invalid_messages", "messages") from None
            entry.prompt_tokens = len(prompt_ids)
            if not prompt_ids:
                raise ApiError(400, "the prompt is empty", "invalid_request", "messages" if chat else "prompt")
            if len(prompt_ids) > limits.max_prompt_tokens:
                raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens, over this server's "
                               f"limit of {limits.max_prompt_tokens}", "context_length_exceeded",
                               "messages" if chat else "prompt")
            if req.stream:
                return await stream(entry, started, target, prompt_ids, params, req.include_usage, chat,
                                    deadline, citations)
            try:
                job = engine.submit(target, prompt_ids, params, deadline=deadline)
                result = await wait_for(request, job, deadline)
            except Overloaded as e:  # queue full, shutting down, or no turn within the time budget
                raise ApiError(503, str(e), "server_overloaded") from None
        except (ClientGone, ClientDisconnect):  # nobody reads the answer; the row says why not
            entry.status, entry.error_code = 499, "client_closed_request"
            await finish(entry, started)
            return Response(status_code=499)
        except ApiError as e:
            entry.status, entry.error_code = e.status, e.code
            await finish(entry, started)
            return error_response(e)
        except AffinaError as e:  # e.g. an adapter that fails to load
            entry.status, entry.error_code = 400, "model_not_servable"
            await finish(entry, started)
            return error_response(ApiError(400, str(e), "model_not_servable", "model"))
        except Exception:  # a bug: the traceback to the server log, one log row, a JSON 500
            logger.exception("request %s failed", entry.request_id)
            entry.status, entry.error_code = 500, "internal_error"
            await finish(entry, started)
            return error_response(internal_error(entry.request_id))
        entry.response, entry.completion_tokens = result.text, result.completion_tokens
        entry.finish_reason, entry.adapter_version = result.finish_reason, result.adapter_version
        await finish(entry, started)
        build = chat_response if chat else completion_response
        body = build(entry.request_id, entry.model, result.text, result.finish_reason,
                     usage(result.prompt_tokens, result.completion_tokens))
        if citations is not None:
            body["citations"] = citations  # affina extension beside OpenAI's fields
        return JSONResponse(body)

    async def stream(entry, started, target, prompt_ids, params, include_usage: bool, chat: bool,
                     deadline: float, citations: list | None = None):
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        done = object()
        try:
            job = engine.submit(target, prompt_ids, params, deadline=deadline,
                                on_text=lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text))
        except Overloaded as e:
            raise ApiError(503, str(e), "server_overloaded") from None
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, done))
        created, rid, model = int(time.time()), entry.request_id, entry.model

        def chunk(text=None, finish_reason=None, usage_=None, first=False):
            if chat:
                delta = None if text is None and usage_ is not None else (
                    {"role": "assistant", "content": ""} if first else
                    ({"content": text} if text is not None else {}))
                return _sse(chat_chunk(rid, model, created, delta, finish_reason, usage_))
            return _sse(completion_chunk(rid, model, created, text, finish_reason, usage_))

        async def events():
            try:
                if chat:
                    first = chat_chunk(rid, model, created, {"role": "assistant", "content": ""})
                    if citations is not None:  # the sources, once, on the first chunk
                        first["citations"] = citations
                    yield _sse(first)
                while (piece := await pieces.get()) is not done:
                    yield chunk(piece)
                try:
                    result = job.future.result()
                except Exception:  # the headers are gone: report in the stream, as OpenAI does
                    logger.exception("request %s failed while streaming", entry.request_id)
                    entry.status, entry.error_code = 500, "internal_error"
                    await finish(entry, started)
                    yield _sse(error_body(internal_error(entry.request_id)))
                    yield "data: [DONE]\n\n"
                    return
                entry.response, entry.completion_tokens = result.text, result.completion_tokens
                entry.finish_reason, entry.adapter_version = result.finish_reason, result.adapter_version
                yield chunk("" if not chat else None, result.finish_reason)
                if include_usage:
                    yield chunk(usage_=usage(result.prompt_tokens, result.completion_tokens))
                await finish(entry, started)
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                job.cancelled.set()  # the client went away: stop generating for it
                entry.status, entry.error_code = 499, "client_closed_request"
                await asyncio.shield(finish(entry, started))
                raise

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    from .dashboard import mount_dashboard  # the web pages at / and the JSON they read

    mount_dashboard(app, engine=engine, log=log, authenticate=authenticate, allowed=allowed, auth=auth)

    from .feedback_api import feedback_router

    app.include_router(feedback_router(log, authenticate, read_body))
    return app
