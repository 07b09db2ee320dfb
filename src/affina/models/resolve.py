"""Model spec → local HF model directory → loaded model + tokenizer.

A spec is one of:
    "default"              the embedded SmolLM2-135M-Instruct (converted once from its GGUF)
    a local directory      an HF model directory (config.json + weights)
    a .gguf file           converted once into $AFFINA_HOME/models/gguf-<hash>/
    "org/name"             a hub id: the local HF cache first, the hub only if it is reachable

torch and transformers are imported inside the functions that need them, so that importing
this package (the CLI does, to print its help) stays fast.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from affina.errors import ModelError
from affina.models.convert import convert_gguf
from affina.models.default import ensure_default_model
from affina.models.fingerprint import WEIGHT_SUFFIXES, model_fingerprint
from affina.paths import affina_home

if TYPE_CHECKING:
    import torch

__all__ = ["LoadedModel", "resolve_model_path", "load_model"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_TIMEOUT_S = 3.0
# What a causal LM needs from a hub repo; skips ONNX/TF/Flax/GGUF copies of the same weights.
_HUB_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass
class LoadedModel:
    """A base model ready to use, and what a run records about it."""

    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    spec: str
    path: Path
    fingerprint: str
    device: "torch.device"


def resolve_model_path(spec: str) -> Path:
    """The local HF model directory for `spec`, converting or downloading as needed.

    Loads no weights. Raises ModelError, in one line, for anything that cannot be resolved.
    """
    spec = spec.strip()
    if spec == "default":
        return ensure_default_model()
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf")
    if path.exists():
        return _local_model_dir(path)
    if looks_like_path:
        raise ModelError(f"{spec}: no such file or directory")
    if _HUB_ID.match(spec):
        return _hub_model_dir(spec)
    raise ModelError(f"{spec!r} is not a model: pass 'default', a local model directory, "
                     "a .gguf file or a hub id like 'org/name'")


def load_model(spec: str, *, device: "torch.device | str | None" = None,
               dtype: "torch.dtype | str | None" = None, for_training: bool = False,
               quantization_config: Any = None, attn_implementation: str | None = None) -> LoadedModel:
    """Resolve `spec`, then load its model and tokenizer onto `device` in `dtype`.

    `device`/`dtype` default to `pick_device()` / `pick_dtype(device)`. The model comes back in
    eval mode; `for_training` turns off the KV cache, which training does not use and which
    conflicts with gradient checkpointing. `quantization_config` (a transformers
    `BitsAndBytesConfig`) quantises the weights while loading, placed directly on `device`.
    `attn_implementation` (eager, sdpa, flash_attention_2) picks the attention kernel; None keeps
    the model's default.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from affina.models.device import pick_device, pick_dtype

    path = resolve_model_path(spec)
    device = torch.device(device) if device is not None else pick_device()
    dtype = _as_dtype(dtype) if dtype is not None else pick_dtype(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        quantized = {} if quantization_config is None else {
            "quantization_config": quantization_config, "device_map": str(device)}
        attention = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **quantized, **attention)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{spec}: cannot load the model in {path} ({_first_line(e)})") from e
    if tokenizer.pad_token is None:
        # Batching needs a pad token; eos is the usual stand-in, and labels mask pads anyway.
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if quantization_config is None:  # quantised weights were placed while loading
        model.to(device)
    model.eval()
    if for_training:
        model.config.use_cache = False
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, path=path,
                       fingerprint=model_fingerprint(path), device=device)


def _local_model_dir(path: Path) -> Path:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            short_hash = model_fingerprint(path).removeprefix("sha256:")[:16]
            return convert_gguf(path, affina_home() / "models" / f"gguf-{short_hash}")
        raise ModelError(f"{path}: expected a model directory or a .gguf file, got another file")
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "adapter_config.json").is_file():
            hint = "it holds an adapter (adapter_config.json), not a base model"
        elif ggufs:
            hint = f"to use its GGUF, pass the file: {ggufs[0]}"
        else:
            hint = "pass an HF model directory (config.json + weights) or a .gguf file"
        raise ModelError(f"{path}: not a model directory, config.json is missing ({hint})")
    return path.resolve()


def _hub_model_dir(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return cached
    unreachable = _hub_unreachable_reason()
    if unreachable:
        raise ModelError(f"{repo_id}: not in the local HF cache and the hub cannot be reached "
                         f"({unreachable}); pass a local model directory or a .gguf file instead")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES + _weight_patterns(repo_id)))
    except Exception as e:  # huggingface_hub raises many kinds: not found, gated, HTTP, disk
        raise ModelError(f"{repo_id}: cannot download from the hub ({_first_line(e)})") from e
    return _local_model_dir(path)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot in the local HF cache, if one holds a config and weights."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or an id the hub library rejects: the online path will say
        return None
    has_weights = any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir())
    return path if (path / "config.json").is_file() and has_weights else None


def _hub_unreachable_reason() -> str | None:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    # A quick TCP connect fails in seconds where an HTTP client would retry for minutes.
    try:
        socket.create_connection((host, port), timeout=_HUB_TIMEOUT_S).close()
    except OSError as e:
        return f"no connection to {host}:{port}: {e}"
    return None


def _weight_patterns(repo_id: str) -> list[str]:
    """safetensors if the repo has them, else PyTorch .bin: never both copies of the weights."""
    from huggingface_hub import HfApi

    try:
        names = [s.rfilename for s in HfApi().model_info(repo_id).siblings or []]
    except Exception:  # let snapshot_download report the real problem
        return ["*.safetensors"]
    return ["*.safetensors"] if any(n.endswith(".safetensors") for n in names) else ["*.bin"]


def _as_dtype(dtype: "torch.dtype | str") -> "torch.dtype":
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelError(f"dtype {dtype!r} is not a torch dtype (try bfloat16, float16 or float32)")
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
