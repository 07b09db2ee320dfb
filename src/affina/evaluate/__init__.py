"""Evaluation: the one evaluator (loss, generation and classification metrics), side-by-side
comparison reports.

Importing this package imports nothing heavy (torch, transformers): names load on first use, so
`affina --help` (which imports `evaluate.commands`) stays fast.
"""

__all__ = ["generate_texts", "evaluate_loss", "METRICS", "CORPUS_METRICS", "check_metric_names",
           "resolve_metric", "score_predictions", "evaluate_records", "compare_rows",
           "compare_models", "default_metrics", "write_report", "EvalSettings", "evaluate_model",
           "flat_scores"]

_HOMES = {"compare_models": "compare", "EvalSettings": "evaluator", "default_metrics": "evaluator",
          "evaluate_model": "evaluator", "flat_scores": "evaluator", "generate_texts": "generation",
          "evaluate_loss": "loss", "CORPUS_METRICS": "metrics", "METRICS": "metrics",
          "check_metric_names": "metrics", "resolve_metric": "metrics",
          "score_predictions": "metrics", "write_report": "output", "compare_rows": "report",
          "evaluate_records": "report"}


def __getattr__(name):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
