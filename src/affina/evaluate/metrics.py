"""Generation metrics, every score in [0, 1].

Per-example metrics map (prediction, reference) to a score and a model's score is their mean;
corpus metrics (BLEU, chrF, macro-F1) score all predictions at once, the way their authors define
them. A user metric is named by dotted path (`package.module:function`) and is per-example unless
the function has `corpus_level = True`, in which case it gets the two lists."""

from __future__ import annotations

import importlib
import json
import math
import re
from collections import Counter
from functools import lru_cache
from typing import Callable

__all__ = ["METRICS", "CORPUS_METRICS", "exact_match", "token_f1", "rouge_l", "accuracy",
           "json_valid", "json_fields", "parse_json_object", "bleu", "chrf", "macro_f1",
           "metric_names", "check_metric_names", "resolve_metric", "score_predictions",
           "score_examples"]


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


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), via Google's `rouge-score`."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def accuracy(prediction: str, reference: str) -> float:
    """Classification accuracy: the predicted label equals the reference label (trimmed,
    case-insensitive). The mean over examples is the accuracy."""
    return exact_match(prediction, reference)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, 4-grams, brevity penalty) / 100."""
    from sacrebleu.metrics import BLEU

    return min(1.0, BLEU().corpus_score(predictions, [references]).score / 100.0)


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2) / 100."""
    from sacrebleu.metrics import CHRF

    return min(1.0, CHRF().corpus_score(predictions, [references]).score / 100.0)


def macro_f1(predictions: list[str], references: list[str]) -> float:
    """Classification macro-F1: the unweighted mean over the reference classes of each class's
    F1, labels compared trimmed and case-insensitive. A predicted label outside the reference
    classes counts as a false positive of no class and a miss of its true class."""
    preds = [_normalise(p) for p in predictions]
    refs = [_normalise(r) for r in references]
    scores = []
    for label in sorted(set(refs)):
        tp = sum(p == label and r == label for p, r in zip(preds, refs))
        fp = sum(p == label and r != label for p, r in zip(preds, refs))
        fn = sum(p != label and r == label for p, r in zip(preds, refs))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


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
    "rouge_l": rouge_l,
    "accuracy": accuracy,
}

CORPUS_METRICS: dict[str, Callable[[list[str], list[str]], float]] = {
    "bleu": bleu,
    "chrf": chrf,
    "macro_f1": macro_f1,
}


def metric_names() -> list[str]:
    return [*METRICS, *CORPUS_METRICS]


def _is_dotted(name: str) -> bool:
    return ":" in name or "." in name


def resolve_metric(name: str) -> tuple[Callable, bool]:
    """(function, corpus_level) for a built-in name or a `package.module:function` path."""
    from ..errors import ConfigError

    if name in METRICS:
        return METRICS[name], False
    if name in CORPUS_METRICS:
        return CORPUS_METRICS[name], True
    if not _is_dotted(name):
        raise ConfigError(f"unknown metric '{name}'; choose from: {', '.join(metric_names())}, "
                          "or give your own as package.module:function")
    module_name, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"metric '{name}': cannot import module '{module_name}' ({e}); "
                          "is it installed or on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"metric '{name}': module '{module_name}' has no function '{attr}'")
    return fn, bool(getattr(fn, "corpus_level", False))


def check_metric_names(names: list[str]) -> None:
    """Raise ConfigError for a name that is neither built in nor an importable dotted path."""
    for name in names:
        resolve_metric(name)


def score_examples(predictions: list[str], references: list[str], names: list[str]) -> dict[str, list[float]]:
    """Per-example scores of the per-example metrics (corpus metrics have none)."""
    out = {}
    for name in names:
        fn, corpus = resolve_metric(name)
        if not corpus:
            out[name] = [float(fn(p, r)) for p, r in zip(predictions, references)]
    return out


def score_predictions(predictions: list[str], references: list[str], names: list[str]) -> dict[str, float]:
    """Each metric's score over all examples: the mean of per-example scores, or the corpus score."""
    from ..errors import ConfigError

    out = {}
    per_example = score_examples(predictions, references, names)
    for name in names:
        if name in per_example:
            scores = per_example[name]
            out[name] = sum(scores) / max(1, len(scores))
        else:
            fn, _ = resolve_metric(name)
            value = fn(list(predictions), list(references))
            if not isinstance(value, (int, float)):
                raise ConfigError(f"metric '{name}' returned {type(value).__name__}, expected a number")
            out[name] = float(value)
    return out
