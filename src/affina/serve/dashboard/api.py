"""The dashboard's routes: the page at `/`, its static files, and its JSON under `/dashboard/api/`.

The page and its scripts and styles are public (they hold no data); every JSON route takes the
same API key as /v1 (`Authorization: Bearer ...`, never in the URL) and answers errors in
OpenAI's shape. With keys, a page shows only what the key may use: runs and registered versions
by name, request-log rows by their model, and a fine-tuning job's model only to the key that
started the job (or an admin key), as the /v1 API answers. The jobs pages read the OpenAI-shaped /v1 jobs API
directly; the playground streams through /v1/chat/completions.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ...errors import AffinaError
from ..schemas import ApiError, error_body
from ..store import StoreError
from . import views

__all__ = ["mount_dashboard", "STATIC_DIR", "PAGE_HEADERS"]

STATIC_DIR = Path(__file__).parent / "static"
# The page talks only to this server: no inline script, no outside host, nothing framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MAX_LIMIT = 1000


def _when(text: str | None, param: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{param} {text!r} is not an ISO time (e.g. 2026-11-26T14:00:00Z)",
                       "invalid_time", param) from None


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return 200
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit {text!r}: give a whole number from 1 to {MAX_LIMIT}", "invalid_limit",
                       "limit")
    return int(text)


def mount_dashboard(app: FastAPI, *, engine, log, authenticate, allowed, auth: str) -> None:
    """Add the page, its files and its JSON routes to `app`. `authenticate(request)` and
    `allowed(key, model)` are the /v1 API's own checks."""
    router = APIRouter(prefix="/dashboard/api")

    async def answer(request: Request, work, *args):
        """Authenticate, run `work(key, *args)` off the event loop, answer JSON or an error."""
        try:
            key = authenticate(request)
            return JSONResponse(await run_in_threadpool(work, key, *args))
        except ApiError as e:
            return JSONResponse(error_body(e), status_code=e.status)
        except StoreError as e:
            return JSONResponse(error_body(ApiError(e.status, str(e), e.code, "model")), status_code=e.status)
        except AffinaError as e:  # e.g. a run record or config this version cannot read
            return JSONResponse(error_body(ApiError(400, str(e), "invalid_request")), status_code=400)

    def may_see(key, name: str | None) -> bool:
        """Whether the key may use `name`: its allow-list, and for a fine-tuning job's model
        (`ft:...`, or its registered `ft-...-<job id>@N`) being the job's owner or an admin."""
        if key is None:
            return True
        if name is None or not allowed(key, name):
            return False
        fine_tuned = getattr(engine.store, "fine_tuned", None)
        if fine_tuned is None:
            return True
        from ..jobs_api import caller_of

        return fine_tuned.may_use(caller_of(key), name)

    def registered_visible(key):
        def visible(name: str, versions: list[int], aliases: list[str]) -> bool:
            return key is None or any(may_see(key, f"{name}@{s}") for s in [*map(str, versions), *aliases])
        return visible

    def check_run(key, name: str) -> None:
        if key is None or may_see(key, name):
            return
        if allowed(key, name):  # another key's fine-tuned model: as unknown as a missing one
            raise ApiError(404, f"model {name!r} does not exist", "model_not_found", "model")
        raise ApiError(403, f"this API key may not use model {name!r}", "model_not_allowed", "model")

    def session(key):
        return {"auth": auth, "key_id": key.key_id if key else None, "base": engine.base_name,
                "base_spec": engine.base.spec, "base_aliases": sorted(engine.base_aliases)}

    def overview(key):
        scan = engine.scan()
        runs = [views.run_summary(r.name, r.run_dir) for r in scan.servable if may_see(key, r.name)]
        runs.sort(key=lambda r: r["created"], reverse=True)
        try:
            registry = views.registry_view(engine.store, registered_visible(key))
            registry_error = None
        except AffinaError as e:
            registry, registry_error = [], str(e)
        recent = views.request_rows(log, model=None, status=None, since=None, until=None, text=None,
                                    limit=8, visible=lambda m: may_see(key, m))["data"]
        return {**session(key), "runs": runs[:8], "run_count": len(runs),
                "unavailable": [{"name": n, "reason": r} for n, r in scan.unavailable if may_see(key, n)],
                "loaded_adapters": engine.loaded_adapters(), "loaded_models": engine.loaded_models(),
                "queue_depth": engine.queue_depth(),
                "registry": [{"name": m["name"], "versions": len(m["versions"]), "aliases": m["aliases"]}
                             for m in registry], "registry_error": registry_error,
                "requests": views.request_counts(log) if key is None or key.admin else None, "recent_requests": recent}

    def runs(key):
        scan = engine.scan()
        data = [{**views.run_summary(r.name, r.run_dir), "servable": True}
                for r in scan.servable if may_see(key, r.name)]
        unavailable = []
        for name, reason in scan.unavailable:
            if not may_see(key, name):
                continue
            try:
                data.append({**views.run_summary(name, views.run_dir_of(engine.store, name)),
                             "servable": False, "unavailable_reason": reason})
            except (AffinaError, OSError, TypeError, ValueError):  # its record itself is unreadable
                unavailable.append({"name": name, "reason": reason})
        fine_tuned = getattr(engine.store, "fine_tuned", None)
        if fine_tuned is not None:  # fine-tuning jobs' results, served as ft:... (the key's own)
            from ..jobs_api import caller_of

            for name, _ in fine_tuned.names_for(caller_of(key)):
                if not may_see(key, name):
                    continue
                try:
                    data.append({**views.run_summary(name, engine.store.resolve(name).run_dir), "servable": True})
                except (AffinaError, OSError) as e:
                    unavailable.append({"name": name, "reason": str(e)})
        data.sort(key=lambda r: r["created"], reverse=True)
        return {"object": "list", "data": data, "unavailable": unavailable}

    def run(key, name: str):
        check_run(key, name)
        if name.startswith("ft:") and getattr(engine.store, "fine_tuned", None) is not None:
            # A fine-tuning job's model: its run lives in the jobs' part of the store.
            return views.run_detail(name, engine.store.resolve(name).run_dir, None)
        run_dir = views.run_dir_of(engine.store, name)
        reason = dict(engine.scan().unavailable).get(name)
        return views.run_detail(name, run_dir, reason)

    def registry(key):
        return {"object": "list", "data": views.registry_view(engine.store, registered_visible(key))}

    def lineage(key, ref: str):
        if not ref:
            raise ApiError(400, "give ref: a registered NAME@VERSION or NAME@ALIAS, or a run's name",
                           "missing_ref", "ref")
        check_run(key, ref)
        return views.lineage_view(engine.store, ref, log)

    def requests(key, params: dict):
        model = params.get("model") or None
        if model is not None:
            check_run(key, model)
        rows = views.request_rows(log, model=model, status=params.get("status") or None,
                                  since=_when(params.get("since"), "since"),
                                  until=_when(params.get("until"), "until"), text=params.get("q"),
                                  limit=_limit(params.get("limit")), visible=lambda m: may_see(key, m))
        rows["models"] = [m for m in views.request_models(log) if may_see(key, m)]
        return rows

    @router.get("/session")
    async def _session(request: Request):
        return await answer(request, session)

    @router.get("/overview")
    async def _overview(request: Request):
        return await answer(request, overview)

    @router.get("/runs")
    async def _runs(request: Request):
        return await answer(request, runs)

    @router.get("/runs/{name}")
    async def _run(request: Request, name: str):
        return await answer(request, run, name)

    @router.get("/registry")
    async def _registry(request: Request):
        return await answer(request, registry)

    @router.get("/lineage")
    async def _lineage(request: Request):
        return await answer(request, lineage, request.query_params.get("ref", ""))

    @router.get("/requests")
    async def _requests(request: Request):
        return await answer(request, requests, dict(request.query_params))

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    async def _page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)
