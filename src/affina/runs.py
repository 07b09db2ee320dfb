"""Open a model reference for inference: a run directory (its artifact applied to its base), a
registered `NAME@VERSION` / `NAME@ALIAS`, or a plain model spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import AffinaError
from .track.manifest import MANIFEST_NAME, read_manifest

__all__ = ["OpenedModel", "open_model", "is_run_dir"]


@dataclass
class OpenedModel:
    model: object
    tokenizer: object
    ref: str
    manifest: dict | None
    task: str = "generate"  # "classify" for runs of a classification method (head)

    def classify(self, texts: list[str], batch_size: int = 16) -> list[str]:
        """The predicted label of each text (classification runs only)."""
        if self.task != "classify":
            raise AffinaError(f"{self.ref} is a generative model, not a classifier; use generate")
        return self.model.classify(self.tokenizer, list(texts), batch_size=batch_size)


def is_run_dir(ref: str | Path) -> bool:
    return (Path(ref) / MANIFEST_NAME).is_file()


def open_model(ref: str, *, device=None, dtype=None) -> OpenedModel:
    from .data.tokenize import ensure_chat_template
    from .methods import get_method, load_options, method_task
    from .models import load_model

    ref = _registered_run_dir(ref)
    if is_run_dir(ref):
        manifest = read_manifest(Path(ref))
        method = get_method(manifest["method"]["name"])
        # The base loads as the method trained on it (e.g. quantised for qlora).
        options = load_options(method, _method_config(method, manifest))
        loaded = load_model(manifest["base_model"]["spec"], device=device, dtype=dtype, **options)
        model = method.load(loaded.model, Path(ref) / manifest["artifact"])
        model.eval()
        ensure_chat_template(loaded.tokenizer)
        return OpenedModel(model, loaded.tokenizer, ref, manifest, method_task(method))
    loaded = load_model(ref, device=device, dtype=dtype)
    ensure_chat_template(loaded.tokenizer)
    return OpenedModel(loaded.model, loaded.tokenizer, ref, None)


def _registered_run_dir(ref: str) -> str:
    """`NAME@VERSION` / `NAME@ALIAS` → the registered run directory, its file hashes verified."""
    from .track.registry import parse_ref, resolve_ref

    if Path(ref).exists() or parse_ref(ref) is None:
        return ref
    return str(resolve_ref(ref).run_dir)


def _method_config(method, manifest: dict):
    """The run's method config, rebuilt from the manifest (which records every field)."""
    import dataclasses

    from .methods import build_method_config

    names = {f.name for f in dataclasses.fields(method.config_class)}
    return build_method_config(method, {k: v for k, v in manifest["method"].items() if k in names})
