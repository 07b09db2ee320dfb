"""Evaluation: loss-based and generation-based metrics, side-by-side comparison reports, and
base-model selection."""

from .compare import compare_models, default_metrics
from .generation import generate_texts
from .loss import evaluate_loss
from .metrics import CORPUS_METRICS, METRICS, check_metric_names, resolve_metric, score_predictions
from .output import write_report
from .report import compare_rows, evaluate_records
from .select import select_base_model

__all__ = ["generate_texts", "evaluate_loss", "METRICS", "CORPUS_METRICS", "check_metric_names",
           "resolve_metric", "score_predictions", "evaluate_records", "compare_rows",
           "compare_models", "default_metrics", "write_report", "select_base_model"]
