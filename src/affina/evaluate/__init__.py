"""Evaluation: the one evaluator (loss, generation and classification metrics), side-by-side
comparison reports."""

from .compare import compare_models
from .evaluator import EvalSettings, default_metrics, evaluate_model, flat_scores
from .generation import generate_texts
from .loss import evaluate_loss
from .metrics import CORPUS_METRICS, METRICS, check_metric_names, resolve_metric, score_predictions
from .output import write_report
from .report import compare_rows, evaluate_records

__all__ = ["generate_texts", "evaluate_loss", "METRICS", "CORPUS_METRICS", "check_metric_names",
           "resolve_metric", "score_predictions", "evaluate_records", "compare_rows",
           "compare_models", "default_metrics", "write_report", "EvalSettings", "evaluate_model",
           "flat_scores"]
