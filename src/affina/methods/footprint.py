"""Each method's trainable parameters and training-state memory on a given model, with its
default settings: what `affina methods --model SPEC` prints."""

from __future__ import annotations

import copy

from .base import build_method_config, get_method, method_names, trainable_report

__all__ = ["trainable_footprint", "training_state_bytes"]

# A classification head's size depends on its labels; the table assumes a binary task.
_PLACEHOLDER_OPTIONS = {"head": {"labels": ["negative", "positive"]}}


def training_state_bytes(trainable_bytes: int) -> int:
    """Weights + gradients + AdamW's two moments of the trainable parameters."""
    return 4 * trainable_bytes


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def trainable_footprint(spec: str) -> list[dict]:
    from tqdm.auto import tqdm

    from ..models import load_model

    base = load_model(spec, device="cpu", for_training=True)
    rows = []
    for name in tqdm(method_names(), desc="methods", leave=False):
        method = get_method(name)
        cfg = build_method_config(method, _PLACEHOLDER_OPTIONS.get(name, {}))
        options = method.load_options(cfg)
        model = (load_model(spec, device="cpu", for_training=True, **options).model if options
                 else copy.deepcopy(base.model))
        adapted = method.apply(model, cfg)
        report = trainable_report(adapted)
        rows.append({"name": name, "description": method.description, "trainable": report.trainable,
                     "total": report.total, "percent": report.percent,
                     "memory": _mib(training_state_bytes(report.trainable_bytes))})
        del model, adapted
    return rows
