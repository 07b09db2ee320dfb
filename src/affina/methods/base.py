"""The Method protocol and the registry every adaptation method registers into.

A method is one module: a config dataclass (field help cites the paper), and an object with
`apply`, `save`, `load`, `merge`. The training recipe only ever talks to this protocol, so it
never branches on method names.

Beyond the four required calls a method may define optional hooks; the functions at the bottom
of this file (`load_options`, `prepare_method_data`, ...) call a hook where a method has it and
fall back to the behaviour every causal-LM method shares where it does not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, get_type_hints

from ..errors import ConfigError

__all__ = ["Method", "TrainableReport", "register", "get_method", "method_names",
           "build_method_config", "trainable_report", "method_trains", "method_task",
           "load_options", "prepare_method_data", "attach_data", "data_collator",
           "metrics_function", "method_report", "merge_supported", "describe_fields"]


@dataclass
class TrainableReport:
    trainable: int
    total: int
    trainable_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(1, self.total)

    def as_dict(self) -> dict:
        return {"trainable_params": self.trainable, "total_params": self.total,
                "trainable_percent": round(self.percent, 4), "trainable_bytes": self.trainable_bytes}


class Method(Protocol):
    name: str
    description: str
    config_class: type
    artifact_kind: str  # "adapter" (loads onto a base) or "model" (a whole HF model)

    def apply(self, model, cfg) -> Any: ...
    def save(self, model, directory: Path) -> None: ...
    def load(self, base, directory: Path) -> Any: ...
    def merge(self, model) -> Any: ...

    # Optional hooks (see the functions below for their defaults):
    #   trains: bool                               False: nothing is optimised (fewshot)
    #   task: str                                  "generate" (causal LM) or "classify"
    #   load_options(cfg) -> dict                  extra load_model kwargs (quantization_config)
    #   prepare_data(cfg, data_cfg, tokenizer, seed) -> PreparedData
    #   attach_data(model, cfg, data, tokenizer) -> model   (fewshot keeps its example pool)
    #   collator(cfg, tokenizer) -> callable       batches the prepared examples
    #   compute_metrics(cfg) -> callable | None    Trainer metrics on the validation set
    #   report(model, cfg) -> dict                 extra facts for the run manifest
    #   can_merge: bool                            whether `merge` folds into plain weights


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    _REGISTRY[method.name] = method
    return method


def _ensure_loaded() -> None:
    # Importing the modules registers every built-in method.
    from . import (adapter, dora, fewshot, full, head, ia3, lora, partial, prefix,  # noqa: F401
                   prompt, qlora, rslora)


def method_names() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_method_config(method: Method, options: dict) -> Any:
    """Validate `method.*` keys against the method's own config dataclass."""
    cls = method.config_class
    hints = get_type_hints(cls)
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise ConfigError(f"unknown key(s) for method '{method.name}': {', '.join('method.' + k for k in unknown)}; "
                          f"valid: {', '.join('method.' + k for k in hints)}")
    from ..config import _coerce  # one coercion rule for every config value

    values = {k: _coerce(v, hints[k], f"method.{k}") for k, v in options.items()}
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def method_config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def trainable_report(model) -> TrainableReport:
    trainable = total = nbytes = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        total += _logical_numel(p)
        if p.requires_grad:
            trainable += p.numel()
            nbytes += p.numel() * p.element_size()
    return TrainableReport(trainable, total, nbytes)


def _logical_numel(p) -> int:
    """Parameters a tensor stands for: 4-bit weights pack two per byte (bitsandbytes keeps the
    original shape in `quant_state`)."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    if shape is not None:
        n = 1
        for s in shape:
            n *= int(s)
        return n
    return p.numel()


def describe_fields(method: Method) -> list[tuple[str, str, str]]:
    """(key, default, help) for each of a method's config fields: its reference documentation."""
    rows = []
    for f in dataclasses.fields(method.config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f"method.{f.name}", repr(default), f.metadata.get("help", "")))
    return rows


# -- optional hooks with their shared defaults ---------------------------------------------


def method_trains(method: Method) -> bool:
    return getattr(method, "trains", True)


def method_task(method: Method) -> str:
    return getattr(method, "task", "generate")


def merge_supported(method: Method) -> bool:
    return getattr(method, "can_merge", True)


def load_options(method: Method, cfg) -> dict:
    hook = getattr(method, "load_options", None)
    return hook(cfg) if hook else {}


def prepare_method_data(method: Method, cfg, data_cfg, tokenizer, seed: int):
    hook = getattr(method, "prepare_data", None)
    if hook:
        return hook(cfg, data_cfg, tokenizer, seed)
    from ..data.prepare import prepare_data

    return prepare_data(data_cfg, tokenizer, seed)


def attach_data(method: Method, model, cfg, data, tokenizer):
    hook = getattr(method, "attach_data", None)
    return hook(model, cfg, data, tokenizer) if hook else model


def data_collator(method: Method, cfg, tokenizer):
    hook = getattr(method, "collator", None)
    if hook:
        return hook(cfg, tokenizer)
    from ..data.packing import BatchCollator

    return BatchCollator(tokenizer.pad_token_id)


def metrics_function(method: Method, cfg):
    hook = getattr(method, "compute_metrics", None)
    return hook(cfg) if hook else None


def method_report(method: Method, model, cfg) -> dict:
    hook = getattr(method, "report", None)
    return hook(model, cfg) if hook else {}
