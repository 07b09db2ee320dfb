"""A model store over a tiny base with two LoRA runs whose greedy answers differ, and a server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import make_tiny_model


def make_lora_run(store: Path, name: str, base_dir: Path, seed: int, dora: bool = False) -> Path:
    """A run directory as `affina train` leaves it: affina.json + a PEFT LoRA adapter.

    Random (not zero) LoRA weights, so each adapter changes the base's greedy answers its own way.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from affina.models import model_fingerprint
    from affina.record import BaseModelInfo, MethodInfo, RunRecord, write_record

    run = store / name
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                        init_lora_weights=False, use_dora=dora)
    get_peft_model(base, config).save_pretrained(run / "adapter")
    write_record(run, RunRecord(kind="adapter", artifact="adapter",
                                base_model=BaseModelInfo(str(base_dir), fingerprint=model_fingerprint(base_dir)),
                                method=MethodInfo("dora" if dora else "lora", {"r": 4})))
    return run


@pytest.fixture(scope="session")
def serve_store(tmp_path_factory) -> tuple[Path, Path]:
    """(base model dir, store dir with runs `alpha` and `beta`). Treat as read-only."""
    root = tmp_path_factory.mktemp("serve")
    # A wide weight init keeps the top logits far apart, so greedy answers are stable under the
    # tiny numeric differences between batched and single forward passes.
    base = make_tiny_model(root / "tiny-base", seed=3, initializer_range=0.3)
    store = root / "runs"
    store.mkdir()
    make_lora_run(store, "alpha", base, seed=1)
    make_lora_run(store, "beta", base, seed=2)
    (root / "outside").mkdir()
    (store / "escape").symlink_to(root / "outside", target_is_directory=True)
    return base, store


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, app):
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(tmp_path: Path, base: Path, store: Path, *, keys_path: Path | None = None,
                 require_keys: bool = False, auth: str | None = None, **options):
    """(ServerThread, engine, app) serving `store` over `base`, with its own key file and log.
    `auth` as `affina serve --auth` (default: keys when any key exists or `require_keys`)."""
    from affina.serve.app import Limits, create_app
    from affina.serve.auth import KeyStore
    from affina.record.requestlog import RequestLog
    from affina.serve.server import ServeOptions, build_engine

    limits = options.pop("limits", Limits(max_body_bytes=20_000, max_prompt_tokens=300, max_tokens=64,
                                          default_max_tokens=16))
    start = options.pop("start_engine", True)
    # One generation thread: on a CPU shared with other work, more threads stall each other.
    options.setdefault("threads", 1)
    opts = ServeOptions(store=store, base=str(base), limits=limits, **options)
    engine = build_engine(opts)
    if start:
        engine.start()
    keys = KeyStore(keys_path or tmp_path / "keys.db")
    log = RequestLog(f"sqlite:///{tmp_path / 'requests.db'}")
    auth = auth or ("keys" if require_keys or keys.has_active_keys() else "open")
    app = create_app(engine, keys, log, limits, auth=auth)
    return ServerThread(app), engine, app
