"""`affina serve`: choose the base, load it once, build the API, run it under uvicorn.

Also writes the equivalent vLLM command (`--print-vllm`) for deployments that outgrow one process.
"""

from __future__ import annotations

import ipaddress
import json
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
           "is_loopback", "BASE_NAME"]

BASE_NAME = "base"


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
    limits: Limits = field(default_factory=Limits)
    log_url: str | None = None
    redact: bool = False
    keys_path: Path | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None  # torch CPU threads for generation (default: torch's choice)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_store(options: ServeOptions) -> ModelStore | None:
    if options.store.is_dir():
        return ModelStore(options.store)
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
                    max_queue=options.max_queue, max_batch=options.max_batch,
                    threads=options.threads, dtype=options.dtype)
    for name, reason in engine.scan().unavailable:
        warn(f"run {name} is not served: {reason}")
    return engine


def build_app(options: ServeOptions, engine: Engine):
    """The FastAPI app, after the checks that keep an open server off the network."""
    keys = KeyStore(options.keys_path)
    loopback = is_loopback(options.host)
    if not keys.has_active_keys():
        if not loopback:
            raise AffinaError(f"refusing to serve on {options.host} without API keys: create one "
                              "with `affina keys create --name NAME`, or bind --host 127.0.0.1")
        warn(f"no API keys exist ({keys.path}): serving on {options.host} WITHOUT authentication; "
             "create one with `affina keys create` to require keys")
    log = RequestLog(options.log_url, redact=options.redact)
    return create_app(engine, keys, log, options.limits, require_keys=not loopback)


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
    runs = engine.served_runs()
    info(f"serving base {engine.base.spec!r} as {BASE_NAME!r} and {len(runs)} run(s) from "
         f"{options.store} on http://{options.host}:{options.port}/v1 "
         f"(request log: {app.state.log.display_url})")
    try:
        # Access lines name the path and client only: keys travel in headers, never logged.
        uvicorn.run(app, host=options.host, port=options.port, log_level="info")
    finally:
        engine.stop()


def vllm_command(options: ServeOptions) -> str:
    """The `vllm serve` line for the same base and its LoRA-family adapters, with LoRA enabled.
    vLLM applies LoRA adapters only: the other runs are left out, with a warning."""
    from ..models import resolve_model_path

    store = _open_store(options)
    spec = choose_base(store, options.base)
    runs: list[ServedRun] = []
    for run in store.runs() if store else []:
        if run.base_spec != spec and options.base is not None:
            continue
        if run.sharing is Sharing.PEFT_ADAPTER:
            runs.append(run)
        else:
            warn(f"run {run.name} ({run.record.method.name}) is not a LoRA adapter: vLLM cannot serve "
                 "it; `affina serve` can")
    base_path = resolve_model_path(spec)
    args = ["vllm", "serve", str(base_path), "--served-model-name", BASE_NAME,
            "--host", options.host, "--port", str(options.port)]
    if runs:
        ranks = [json.loads((r.artifact_dir / "adapter_config.json").read_text()).get("r", 16) for r in runs]
        args += ["--enable-lora", "--max-loras", str(min(len(runs), options.max_adapters)),
                 "--max-lora-rank", str(_vllm_rank(max(ranks))), "--lora-modules"]
        args += [f"{r.name}={r.artifact_dir}" for r in runs]
    return shlex.join(args)


def _vllm_rank(rank: int) -> int:
    # vLLM accepts only these maximum ranks; the smallest that fits every adapter.
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    return rank
