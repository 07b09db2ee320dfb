"""OpenAI's Files and Fine-tuning APIs over the jobs service (`affina.jobs`), as one router that
`create_app` includes, plus how the server answers for `ft:` model names.

    POST   /v1/files                              multipart: file, purpose=fine-tune
    GET    /v1/files  /v1/files/{id}  /v1/files/{id}/content     DELETE /v1/files/{id}
    POST   /v1/fine_tuning/jobs                   GET /v1/fine_tuning/jobs (after, limit, metadata[k]=v)
    GET    /v1/fine_tuning/jobs/{id}              POST .../{id}/cancel  .../{id}/pause  .../{id}/resume
    GET    /v1/fine_tuning/jobs/{id}/events       GET  .../{id}/checkpoints

Shapes are exactly OpenAI's (FileObject, FineTuningJob, FineTuningJobEvent,
FineTuningJobCheckpoint, cursor pages), so the official client works unchanged. Files and jobs
belong to the API key that created them: another key gets 404 for their ids (as OpenAI answers),
an admin key sees everything. Training runs in worker processes, never here.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import AffinaError
from ..jobs.service import CHECKPOINT_MODEL, Caller, JobRequestError, JobsService
from ..jobs.store import JobRow
from .guards import logger
from .schemas import ApiError, error_body

__all__ = ["jobs_router", "FineTunedModels", "caller_of", "DEFAULT_MAX_FILE_BYTES"]

DEFAULT_MAX_FILE_BYTES = 512 << 20
_REGISTERED = re.compile(r"ft-.*-(?P<job>ftjob-[0-9a-f]{24})@.+")
_MAX_LIMIT = 100


def caller_of(key) -> Caller:
    """An API key as the jobs service sees it; no key (an open loopback server) sees everything."""
    if key is None:
        return Caller(None, True)
    return Caller(key.key_id, bool(getattr(key, "admin", False)))


class FineTunedModels:
    """`ft:<base>:<suffix>:<job id>` (and `...:ckpt-step-N`) → the job's run, for the model
    store; and whether a caller may use such a name (only its owner, or an admin)."""

    def __init__(self, service: JobsService):
        self.service = service

    def _job(self, name: str) -> tuple[JobRow | None, int | None]:
        m = CHECKPOINT_MODEL.fullmatch(name)
        model, step = (m["model"], int(m["step"])) if m else (name, None)
        return self.service.store.job_by_model(model), step

    def may_use(self, caller: Caller, name: str) -> bool:
        """False for another key's fine-tuned model, named `ft:...` or by its registry name
        (`ft-...-<job id>@N`): answered 404, as for an unknown one."""
        if caller.admin or not isinstance(name, str):
            return True
        if name.startswith("ft:"):
            job, _ = self._job(name)
        else:
            m = _REGISTERED.fullmatch(name)
            job = self.service.store.get_job(m["job"]) if m else None
        return job is None or job.owner == caller.key_id

    def names_for(self, caller: Caller) -> list[tuple[str, int]]:
        """(fine-tuned model, created) of the succeeded jobs the caller may use."""
        page = self.service.store.list_jobs(caller.key_id, admin=caller.admin, limit=10_000,
                                            status="succeeded")
        return [(j.fine_tuned_model, j.finished_at or j.created_at) for j in page.data if j.fine_tuned_model]

    def __call__(self, store, name: str):
        """Resolve for `ModelStore.resolve`: the registered version (hash-verified) of a finished
        job, or one of its checkpoints' adapters."""
        from .store import UnknownModel, UnservableModel

        job, step = self._job(name)
        if job is None or job.status != "succeeded" or not job.run_dir:
            raise UnknownModel(f"model {name!r} does not exist: GET /v1/models lists the models served")
        if step is None:
            if job.registered_as:
                return store._resolve_registered(job.registered_as)
            return store.served_run_at(name, Path(job.run_dir))
        checkpoint = self.service.store.checkpoint(job.id, step)
        if checkpoint is None or not Path(checkpoint.path).is_dir():
            raise UnknownModel(f"model {name!r}: job {job.id} has no checkpoint at step {step} any more; "
                               "GET /v1/fine_tuning/jobs/{id}/checkpoints lists them")
        try:
            artifact = Path(checkpoint.path).resolve().relative_to(Path(job.run_dir).resolve())
        except ValueError:
            raise UnservableModel(f"model {name!r}: its checkpoint lies outside the run") from None
        return store.served_run_at(name, Path(job.run_dir), artifact=artifact.as_posix())


def _safe_filename(name: str | None) -> str:
    """The client's file name as one plain path component (it names the staged file, and so
    appears in the data checks' `file:line` messages)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or "").name).lstrip(".")
    return cleaned or "upload.jsonl"


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise JobRequestError(f"limit must be an integer 1..{_MAX_LIMIT}", param="limit")
    return int(raw)


def _metadata_filter(request: Request) -> dict | None:
    out = {}
    for key, value in request.query_params.multi_items():
        m = re.fullmatch(r"metadata\[(.+)\]", key)
        if m:
            out[m[1]] = value
    return out or None


def _list(items: list[dict], has_more: bool, **extra) -> dict:
    return {"object": "list", "data": items, "has_more": has_more, **extra}


def jobs_router(service: JobsService, authenticate, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> APIRouter:
    """The router. `authenticate(request)` → the API key (None on an open server), raising
    ApiError for a missing or bad key (the app's own check)."""
    router = APIRouter()

    def error(e: Exception) -> JSONResponse:
        if isinstance(e, ApiError):
            return JSONResponse(error_body(e), status_code=e.status)
        assert isinstance(e, JobRequestError)
        return JSONResponse(error_body(ApiError(e.status, str(e), e.code, e.param)), status_code=e.status)

    async def call(request: Request, work, *args):
        """Authenticate, then run `work(caller, *args)` off the event loop; errors as OpenAI's."""
        try:
            caller = caller_of(authenticate(request))
            result = await run_in_threadpool(work, caller, *args)
        except (ApiError, JobRequestError) as e:
            return error(e)
        return result if isinstance(result, (JSONResponse, FileResponse)) else JSONResponse(result)

    def revalidate_pending() -> None:
        # Jobs a stopped server left half-checked are checked now (a restart loses nothing).
        for job_id in service.pending_validation():
            try:
                service.validate_job(job_id)
            except Exception:  # noqa: BLE001 — one broken job must not stop the others
                logger.exception("validating job %s failed", job_id)

    threading.Thread(target=revalidate_pending, name="affina-jobs-revalidate", daemon=True).start()

    # -- files ---------------------------------------------------------------------------

    @router.post("/v1/files")
    async def upload_file(request: Request):
        try:
            caller = caller_of(authenticate(request))
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_file_bytes + 65536:
                raise JobRequestError(f"the file is over this server's limit of {max_file_bytes} bytes",
                                      status=413, code="file_too_large", param="file")
            form = await request.form(max_part_size=1 << 20)
            upload, purpose = form.get("file"), form.get("purpose")
            if upload is None or isinstance(upload, str):
                raise JobRequestError("send the file as multipart form field 'file'", param="file")
            if not isinstance(purpose, str):
                raise JobRequestError("purpose is required (fine-tune)", param="purpose")
            filename = _safe_filename(upload.filename)
            staging = service.upload_dir()
            staged = staging / filename
            size = 0
            with open(staged, "wb") as out:
                while chunk := await upload.read(1 << 20):
                    size += len(chunk)
                    if size > max_file_bytes:
                        out.close()
                        import shutil

                        shutil.rmtree(staging, ignore_errors=True)
                        raise JobRequestError(f"the file is over this server's limit of {max_file_bytes} "
                                              "bytes", status=413, code="file_too_large", param="file")
                    out.write(chunk)
            row = await run_in_threadpool(service.add_file, staged, filename, purpose, caller)
        except (ApiError, JobRequestError) as e:
            return error(e)
        return JSONResponse(row.to_openai())

    @router.get("/v1/files")
    async def list_files(request: Request):
        def work(caller):
            order = request.query_params.get("order", "desc")
            if order not in ("asc", "desc"):
                raise JobRequestError("order must be asc or desc", param="order")
            page = service.store.list_files(caller.key_id, admin=caller.admin,
                                            purpose=request.query_params.get("purpose"),
                                            after=request.query_params.get("after"),
                                            limit=_limit(request, 10_000),
                                            order=order)
            data = [f.to_openai() for f in page.data]
            return _list(data, page.has_more, first_id=data[0]["id"] if data else None,
                         last_id=data[-1]["id"] if data else None)
        return await call(request, work)

    @router.get("/v1/files/{file_id}")
    async def retrieve_file(request: Request, file_id: str):
        return await call(request, lambda caller: service.file(file_id, caller).to_openai())

    @router.delete("/v1/files/{file_id}")
    async def delete_file(request: Request, file_id: str):
        def work(caller):
            row = service.delete_file(file_id, caller)
            return {"id": row.id, "object": "file", "deleted": True}
        return await call(request, work)

    @router.get("/v1/files/{file_id}/content")
    async def file_content(request: Request, file_id: str):
        def work(caller):
            row = service.file(file_id, caller)
            return FileResponse(row.path, media_type="application/octet-stream", filename=row.filename)
        return await call(request, work)

    # -- fine-tuning jobs ----------------------------------------------------------------

    @router.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request, background: BackgroundTasks):
        try:
            caller = caller_of(authenticate(request))
            try:
                body = await request.json()
            except ValueError as e:
                raise JobRequestError(f"the request body is not valid JSON ({e})", code="invalid_json")
            job = await run_in_threadpool(service.create_job, body, caller)
        except (ApiError, JobRequestError) as e:
            return error(e)
        background.add_task(service.validate_job, job.id)  # after the answer, in a thread
        return JSONResponse(job.to_openai(), background=background)

    @router.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request):
        def work(caller):
            page = service.store.list_jobs(caller.key_id, admin=caller.admin,
                                           after=request.query_params.get("after"),
                                           limit=_limit(request, 20), metadata=_metadata_filter(request))
            return _list([j.to_openai() for j in page.data], page.has_more)
        return await call(request, work)

    @router.get("/v1/fine_tuning/jobs/{job_id}")
    async def retrieve_job(request: Request, job_id: str):
        return await call(request, lambda caller: service.job(job_id, caller).to_openai())

    for action in ("cancel", "pause", "resume"):
        def make(action=action):
            async def act(request: Request, job_id: str):
                return await call(request, lambda caller: getattr(service, action)(job_id, caller).to_openai())
            act.__name__ = f"{action}_job"
            return act
        router.post(f"/v1/fine_tuning/jobs/{{job_id}}/{action}")(make())

    @router.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def list_events(request: Request, job_id: str):
        def work(caller):
            service.job(job_id, caller)
            try:
                page = service.store.list_events(job_id, after=request.query_params.get("after"),
                                                 limit=_limit(request, 20))
            except AffinaError as e:
                raise JobRequestError(str(e), param="after") from None
            return _list([e.to_openai() for e in page.data], page.has_more)
        return await call(request, work)

    @router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def list_checkpoints(request: Request, job_id: str):
        def work(caller):
            job = service.job(job_id, caller)
            page = service.store.list_checkpoints(job_id, after=request.query_params.get("after"),
                                                  limit=_limit(request, 10))
            data = [c.to_openai(job.ft_name) for c in page.data]
            return _list(data, page.has_more, first_id=data[0]["id"] if data else None,
                         last_id=data[-1]["id"] if data else None)
        return await call(request, work)

    return router
