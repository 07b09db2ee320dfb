"""Open a model reference for inference: a run directory (its artifact applied to its base) or a
plain model spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .track.manifest import MANIFEST_NAME, read_manifest

__all__ = ["OpenedModel", "open_model", "is_run_dir"]


@dataclass
class OpenedModel:
    model: object
    tokenizer: object
    ref: str
    manifest: dict | None


def is_run_dir(ref: str | Path) -> bool:
    return (Path(ref) / MANIFEST_NAME).is_file()


def open_model(ref: str, *, device=None, dtype=None) -> OpenedModel:
    from .data.tokenize import ensure_chat_template
    from .methods import get_method
    from .models import load_model

    if is_run_dir(ref):
        manifest = read_manifest(Path(ref))
        loaded = load_model(manifest["base_model"]["spec"], device=device, dtype=dtype)
        method = get_method(manifest["method"]["name"])
        model = method.load(loaded.model, Path(ref) / manifest["artifact"])
        model.eval()
        ensure_chat_template(loaded.tokenizer)
        return OpenedModel(model, loaded.tokenizer, ref, manifest)
    loaded = load_model(ref, device=device, dtype=dtype)
    ensure_chat_template(loaded.tokenizer)
    return OpenedModel(loaded.model, loaded.tokenizer, ref, None)
