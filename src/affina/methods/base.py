"""The Method protocol and the registry every adaptation method registers into.

A method is one module: a config dataclass (field help cites the paper), and an object with
`apply`, `save`, `load`, `merge`. The training recipe only ever talks to this protocol, so it
never branches on method names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, get_type_hints

from ..errors import ConfigError

__all__ = ["Method", "TrainableReport", "register", "get_method", "method_names",
           "build_method_config", "trainable_report"]


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


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    _REGISTRY[method.name] = method
    return method


def _ensure_loaded() -> None:
    # Importing the package registers every built-in method.
    from . import lora  # noqa: F401


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
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            nbytes += p.numel() * p.element_size()
    return TrainableReport(trainable, total, nbytes)
