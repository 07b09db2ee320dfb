"""Bootstrap confidence intervals for the bias figures and for their deltas between models.

A figure is a function of per-item outcomes (arrays aligned with the items) and an index array
of shape (..., n) that picks the items; it reduces over the last axis, so one call evaluates it
on all bootstrap resamples at once. A delta between two models scored on the same items uses
the same resamples for both (a paired bootstrap): the item-to-item variation they share cancels.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["bootstrap", "bootstrap_delta", "excludes_zero"]

Figure = Callable[[dict, np.ndarray], dict]


def _resamples(n: int, rounds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))  # (B, n)


def _interval(samples: np.ndarray, confidence: float) -> list[float | None]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [None, None]
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _value(x) -> float | None:
    x = float(np.asarray(x).reshape(-1)[0])
    return x if np.isfinite(x) else None


def bootstrap(figures: Figure, outcomes: dict, items: np.ndarray, *, rounds: int = 1000,
              seed: int = 0, confidence: float = 0.95, counts: dict | None = None) -> dict[str, dict]:
    """{figure: {"value", "ci": [lo, hi], "n"}} over the items at indices `items`; `n` is the
    number of items, or `counts[figure]` where a figure uses only some of them."""
    point = figures(outcomes, items[None, :])
    samples = figures(outcomes, items[_resamples(len(items), rounds, seed)])
    counts = counts or {}
    return {name: {"value": _value(point[name]), "ci": _interval(np.asarray(samples[name]), confidence),
                   "n": int(counts.get(name, len(items)))} for name in point}


def bootstrap_delta(figures: Figure, candidate: dict, reference: dict, items: np.ndarray, *,
                    rounds: int = 1000, seed: int = 0, confidence: float = 0.95,
                    counts: dict | None = None) -> dict[str, dict]:
    """{figure: {"delta", "ci", "n"}}: candidate minus reference, paired over the same items."""
    point_c, point_r = figures(candidate, items[None, :]), figures(reference, items[None, :])
    picks = items[_resamples(len(items), rounds, seed)]
    samples_c, samples_r = figures(candidate, picks), figures(reference, picks)
    out = {}
    for name in point_c:
        delta = np.asarray(point_c[name]) - np.asarray(point_r[name])
        diffs = np.asarray(samples_c[name]) - np.asarray(samples_r[name])
        out[name] = {"delta": _value(delta), "ci": _interval(diffs, confidence),
                     "n": int((counts or {}).get(name, len(items)))}
    return out


def excludes_zero(ci: list[float | None]) -> bool:
    lo, hi = ci
    return lo is not None and hi is not None and (lo > 0 or hi < 0)
