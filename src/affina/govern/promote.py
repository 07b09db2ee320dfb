"""Eval-gated promotion: move an alias to a version only when it is not worse.

The candidate, the version currently holding the alias, and the base model are evaluated on the
evaluation set registered with the model name. Each gate looks at those results and passes or
refuses; the alias moves only when every gate passes (or `force`, recorded as forced). Gates
are pluggable: `register_gate` adds one.

The `bias` gate compares the candidate's bias figures (affina.bias: CrowS-Pairs, BBQ, StereoSet,
the organisation's probes) with the incumbent's, or the base model's where there is no
incumbent, on the same items, and refuses a rise beyond `bias_margin` whose bootstrap interval
excludes zero. The suites are the ones asked for (`bias=`), else those the candidate was last
scored on by `affina bias` (its `eval/bias.json`); with neither, it passes and says so.

are pluggable: `register_gate` adds one (bias deltas, ...). `forgetting` re-scores a continued
candidate (train.continue_from) on every earlier evaluation set in its run record against the
incumbent (else the model it continued from) and refuses a regression beyond its margin.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import AffinaError
from ..paths import affina_home
from .registry import (TAG_METRIC, RegisteredVersion, _client, check_alias, eval_data_of, lookup,
                       parse_ref, record_alias_event, resolve_ref)

__all__ = ["Gate", "GateResult", "PromotionContext", "MetricGate", "BiasGate", "ForgettingGate", "register_gate",
           "GATES", "promote", "LOWER_IS_BETTER"]

LOWER_IS_BETTER = {"loss", "perplexity"}


@dataclass
class GateResult:
    gate: str
    passed: bool
    detail: str


@dataclass
class PromotionContext:
    candidate: RegisteredVersion
    incumbent: RegisteredVersion | None
    alias: str
    metric: str
    margin: float
    results: dict[str, dict] = field(default_factory=dict)  # "candidate" / "incumbent" / "base"
    # the bias comparison (see `_measure_bias`), None when no suites were asked for or recorded
    bias: dict | None = None
    bias_margin: float = 0.0
    settings: object = None  # the EvalSettings every model is scored with
    forgetting_margin: float | None = None  # None: `margin`
    forgetting: list[dict] = field(default_factory=list)  # per earlier set, by ForgettingGate

    def score(self, who: str) -> float | None:
        r = self.results.get(who)
        if not r:
            return None
        return r.get(self.metric, r.get("metrics", {}).get(self.metric))


class Gate(Protocol):
    name: str

    def check(self, ctx: PromotionContext) -> GateResult: ...


class MetricGate:
    """The candidate may trail the incumbent on the primary metric by at most `margin`."""

    name = "metric"

    def check(self, ctx: PromotionContext) -> GateResult:
        cand = ctx.score("candidate")
        if cand is None:
            return GateResult(self.name, False, f"the candidate has no '{ctx.metric}' score")
        other_name = "incumbent" if ctx.incumbent is not None else "base"
        other = ctx.score(other_name)
        if other is None:
            return GateResult(self.name, True, f"nothing to compare against; {ctx.metric}={cand:.4f}")
        lower = ctx.metric in LOWER_IS_BETTER
        worse_by = (cand - other) if lower else (other - cand)
        passed = worse_by <= ctx.margin
        direction = "lower" if lower else "higher"
        return GateResult(self.name, passed,
                          f"{ctx.metric} ({direction} is better): candidate {cand:.4f} vs {other_name} "
                          f"{other:.4f}; worse by {max(worse_by, 0):.4f}, margin {ctx.margin:.4f}")


class BiasGate:
    """No overall bias figure of the candidate may rise above the incumbent's (or the base's)
    by more than `bias_margin` points with a bootstrap interval that excludes zero."""

    name = "bias"

    def check(self, ctx: PromotionContext) -> GateResult:
        if ctx.bias is None:
            return GateResult(self.name, True, "not measured: pass --bias-suite/--bias-probes, or "
                                               "score the run with `affina bias` first")
        worse, seen = [], []
        for d in ctx.bias["deltas"]:
            text = (f"{d['suite']} {d['figure']} {d['delta']:+.1f} "
                    f"[{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]" if d["delta"] is not None
                    else f"{d['suite']} {d['figure']} n/a")
            seen.append(text)
            if d["delta"] is not None and d["delta"] > ctx.bias_margin and d["flagged"]:
                worse.append(text)
        against = ctx.bias["against"]
        if worse:
            return GateResult(self.name, False, f"bias rose over the {against} beyond the margin "
                              f"{ctx.bias_margin:g}: " + "; ".join(worse))
        return GateResult(self.name, True, f"no bias figure rose over the {against} beyond the "
                          f"margin {ctx.bias_margin:g}: " + "; ".join(seen))

class ForgettingGate:
    """A continued candidate may trail the incumbent (else the model it continued from) on each
    earlier evaluation set by at most the forgetting margin; a set that is gone or changed
    refuses, since forgetting on it cannot be checked."""

    name = "forgetting"

    def check(self, ctx: PromotionContext) -> GateResult:
        from ..data.loading import file_sha256, load_records
        from ..record import read_record

        continual = read_record(ctx.candidate.run_dir).continual or {}
        sets = continual.get("earlier_eval") or []
        if not sets:
            return GateResult(self.name, True, "not a continued run: no earlier evaluation sets")
        margin = ctx.margin if ctx.forgetting_margin is None else ctx.forgetting_margin
        if ctx.incumbent is not None:
            reference, who = ctx.incumbent.run_dir, ctx.incumbent.ref
        else:
            reference, who = Path(continual["run_dir"]), f"{continual['from']} (continued from)"
        records = []
        for s in sets:
            path = Path(s["path"])
            if not path.is_file() or file_sha256(path) != s["sha256"]:
                return GateResult(self.name, False, f"earlier evaluation set {path} is gone or changed "
                                  "since training; forgetting on it cannot be checked")
            records.append(load_records([str(path)]).records)
        cand = _evaluate_sets(str(ctx.candidate.run_dir), records, ctx.settings, "candidate")
        ref = _evaluate_sets(str(reference), records, ctx.settings, "reference")
        regressed, parts = [], []
        for s, c, r in zip(sets, cand, ref):
            metric = ctx.metric if ctx.metric in c and ctx.metric in r else "loss"
            lower = metric in LOWER_IS_BETTER
            worse_by = (c[metric] - r[metric]) if lower else (r[metric] - c[metric])
            row = {"path": s["path"], "origin": s.get("origin"), "metric": metric, "candidate": c[metric],
                   "reference": r[metric], "reference_model": who, "worse_by": worse_by,
                   "regressed": worse_by > margin}
            ctx.forgetting.append(row)
            parts.append(f"{Path(s['path']).name}: {metric} {c[metric]:.4f} vs {r[metric]:.4f}, worse by "
                         f"{max(worse_by, 0):.4f}")
            if row["regressed"]:
                regressed.append(Path(s["path"]).name)
        verdict = (f"regresses {', '.join(regressed)} beyond the margin {margin:.4f}" if regressed
                   else f"no earlier set regresses beyond the margin {margin:.4f}")
        return GateResult(self.name, not regressed, f"{verdict} (candidate vs {who}: {'; '.join(parts)})")


GATES: dict[str, Gate] = {}


def register_gate(gate: Gate) -> Gate:
    GATES[gate.name] = gate
    return gate


register_gate(MetricGate())
register_gate(BiasGate())
register_gate(ForgettingGate())


def _evaluate(ref_or_spec: str, records, settings, label: str) -> dict:
    """Flat scores of one model by the one evaluator, or None where its task cannot be scored
    on these records (a base model has no classification head)."""
    from ..evaluate.evaluator import evaluate_model, flat_scores
    from ..runs import open_model

    opened = open_model(ref_or_spec)
    return flat_scores(evaluate_model(opened, records, settings, label=label)) or {}


def _evaluate_sets(ref: str, record_sets: list, settings, label: str) -> list[dict]:
    """Flat scores of one model (opened once) on each of several record sets."""
    from ..evaluate.evaluator import evaluate_model, flat_scores
    from ..runs import open_model

    opened = open_model(ref)
    return [flat_scores(evaluate_model(opened, records, settings, label=label)) or {}
            for records in record_sets]


def _settings_of(run_dir: Path, metric: str):
    """The candidate run's own evaluation settings (max length, generation budget, batch size)."""
    from ..evaluate.evaluator import EvalSettings
    from ..evaluate.metrics import METRICS

    return EvalSettings.of_run(run_dir, metrics=(metric,) if metric in METRICS else ())


def _bias_settings(run_dir: Path, asked):
    """The bias suites to check: those asked for, else those of the run's last `affina bias`."""
    from ..bias import BIAS_JSON, BiasSettings

    if asked is not None:
        return asked
    recorded = Path(run_dir) / "eval" / BIAS_JSON
    if not recorded.is_file():
        return None
    settings = json.loads(recorded.read_text(encoding="utf-8")).get("settings") or {}
    return BiasSettings.from_dict(settings)


def _measure_bias(settings, candidate: str, against: tuple[str, str]) -> dict:
    """Score the candidate and `against` (label, ref) on the same bias items: both models'
    overall figures and the candidate's bias-figure deltas (what the gate reads)."""
    from ..bias import compare, gate_figures, load_items, score_model

    items = load_items(settings)
    scored = {"candidate": score_model(candidate, items, settings)}
    scored[against[0]] = score_model(against[1], items, settings)
    figures, deltas = compare(items, scored, [("candidate", against[0])], settings)
    return {"settings": settings.to_dict(), "against": against[0], "against_ref": against[1],
            "items": {s: len(v) for s, v in items.items()},
            "figures": [f for f in figures if f["category"] == "all"],
            "deltas": gate_figures(deltas, "candidate", against[0])}


def promote(ref_text: str, alias: str = "champion", *, data: list[str] | None = None,
            margin: float = 0.0, metric: str | None = None, force: bool = False,
            gates: list[str] | None = None, uri: str | None = None, bias=None,
            bias_margin: float = 0.0, forgetting_margin: float | None = None) -> dict:
    """Evaluate and decide; move the alias when allowed. Returns the decision record.
    `bias`: the bias suites the bias gate scores (affina.bias.BiasSettings); `bias_margin`: the
    rise in points that gate tolerates; `forgetting_margin`: the regression on an earlier
    evaluation set the forgetting gate tolerates (None: `margin`)."""
    from ..data.loading import load_records
    from ..evaluate.metrics import METRICS

    check_alias(alias)  # before any evaluation: `7` would be unreachable (`NAME@7` is a version)
    ref = parse_ref(ref_text)
    if ref is None or not ref.is_version:
        raise AffinaError(f"{ref_text!r}: promote an exact version, e.g. NAME@3")
    candidate = resolve_ref(ref_text, uri)  # verifies the candidate's files
    client = _client(uri)
    model_tags = client.get_registered_model(ref.name).tags
    data = data or eval_data_of(model_tags)
    if not data:
        raise AffinaError(f"no evaluation set for {ref.name}: pass --data FILE or register with --eval-data")
    metric = metric or model_tags.get(TAG_METRIC) or "loss"
    if metric not in METRICS and metric not in LOWER_IS_BETTER:
        raise AffinaError(f"unknown metric {metric!r}; choose loss, perplexity or one of: {', '.join(METRICS)}")
    try:
        incumbent = lookup(parse_ref(f"{ref.name}@{alias}"), uri)
    except AffinaError:
        incumbent = None
    if incumbent is not None and incumbent.version == candidate.version:
        raise AffinaError(f"{candidate.ref} already holds {ref.name}@{alias}")
    if incumbent is not None:
        resolve_ref(incumbent.ref, uri)  # a tampered incumbent is no yardstick

    from ..record import read_record
    from ..runs import method_of_record

    records = load_records(data).records
    record = read_record(candidate.run_dir)
    method, _ = method_of_record(record)
    if method.task.output == "label" and metric not in METRICS:
        raise AffinaError(f"{candidate.ref} is a classifier: it is scored by "
                          f"{' or '.join(method.task.default_metrics)}, not {metric}; pass --metric")
    settings = _settings_of(candidate.run_dir, metric)
    names = gates or list(GATES)
    unknown = [g for g in names if g not in GATES]
    if unknown:
        raise AffinaError(f"unknown gate(s): {', '.join(unknown)}; available: {', '.join(GATES)}")
    ctx = PromotionContext(candidate, incumbent, alias, metric, margin, settings=settings,
                           bias_margin=bias_margin, forgetting_margin=forgetting_margin)
    ctx.results["candidate"] = _evaluate(str(candidate.run_dir), records, settings, "candidate")
    if incumbent is not None:
        ctx.results["incumbent"] = _evaluate(str(incumbent.run_dir), records, settings, "incumbent")
    if method.task.compares_base:  # a new classification head has no base to compare with
        ctx.results["base"] = _evaluate(record.base_model.spec, records, settings, "base")
    bias_settings = _bias_settings(candidate.run_dir, bias) if "bias" in names else None
    if bias_settings is not None:
        against = (("incumbent", str(incumbent.run_dir)) if incumbent is not None
                   else ("base", record.base_model.spec))
        ctx.bias = _measure_bias(bias_settings, str(candidate.run_dir), against)

    checks = [GATES[g].check(ctx) for g in names]
    passed = all(c.passed for c in checks)
    moved = passed or force
    decision = {
        "candidate": candidate.ref, "alias": alias,
        "incumbent": incumbent.ref if incumbent else None,
        "decision": "promoted" if passed else ("forced" if force else "refused"),
        "forced": bool(force and not passed), "metric": metric, "margin": margin,
        "data": [str(Path(p).resolve()) for p in data],
        # what every model was evaluated with: the candidate run's own settings
        "settings": {**dataclasses.asdict(settings),
                     "metrics": list(settings.metrics) if settings.metrics else None},
        "results": ctx.results,
        "bias": ctx.bias, "bias_margin": bias_margin,
        "forgetting": ctx.forgetting,
        "forgetting_margin": margin if forgetting_margin is None else forgetting_margin,
        "gates": [c.__dict__ for c in checks], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reasons": [f"{c.gate}: {c.detail}" for c in checks if not c.passed],
    }
    report_dir = affina_home() / "registry" / "reports"
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / f"{ref.name}-v{candidate.version}-{alias}-{int(time.time())}.json"
    report.write_text(json.dumps(decision, indent=1))
    decision["report"] = str(report)
    client.set_model_version_tag(ref.name, str(candidate.version), f"affina.promotion.{alias}",
                                 json.dumps({k: decision[k] for k in ("decision", "forced", "metric",
                                             "margin", "incumbent", "time", "report", "reasons")}))
    if moved:
        client.set_registered_model_alias(ref.name, alias, str(candidate.version))
    record_alias_event(client, ref.name, {
        "kind": "promotion", "alias": alias, "from": incumbent.version if incumbent else None,
        "to": candidate.version if moved else (incumbent.version if incumbent else None),
        "candidate": candidate.version, "decision": decision["decision"], "metric": metric,
        "margin": margin, "report": decision["report"]})
    return decision
