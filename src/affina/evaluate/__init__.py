"""Evaluation: loss-based and generation-based metrics, before/after comparison."""

from .generation import generate_texts
from .loss import evaluate_loss
from .metrics import METRICS, score_predictions
from .report import compare_rows, evaluate_records

__all__ = ["generate_texts", "evaluate_loss", "METRICS", "score_predictions", "evaluate_records",
           "compare_rows"]
