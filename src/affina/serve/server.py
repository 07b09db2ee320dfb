"""`affina serve`: choose the base, load it once, build the API, run it under uvicorn.

Also writes the equivalent vLLM command (`--print-vllm`) for deployments that outgrow one process.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AffinaError
from ..ui import info, warn
from .app import Limits, create_app
from .auth import KeyStore
from .engine import Engine
from ..record.requestlog import RequestLog
from .store import ModelStore, ServedRun
from ..methods import Sharing

__all__ = ["ServeOptions", "choose_base", "build_engine", "build_app", "serve", "vllm_command",
           "is_loopback", "auth_mode", "BASE_NAME", "AUTH_MODES"]

BASE_NAME = "base"
AUTH_MODES = ("open", "keys")


@dataclass
class ServeOptions:
    store: Path = Path("runs")
    base: str | None = None  # None: the base recorded in the store's runs
    host: str = "127.0.0.1"
    port: int = 8000
    max_adapters: int = 8
    max_models: int = 2  # runs held on their own copy of the base (each costs a base's memory)
    max_queue: int = 64
    max_batch: int = 8
    batching: str = "continuous"  # or "static" (engine.BATCHING)
    limits: Limits = field(default_factory=Limits)
    log_url: str | None = None
    redact: bool = False
    keys_path: Path | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None  # torch CPU threads for generation (default: torch's choice)
    auth: str | None = None  # "open" or "keys"; None: decided once at start-up (see auth_mode)
    registry_ttl: float | None = None  # seconds an alias lookup is reused (default 2)
    jobs: bool = True  # the Files and Fine-tuning APIs (serve/jobs_api.py)
    workers: int = 1  # local worker processes started with the server (0: none)
    lease_seconds: float | None = None  # a worker's lease on its job (default: jobs.worker's)
    worker_flags: list[str] = field(default_factory=list)  # e.g. --executor ray --ray-address URL
    executor_description: str = "local"  # where the workers train, for the start-up line
    files_dir: Path | None = None  # uploaded files (default: $AFFINA_HOME/serve/files)
    monitor_every: float | None = None  # seconds between scheduled drift reports; None: off
    monitor_models: list[str] = field(default_factory=list)  # empty: every served run/reference
    monitor_config: Path | None = None  # monitor settings YAML (thresholds, alerts)
    monitor_policy: Path | None = None  # retraining policy YAML: scheduled runs apply the loop


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_store(options: ServeOptions) -> ModelStore | None:
    if options.store.is_dir():
        return ModelStore(options.store, registry_ttl=options.registry_ttl)
    if options.base is None:
        raise AffinaError(f"model store {options.store} does not exist: pass --store DIR (the "
                          "directory holding your runs) or --base SPEC to serve a base model alone")
    return None


def choose_base(store: ModelStore | None, base: str | None) -> str:
    """`base` if given, else the one base spec that every run in the store was trained on."""
    if base:
        return base
    specs: dict[str, list[str]] = {}
    for run in store.runs() if store else []:
        specs.setdefault(run.base_spec, []).append(run.name)
    if not specs:
        raise AffinaError(f"no servable runs in the model store {store.root if store else ''}: pass "
                          "--base SPEC (e.g. --base default) to serve a base model")
    if len(specs) > 1:
        listing = "; ".join(f"{spec!r}: {', '.join(names)}" for spec, names in sorted(specs.items()))
        raise AffinaError(f"the runs in {store.root} were trained on different bases ({listing}); "
                          "one server serves one base: pass --base SPEC")
    return next(iter(specs))


def _base_aliases(spec: str) -> tuple[str, ...]:
    """The base spec's short name (`default`, a directory's or a .gguf file's name), if safe."""
    from .store import InvalidModelName, check_model_name

    try:
        return (check_model_name(Path(spec).name.removesuffix(".gguf")),)
    except InvalidModelName:
        return ()


def build_engine(options: ServeOptions) -> Engine:
    from ..data.tokenize import ensure_chat_template
    from ..models import load_model

    store = _open_store(options)
    spec = choose_base(store, options.base)
    loaded = load_model(spec, device=options.device, dtype=options.dtype)
    ensure_chat_template(loaded.tokenizer)
    engine = Engine(loaded, BASE_NAME, store, base_aliases=_base_aliases(spec),
                    max_adapters=options.max_adapters, max_models=options.max_models,
                    max_queue=options.max_queue, max_batch=options.max_batch, batching=options.batching,
                    threads=options.threads, dtype=options.dtype)
    if engine.continuous_unsupported:
        info(f"batches are static: this base cannot decode continuously ({engine.continuous_unsupported})")
    for name, reason in engine.scan().unavailable:
        warn(f"run {name} is not served: {reason}")
    return engine


def auth_mode(requested: str | None, keys: KeyStore, host: str) -> str:
    """The authentication mode for the server's whole life, fixed at start-up: `keys` when asked,
    when any key exists, or when bound beyond loopback; `open` only on loopback. Never inferred
    per request, so revoking the last key cannot switch authentication off."""
    loopback = is_loopback(host)
    if requested is not None and requested not in AUTH_MODES:
        raise AffinaError(f"--auth {requested!r}: choose one of {', '.join(AUTH_MODES)}")
    if requested == "open" and not loopback:
        raise AffinaError(f"--auth open is allowed on loopback only, not on {host}: create a key "
                          "with `affina keys create --name NAME` and use --auth keys")
    if requested:
        return requested
    return "keys" if not loopback or keys.has_active_keys() else "open"


def build_app(options: ServeOptions, engine: Engine):
    """The FastAPI app, after the checks that keep an open server off the network."""
    keys = KeyStore(options.keys_path)
    mode = auth_mode(options.auth, keys, options.host)
    if mode == "keys" and not keys.has_active_keys():
        if not is_loopback(options.host):
            raise AffinaError(f"refusing to serve on {options.host} without API keys: create one "
                              "with `affina keys create --name NAME`, or bind --host 127.0.0.1")
        warn(f"authentication: API keys required (--auth keys), but no active key exists in "
             f"{keys.path}: every request is refused until you run `affina keys create`")
    elif mode == "keys":
        info(f"authentication: API keys required (--auth keys; keys in {keys.path})")
    else:
        warn(f"AUTHENTICATION IS OFF (--auth open): anyone who can reach {options.host}:"
             f"{options.port} may use every model; keys created later are not required until "
             "a restart with --auth keys")
    log = RequestLog(options.log_url, redact=options.redact)
    return create_app(engine, keys, log, options.limits, auth=mode,
                      jobs=jobs_service(options, engine, log.url) if options.jobs else None)


def jobs_service(options: ServeOptions, engine: Engine, db_url: str):
    """The jobs service over the request log's database, writing job runs into the model store
    (created if missing, so a server started with --base alone can still fine-tune)."""
    from ..jobs.service import JobsService
    from ..jobs.store import JobStore
    from ..paths import affina_home

    if engine.store is None:
        options.store.mkdir(parents=True, exist_ok=True)
        engine.store = ModelStore(options.store, registry_ttl=options.registry_ttl)
    files = options.files_dir or affina_home() / "serve" / "files"
    return JobsService(JobStore(db_url), files, options.store, base_spec=engine.base.spec,
                       base_names=tuple(sorted(engine.base_aliases)))


def start_workers(options: ServeOptions, db_url: str) -> list:
    """`options.workers` local `affina jobs worker` processes on the same database and store.
    Each dies with the server (parent-death signal) and hands its job back when stopped."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "affina", "jobs", "worker", "--store", str(options.store)]
    if options.lease_seconds:
        command += ["--lease-seconds", str(options.lease_seconds)]
    command += options.worker_flags
    # The URL travels in the environment, not the command line: `ps` shows command lines, and
    # a PostgreSQL URL may hold a password.
    env = {**os.environ, "AFFINA_SERVICE_DB": db_url}
    return [subprocess.Popen(command, env=env, preexec_fn=_stop_with_parent)
            for _ in range(options.workers)]


def _stop_with_parent() -> None:
    """In a worker before exec: SIGTERM when the server dies however it dies, so the worker
    hands its job back to the queue and stops its training (Linux)."""
    import signal

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_workers(workers: list) -> None:
    import signal
    import subprocess

    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the worker requeues its job and stops its training
    for proc in workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class DropQueryStrings(logging.Filter):
    """Access-log lines keep the path, never the query string: a client that puts a key or a
    token in the URL must not get it written to the server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, path with query, http version, status)
        if isinstance(record.args, tuple) and len(record.args) == 5 and isinstance(record.args[2], str):
            args = list(record.args)
            args[2] = args[2].split("?", 1)[0]
            record.args = tuple(args)
        return True


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise AffinaError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port") from None


def serve(options: ServeOptions) -> None:
    import uvicorn

    _check_port_free(options.host, options.port)
    engine = build_engine(options)
    app = build_app(options, engine)
    engine.start()
    scheduler = None
    if options.monitor_every:
        from .monitoring import MonitorScheduler

        scheduler = MonitorScheduler(options.monitor_every, store=options.store, log=app.state.log,
                                     models=options.monitor_models or None,
                                     config=options.monitor_config, policy=options.monitor_policy,
                                     jobs=getattr(app.state, "jobs", None)).start()
        info(f"drift monitoring every {options.monitor_every:.0f}s of "
             f"{', '.join(options.monitor_models) or 'every served run and registry reference'}")
    runs = engine.served_runs()
    info(f"serving base {engine.base.spec!r} as {BASE_NAME!r} and {len(runs)} run(s) from "
         f"{options.store} on http://{options.host}:{options.port}/v1 "
         f"(request log: {app.state.log.display_url})")
    workers = start_workers(options, app.state.log.url) if options.jobs and options.workers > 0 else []
    if options.jobs:
        where = "" if options.executor_description == "local" else f", {options.executor_description}"
        info(f"fine-tuning jobs: {len(workers)} local worker(s) on the queue in "
             f"{app.state.log.display_url}{where}" + ("" if workers else
                                               "; start workers with `affina jobs worker`"))
    import signal

    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again under the handler
    # that was installed before it started; this one turns it into an ordinary exit, so the
    # workers are stopped below (they hand their jobs back to the queue) and the engine too.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info")
        # Added after Config, which (re)configures uvicorn's loggers. Access lines name the
        # path and client only: keys travel in headers, and query strings are dropped.
        logging.getLogger("uvicorn.access").addFilter(DropQueryStrings())
        uvicorn.Server(config).run()
    finally:
        stop_workers(workers)
        if scheduler is not None:
            scheduler.stop()
        engine.stop()


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)


def vllm_command(options: ServeOptions) -> str:
    """The `vllm serve` line for the same base and its LoRA-family adapters, with LoRA enabled.
    vLLM applies LoRA adapters only: the other runs are left out, with a warning."""
    from ..models import resolve_model_path

    store = _open_store(options)
    spec = choose_base(store, options.base)
    scan = store.scan() if store else None
    runs: list[tuple[ServedRun, int]] = []
    for name, reason in scan.unavailable if scan else []:
        warn(f"run {name} is left out: {reason}")
    for run in scan.servable if scan else []:
        if run.base_spec != spec and options.base is not None:
            continue
        if run.sharing is not Sharing.PEFT_ADAPTER:
            warn(f"run {run.name} ({run.record.method.name}) is not a LoRA adapter: vLLM cannot serve "
                 "it; `affina serve` can")
            continue
        try:
            rank = json.loads((run.artifact_dir / "adapter_config.json").read_text()).get("r", 16)
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise ValueError(f"rank {rank!r} is not a positive integer")
        except (OSError, ValueError, AttributeError) as e:
            warn(f"run {run.name} is left out: unreadable adapter_config.json ({e})")
            continue
        runs.append((run, rank))
    base_path = resolve_model_path(spec)
    args = ["vllm", "serve", str(base_path), "--served-model-name", BASE_NAME,
            "--host", options.host, "--port", str(options.port)]
    if runs:
        args += ["--enable-lora", "--max-loras", str(min(len(runs), options.max_adapters)),
                 "--max-lora-rank", str(_vllm_rank(max(rank for _, rank in runs))), "--lora-modules"]
        args += [f"{r.name}={r.artifact_dir}" for r, _ in runs]
    return shlex.join(args)


def _vllm_rank(rank: int) -> int:
    # vLLM accepts only these maximum ranks; the smallest that fits every adapter.
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    return rank
