"""Generation metrics: each maps (prediction, reference) to a score in [0, 1]; a run's score is
the mean over examples."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Callable

__all__ = ["METRICS", "exact_match", "token_f1", "json_valid", "json_fields", "parse_json_object",
           "score_predictions"]


def _normalise(text: str) -> str:
    return " ".join(text.strip().split()).casefold()


def exact_match(prediction: str, reference: str) -> float:
    """1 when the texts agree after trimming, collapsing whitespace and case folding."""
    return float(_normalise(prediction) == _normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over whitespace tokens (bag of words)."""
    p, r = _normalise(prediction).split(), _normalise(reference).split()
    if not p and not r:
        return 1.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def parse_json_object(text: str) -> dict | None:
    """The JSON object in a model's output: the whole text, or the first {...} block in it."""
    text = text.strip()
    candidates = [text]
    match = re.search(r"\{.*\}", text, flags=re.S)
    if match:
        candidates.append(match.group(0))
    for c in candidates:
        try:
            value = json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    return None


def json_valid(prediction: str, reference: str) -> float:
    """1 when the output contains a parseable JSON object."""
    return float(parse_json_object(prediction) is not None)


def _same_value(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, str) and isinstance(b, str):
        return _normalise(a) == _normalise(b)
    return a == b


def json_fields(prediction: str, reference: str) -> float:
    """Share of the reference object's fields that the predicted object has with the same value
    (numbers compared numerically, strings case- and whitespace-insensitively)."""
    ref = parse_json_object(reference)
    if not ref:
        return exact_match(prediction, reference)
    pred = parse_json_object(prediction) or {}
    return sum(k in pred and _same_value(pred[k], v) for k, v in ref.items()) / len(ref)


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "json_valid": json_valid,
    "json_fields": json_fields,
}


def score_predictions(predictions: list[str], references: list[str], names: list[str]) -> dict[str, float]:
    from ..errors import ConfigError

    out = {}
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"unknown metric '{name}' in eval.metrics; choose from: {', '.join(METRICS)}")
        fn = METRICS[name]
        scores = [fn(p, r) for p, r in zip(predictions, references)]
        out[name] = sum(scores) / max(1, len(scores))
    return out
