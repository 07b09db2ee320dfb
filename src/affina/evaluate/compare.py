"""`affina eval`: several models or runs evaluated side by side on the same held-out data.

load the data (and the few-shot examples) → for each REF: open it, score it zero-shot (and
k-shot) → write report.json / report.md / predictions.jsonl → log to each run's tracking record
→ print the comparison table.
"""

from __future__ import annotations

import gc
from datetime import datetime
from pathlib import Path

from ..data.loading import dataset_fingerprint, load_records
from ..errors import ConfigError
from ..runs import is_run_dir, open_model
from ..ui import info, print_table, warn
from .evaluator import EvalSettings, default_metrics, evaluate_model, flat_scores
from .fewshot import pick_shots
from .metrics import check_metric_names
from .output import write_report
from .report import compare_rows
from .tracking import log_eval_to_run

__all__ = ["compare_models", "default_metrics", "ref_label"]


def ref_label(ref: str) -> str:
    """A short column name: a run's directory name, a model file or directory's name, or the spec."""
    p = Path(ref)
    return p.name if (p.exists() and p.name) else ref


def compare_models(refs: list[str], data: list[str], *, metrics: list[str] | None = None,
                   out_dir: Path | None = None, fewshot: int = 0, shots_file: list[str] | None = None,
                   limit: int | None = None, max_length: int | None = None,
                   max_new_tokens: int | None = None, batch_size: int | None = None,
                   track: bool = True, labels: list[str] | None = None) -> dict:
    """Evaluate every REF (a run directory or a model spec) on `data`; returns {"results",
    "paths", "data"}. `labels`: column names (default: from the refs). `max_length`,
    `max_new_tokens`, `batch_size`: unset, a run is scored with its own config's values and a
    model spec with EvalSettings' defaults."""
    if not refs:
        raise ConfigError("give at least one model spec or run directory to evaluate")
    if fewshot < 0:
        raise ConfigError("--fewshot must be >= 0")
    loaded = load_records(data)
    for message in loaded.warnings:
        warn(message)
    records = loaded.records
    if shots_file:
        shots = pick_shots(load_records(shots_file).records, fewshot)[0]
    else:
        # Shots taken from the evaluation file are left out of the scored set for every model.
        shots, records = pick_shots(records, fewshot)
    if fewshot and len(shots) < fewshot:
        raise ConfigError(f"--fewshot {fewshot}: only {len(shots)} examples with a reply available")
    records = records[:limit] if limit else records
    if not records:
        raise ConfigError(f"nothing to evaluate in {', '.join(data)} after taking {fewshot} few-shot examples")
    metrics = metrics or default_metrics(records)
    check_metric_names(metrics)
    out_dir = Path(out_dir or Path("reports") / f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}")

    labels = _unique(labels or [ref_label(r) for r in refs])
    asked = {"max_length": max_length, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    results, tracked, used = [], [], {}
    for ref, label in zip(refs, labels):
        info(f"evaluating {ref} on {len(records)} examples")
        settings = _settings_for(ref, metrics, asked)
        used[label] = {k: getattr(settings, k) for k in asked}
        opened = open_model(ref)
        # A label head answers with a class, not text: no prompt, so no few-shot column.
        columns = [(label, [])] + ([(f"{label} ({fewshot}-shot)", shots)]
                                   if fewshot and opened.task.output == "text" else [])
        for column, column_shots in columns:
            result = evaluate_model(opened, records, settings, label=column, shots=column_shots)
            result["ref"] = ref
            results.append(result)
            if opened.record is not None:
                tracked.append((ref, opened.record, result))
        del opened
        gc.collect()

    data_info = {"files": [str(p) for p in data], "examples": len(records),
                 "fingerprint": dataset_fingerprint(records),
                 "fewshot": {"k": len(shots), "from": shots_file or "the evaluation data",
                             "lines": [s.line for s in shots]}}
    settings_info = {"metrics": metrics, "per_model": used,
                     "decoding": "greedy"}
    paths = write_report(results, out_dir, data=data_info, settings=settings_info)
    if track:
        name = Path(data[0]).stem
        for ref, record, result in tracked:
            suffix = f"_{result['shots']}shot" if result["shots"] else ""
            if is_run_dir(ref):
                log_eval_to_run(Path(ref), record, flat_scores(result), out_dir, name + suffix)

    header, rows = compare_rows(results)
    print_table(f"evaluation on {len(records)} examples of {', '.join(map(str, data))}", header, rows)
    info(f"report: {paths['markdown']}, {paths['json']}; per-example outputs: {paths['predictions']}")
    return {"results": results, "paths": paths, "data": data_info}


def _settings_for(ref: str, metrics: list[str], asked: dict) -> EvalSettings:
    """A run's own evaluation settings (its config.yaml), overridden by what was asked."""
    return EvalSettings.of_run(ref if is_run_dir(ref) else None, metrics=tuple(metrics), **asked)


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out
