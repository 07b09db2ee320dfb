"""The one evaluator: every "score this model on these records" in affina goes through here (the
training recipe's before/after, `affina eval`, `affina promote`, `affina select`).

It asks the opened model's method what its task is (`Method.task`): a model that outputs text is
scored by loss on the reply tokens plus greedy-generation metrics, stopping on the model's own
stop tokens; a model that outputs labels is scored by classification metrics. Preference pairs (the records' kind) are scored by which reply the
model gives more probability (evaluate/preference.py). Settings default to
the run's own config (max length, generation budget, batch size), never to constants here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.records import Record
from ..errors import ConfigError
from .metrics import check_metric_names, parse_json_object
from .preference import score_preferences
from .report import classify_records, evaluate_records

__all__ = ["EvalSettings", "evaluate_model", "default_metrics", "flat_scores"]


@dataclass(frozen=True)
class EvalSettings:
    metrics: tuple[str, ...] | None = None  # None: chosen from the task and the data
    max_length: int = 1024
    max_new_tokens: int = 128
    batch_size: int = 16
    train_on_prompt: bool = False
    reward_beta: float | None = None  # β of the implicit rewards on preference pairs (method.beta)

    @classmethod
    def of_run_config(cls, cfg, **overrides) -> "EvalSettings":
        """The evaluation settings a run was trained and evaluated with (its `config.yaml`)."""
        settings = cls(metrics=tuple(cfg.eval.metrics) if cfg.eval.metrics else None,
                       max_length=cfg.data.max_length, max_new_tokens=cfg.eval.max_new_tokens,
                       batch_size=cfg.eval.batch_size, train_on_prompt=cfg.data.train_on_prompt,
                       reward_beta=_method_beta(cfg))
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def of_run(cls, run_dir, **overrides) -> "EvalSettings":
        """A run's own settings (its saved config), or the defaults when `run_dir` is None or
        has no config; `overrides` that are not None win either way."""
        from ..record import read_run_config

        cfg = read_run_config(run_dir) if run_dir is not None else None
        if cfg is None:
            return replace(cls(), **{k: v for k, v in overrides.items() if v is not None})
        return cls.of_run_config(cfg, **overrides)


def _method_beta(cfg) -> float | None:
    """The run's `method.beta` with its method's default filled in (preference methods), or None."""
    from ..methods import build_method_config, get_method

    try:
        return getattr(build_method_config(get_method(cfg.method.name), dict(cfg.method.options)), "beta", None)
    except Exception:  # an unknown method or bad options: validated elsewhere, not here
        return None


def default_metrics(records: list[Record], task=None) -> list[str]:
    """Metrics that suit the task and the data: classification, JSON extraction or free text."""
    if task is not None and task.default_metrics:
        return list(task.default_metrics)
    if any(r.kind == "label" for r in records):
        return ["accuracy", "macro_f1"]
    replies = [r.messages[-1]["content"] for r in records
               if r.messages and r.messages[-1]["role"] == "assistant"]
    if replies and all(parse_json_object(t) is not None for t in replies[:50]):
        return ["json_valid", "json_fields", "exact_match"]
    return ["exact_match", "token_f1", "rouge_l", "chrf", "bleu"]


def evaluate_model(opened, records: list[Record], settings: EvalSettings = EvalSettings(), *,
                   label: str = "model", shots: list[Record] | None = None) -> dict:
    """Scores and per-example predictions of one opened model (`affina.runs.OpenedModel`)."""
    task = opened.task
    if records and all(r.kind == "preference" for r in records):
        # Held-out pairs are scored by which reply the model prefers, whatever method made it.
        if shots:
            raise ConfigError("preference pairs are scored by log-probability; they take no few-shot examples")
        return score_preferences(opened.model, opened.tokenizer, records, max_length=settings.max_length,
                                 batch_size=settings.batch_size, label=label, beta=settings.reward_beta)
    metrics = list(settings.metrics) if settings.metrics is not None else default_metrics(records, task)
    check_metric_names(metrics)
    if task.output == "label":
        if shots:
            raise ConfigError(f"{opened.ref} is a classifier: it takes no few-shot examples")
        return classify_records(opened, records, metrics=metrics, batch_size=settings.batch_size,
                                max_length=settings.max_length, label=label)
    return evaluate_records(opened.model, opened.tokenizer, records, metrics=metrics,
                            max_length=settings.max_length, max_new_tokens=settings.max_new_tokens,
                            batch_size=settings.batch_size, train_on_prompt=settings.train_on_prompt,
                            label=label, shots=shots, stop_ids=opened.stop_ids)


def flat_scores(result: dict | None) -> dict | None:
    """{measure: value}: loss and perplexity beside the metrics of one evaluation result."""
    if not result:
        return None
    out = {k: result[k] for k in ("loss", "perplexity") if k in result}
    out.update(result.get("metrics", {}))
    return out
