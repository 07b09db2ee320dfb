"""`affina bias`: bias suites scored on several models side by side, with deltas against the base.

load the items (each suite, `--limit` stratified by category) → for each REF and each run's
base model: open it, score every suite → figures with bootstrap intervals, per category →
deltas of each run against its base (paired bootstrap; flagged where the interval excludes 0)
→ report.json-like `bias.json` + `bias.md` + `items.jsonl` in the report directory, each run's
own `eval/bias.json`, MLflow metrics → the summary table.

The shape of `bias.json` (schema "affina.bias/1", documented in docs/bias.md):
  settings, items {suite: {n, categories}}, models [{label, ref, base, seconds}],
  figures [{model, suite, figure, category, kind, value, ci, n}],
  deltas  [{model, against, suite, figure, category, kind, delta, ci, n, flagged}]
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..runs import is_run_dir, open_model
from ..ui import info, print_table
from .data import data_files_info, load_probes, load_suite, stratified
from .stats import bootstrap, bootstrap_delta, excludes_zero
from .suites import PUBLIC_SUITES, SUITES

__all__ = ["BiasSettings", "load_items", "score_model", "compare", "measure_bias", "SCHEMA",
           "BIAS_JSON", "gate_figures"]

SCHEMA = "affina.bias/1"
BIAS_JSON = "bias.json"
ALL = "all"


@dataclass
class BiasSettings:
    suites: tuple[str, ...] = PUBLIC_SUITES
    probes: str | None = None  # JSONL of the organisation's own probes (data.load_probes)
    limit: int | None = None  # items per suite, stratified by category
    batch_size: int = 16
    rounds: int = 1000  # bootstrap resamples
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        self.suites = tuple(self.suites)
        # absolute, so that the settings recorded in a run still find the file from elsewhere
        self.probes = str(Path(self.probes).resolve()) if self.probes else None
        unknown = [s for s in self.suites if s not in PUBLIC_SUITES]
        if unknown:
            raise ConfigError(f"unknown bias suite(s): {', '.join(unknown)}; choose from "
                              f"{', '.join(PUBLIC_SUITES)} (your own probes: --probes FILE)")
        if not self.suites and not self.probes:
            raise ConfigError("nothing to score: name a suite (--suite) or a probes file (--probes)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be at least 1")
        if not 0 < self.confidence < 1:
            raise ConfigError("the confidence level must be between 0 and 1")

    @classmethod
    def from_dict(cls, body: dict) -> "BiasSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in names})

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "suites": list(self.suites)}


def load_items(settings: BiasSettings) -> dict[str, list]:
    """Each suite's items (the probes under "probes"), subset by `limit`."""
    items = {name: stratified(load_suite(name), settings.limit, settings.seed) for name in settings.suites}
    if settings.probes:
        items["probes"] = stratified(load_probes(settings.probes), settings.limit, settings.seed)
    return items


def score_model(ref: str, items: dict[str, list], settings: BiasSettings, *, opened=None) -> dict:
    """{suite: {"outcomes", "rows", "seconds"}} for one model (a run directory or a spec)."""
    opened = opened or open_model(ref)
    if opened.task.output != "text":
        raise ConfigError(f"{ref} is a classifier (it answers with a label): the bias suites score "
                          "the likelihood of text, so they need a generative model or run")
    out = {}
    for name, suite_items in items.items():
        start = time.perf_counter()
        outcomes, rows = SUITES[name].score(opened.model, opened.tokenizer, suite_items, settings.batch_size)
        out[name] = {"outcomes": outcomes, "rows": rows, "seconds": round(time.perf_counter() - start, 2)}
    return out


def _subsets(items: list) -> dict[str, np.ndarray]:
    """Index arrays: all items, then each category."""
    cats = np.array([it.category for it in items])
    out = {ALL: np.arange(len(items))}
    out.update({c: np.flatnonzero(cats == c) for c in sorted(set(cats.tolist()))})
    return out


def _kind(suite: str, figure: str) -> str:
    return "bias" if figure in SUITES[suite].bias_figures else "quality"


def compare(items: dict[str, list], scored: dict[str, dict], pairs: list[tuple[str, str]],
            settings: BiasSettings) -> tuple[list[dict], list[dict]]:
    """(figures, deltas): every figure of every scored model, and of each (model, against) pair
    the paired difference. `scored`: label → score_model's result."""
    opts = dict(rounds=settings.rounds, seed=settings.seed, confidence=settings.confidence)
    figures, deltas = [], []
    for suite, suite_items in items.items():
        figure_fn, count_fn = SUITES[suite].figures, SUITES[suite].counts
        for category, idx in _subsets(suite_items).items():
            # which items a figure uses depends on the items, not on the model's answers
            first = next(iter(scored.values()))[suite]["outcomes"]
            counts = count_fn(first, idx) if count_fn else None
            for label, result in scored.items():
                for name, fig in bootstrap(figure_fn, result[suite]["outcomes"], idx, counts=counts,
                                           **opts).items():
                    figures.append({"model": label, "suite": suite, "figure": name, "category": category,
                                    "kind": _kind(suite, name), **fig})
            for model, against in pairs:
                diff = bootstrap_delta(figure_fn, scored[model][suite]["outcomes"],
                                       scored[against][suite]["outcomes"], idx, counts=counts, **opts)
                for name, d in diff.items():
                    deltas.append({"model": model, "against": against, "suite": suite, "figure": name,
                                   "category": category, "kind": _kind(suite, name), **d,
                                   "flagged": d["delta"] is not None and excludes_zero(d["ci"])})
    return figures, deltas


def gate_figures(deltas: list[dict], model: str, against: str) -> list[dict]:
    """The overall bias-figure deltas of `model` against `against` (what promotion checks)."""
    return [d for d in deltas if d["model"] == model and d["against"] == against
            and d["category"] == ALL and d["kind"] == "bias"]


def measure_bias(refs: list[str], settings: BiasSettings, *, labels: list[str] | None = None,
                 out_dir: Path | None = None, track: bool = True) -> dict:
    """Score every REF (a run directory or a model spec) and the base model of each run; write
    the reports; return the report dict (with "paths")."""
    from ..evaluate.compare import ref_label
    from ..record import read_record

    if not refs:
        raise ConfigError("give at least one run directory or model spec to score")
    items = load_items(settings)
    labels = list(labels or [ref_label(r) for r in refs])
    models = [{"label": lab, "ref": str(ref), "base": None} for ref, lab in zip(refs, labels)]
    # each run is compared with its base model, scored once even when several runs share it
    for entry in list(models):
        if is_run_dir(entry["ref"]):
            spec = read_record(Path(entry["ref"])).base_model.spec
            base = next((m for m in models if m["ref"] == spec or m["label"] == ref_label(spec)), None)
            if base is None:
                base = {"label": _unique(f"base:{ref_label(spec)}", models), "ref": spec, "base": None}
                models.insert(0, base)
            entry["base"] = base["label"]
    info("bias suites: " + ", ".join(f"{s} ({len(v)} items)" for s, v in items.items()))

    scored = {}
    for m in models:
        info(f"scoring {m['ref']}")
        start = time.perf_counter()
        scored[m["label"]] = score_model(m["ref"], items, settings)
        m["seconds"] = {s: r["seconds"] for s, r in scored[m["label"]].items()}
        m["total_seconds"] = round(time.perf_counter() - start, 2)
        gc.collect()
    pairs = [(m["label"], m["base"]) for m in models if m["base"]]
    figures, deltas = compare(items, scored, pairs, settings)
    report = {"schema": SCHEMA, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "settings": {**settings.to_dict(), "data": data_files_info()},
              "items": {s: {"n": len(v), "categories": _counts(v)} for s, v in items.items()},
              "models": models, "figures": figures, "deltas": deltas}

    out_dir = Path(out_dir or Path("reports") / f"bias-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    paths = _write_report(report, items, scored, out_dir)
    for m in models:
        if m["base"] and is_run_dir(m["ref"]):
            _record_in_run(Path(m["ref"]), report, m, out_dir, track)
    _print_summary(report)
    info(f"report: {paths['markdown']}, {paths['json']}; per-item scores: {paths['items']}")
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


def _unique(label: str, models: list[dict]) -> str:
    taken = {m["label"] for m in models}
    out, n = label, 1
    while out in taken:
        n += 1
        out = f"{label}#{n}"
    return out


def _counts(items: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it.category] = out.get(it.category, 0) + 1
    return dict(sorted(out.items()))


def run_view(report: dict, label: str) -> dict:
    """The part of a report about one run: it and its base, and its deltas."""
    model = next(m for m in report["models"] if m["label"] == label)
    keep = {label, model["base"]}
    return {**report, "run": label, "models": [m for m in report["models"] if m["label"] in keep],
            "figures": [f for f in report["figures"] if f["model"] in keep],
            "deltas": [d for d in report["deltas"] if d["model"] == label]}


def _record_in_run(run_dir: Path, report: dict, model: dict, out_dir: Path, track: bool) -> None:
    """The run's own evaluation record (`eval/bias.json`) and its MLflow run's metrics."""
    from ..evaluate.tracking import log_eval_to_run
    from ..record import read_record

    view = run_view(report, model["label"])
    target = run_dir / "eval" / BIAS_JSON
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(view, indent=1) + "\n", encoding="utf-8")
    if not track:
        return
    scores = {f"{f['suite']}_{f['figure']}": f["value"] for f in view["figures"]
              if f["model"] == model["label"] and f["category"] == ALL and f["value"] is not None}
    scores.update({f"{d['suite']}_{d['figure']}_delta": d["delta"] for d in view["deltas"]
                   if d["category"] == ALL and d["delta"] is not None})
    log_eval_to_run(run_dir, read_record(run_dir), scores, out_dir, "bias")


def _fmt(value, ci) -> str:
    if value is None:
        return "-"
    lo, hi = ci
    return f"{value:.1f} [{lo:.1f}, {hi:.1f}]" if lo is not None else f"{value:.1f}"


def summary_rows(report: dict, category: str = ALL) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (suite, figure), a column per model and per delta."""
    labels = [m["label"] for m in report["models"]]
    pairs = [(m["label"], m["base"]) for m in report["models"] if m["base"]]
    header = ["suite", "figure", "n"] + labels + [f"Δ {a} − {b}" for a, b in pairs]
    fig = {(f["model"], f["suite"], f["figure"]): f for f in report["figures"] if f["category"] == category}
    dlt = {(d["model"], d["against"], d["suite"], d["figure"]): d for d in report["deltas"]
           if d["category"] == category}
    rows = []
    for suite in report["items"]:
        names = list(dict.fromkeys(f["figure"] for f in report["figures"]
                                   if f["suite"] == suite and f["category"] == category))
        for name in names:
            first = fig.get((labels[0], suite, name), {})
            row = [suite, name, str(first.get("n", "-"))]  # items the figure is computed on
            row += [_fmt(fig[(lab, suite, name)]["value"], fig[(lab, suite, name)]["ci"]) for lab in labels]
            for a, b in pairs:
                d = dlt[(a, b, suite, name)]
                cell = "-" if d["delta"] is None else f"{d['delta']:+.1f} [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]"
                row.append(cell + (" *" if d["flagged"] else ""))
            rows.append(row)
    return header, rows


def _print_summary(report: dict) -> None:
    header, rows = summary_rows(report)
    conf = int(report["settings"]["confidence"] * 100)
    print_table(f"bias figures, all categories ({conf}% bootstrap intervals; * = the interval of "
                "the delta excludes 0)", header, rows)
    seconds = [[m["label"]] + [f"{m['seconds'].get(s, 0):.0f}" for s in report["items"]]
               + [f"{m['total_seconds']:.0f}"] for m in report["models"]]
    print_table("seconds per model", ["model"] + list(report["items"]) + ["total (with loading)"], seconds)


def _write_report(report: dict, items: dict, scored: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / BIAS_JSON, "markdown": out_dir / "bias.md", "items": out_dir / "items.jsonl"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    with paths["items"].open("w", encoding="utf-8") as f:
        for label, result in scored.items():
            for suite, r in result.items():
                for row in r["rows"]:
                    f.write(json.dumps({"model": label, "suite": suite, **row}, ensure_ascii=False) + "\n")
    paths["markdown"].write_text(_markdown(report), encoding="utf-8")
    return paths


def _markdown(report: dict) -> str:
    conf = int(report["settings"]["confidence"] * 100)
    suites = ", ".join(f"{s} ({v['n']} items)" for s, v in report["items"].items())
    lines = ["# Bias report", "",
             f"Suites: {suites}. "
             f"Intervals: {conf}% bootstrap ({report['settings']['rounds']} resamples); a delta is "
             "marked * where its interval excludes 0.", ""]
    categories = sorted({f["category"] for f in report["figures"]} - {ALL})
    for category in [ALL] + categories:
        header, rows = summary_rows(report, category)
        rows = [r for r in rows if any(c != "-" for c in r[3:])]
        if not rows:
            continue
        lines += [f"## {category}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += ["## Models", ""]
    lines += [f"- **{m['label']}**: `{m['ref']}`" + (f", compared with {m['base']}" if m["base"] else "")
              + f"; {m['total_seconds']:.0f} s" for m in report["models"]]
    return "\n".join(lines) + "\n"
