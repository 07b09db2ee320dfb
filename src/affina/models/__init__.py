"""Base models: resolve a spec (default | local dir | .gguf | hub id), load it, fingerprint it.

    from affina.models import load_model
    loaded = load_model("default")          # SmolLM2-135M-Instruct, converted once, offline
    loaded.model, loaded.tokenizer, loaded.fingerprint

Importing this package does not import torch; loading does.
"""

from affina.models.convert import convert_gguf, is_converted
from affina.models.default import default_model_dir, ensure_default_model
from affina.models.device import pick_device, pick_dtype
from affina.models.fingerprint import model_fingerprint
from affina.models.resolve import LoadedModel, load_model, resolve_model_path

__all__ = [
    "LoadedModel",
    "load_model",
    "resolve_model_path",
    "ensure_default_model",
    "default_model_dir",
    "convert_gguf",
    "is_converted",
    "model_fingerprint",
    "pick_device",
    "pick_dtype",
]
