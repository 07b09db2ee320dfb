"""Drift of one served model: a window of its served traffic against what it was trained on.

Recipe: the model name → its run (a registry reference, a run in the store, or a run directory)
→ the run's training files (`inputs.json`, sha256-checked) → reference prompts and replies;
the request log → the window (the last `window` answered requests for that name, or a time
range) → embeddings (the embedded all-MiniLM-L6-v2) → the figures below, each with its
threshold and both sample sizes → a report.

Input drift (prompts vs training prompts): domain-classifier AUC and MMD on embeddings
(permutation thresholds), prompt length (KS), script mix (total variation), out-of-vocabulary
rate. Output drift (replies vs the model's first served replies, else its training replies):
reply length (KS), refusal/empty rate, reply-embedding MMD. Quality: the mean feedback rating
of the window's requests against earlier feedback.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import AffinaError, ConfigError
from ..methods.embedder import DEFAULT_EMBEDDING_MODEL
from ..record import is_run_dir, read_record
from ..record.datafiles import resolve_inputs
from ..record.feedback import FeedbackStore
from ..record.requestlog import RequestLog
from . import stats

__all__ = ["DriftSettings", "Figure", "DriftReport", "MonitorTarget", "resolve_target",
           "measure_drift", "input_figures", "output_figures", "reference_texts", "prompt_text",
           "load_settings", "FIGURES"]

# Every figure a report holds, in order: (name, group, what it measures).
FIGURES = (
    ("domain_classifier", "input", "ROC AUC of a classifier telling window prompts from training prompts"),
    ("mmd", "input", "MMD² between prompt embeddings (RBF kernel)"),
    ("prompt_length", "input", "KS statistic of prompt lengths (characters)"),
    ("charset_mix", "input", "total variation distance of the prompts' dominant scripts"),
    ("oov_rate", "input", "share of prompt words not in the training vocabulary"),
    ("reply_length", "output", "KS statistic of reply lengths (characters)"),
    ("refusal_rate", "output", "share of empty or refusing replies"),
    ("reply_embedding", "output", "MMD² between reply embeddings"),
    ("feedback_rating", "quality", "mean feedback rating (-1..1) of the window's requests"),
)


def _f(default, help: str):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DriftSettings:
    window: int = _f(200, "Answered requests in a window: the newest N for the model (unless --since/--until).")
    min_samples: int = _f(20, "Fewest window requests (and reference rows) a figure is judged on; fewer: reported, not judged.")
    alpha: float = _f(0.01, "False-alarm rate of each permutation or KS test (its threshold is the null's 1-alpha quantile).")
    permutations: int = _f(100, "Label permutations behind the classifier and MMD thresholds.")
    max_reference: int = _f(500, "Training rows sampled (with `seed`) as the reference.")
    seed: int = _f(0, "Seed for reference sampling, folds and permutations.")
    oov_margin: float = _f(0.10, "Out-of-vocabulary rate above the reference's own held-out rate that counts as drift.")
    charset_margin: float = _f(0.10, "Total variation distance of the script mix that counts as drift.")
    refusal_margin: float = _f(0.10, "Refusal/empty-reply rate above the reference rate that counts as drift.")
    quality_margin: float = _f(0.25, "Drop of the mean feedback rating below earlier feedback that counts as drift.")
    min_feedback: int = _f(5, "Fewest feedback rows on each side for the rating to be judged.")
    drift_on: list = _f(["domain_classifier", "mmd"], "Figures whose flag marks the window as drifted (the retraining policy counts drifted windows).")
    embedding_model: str = _f(DEFAULT_EMBEDDING_MODEL, "Sentence-embedding model: the embedded default or a local directory.")
    alert_webhook: str | None = _f(None, "URL that gets the report summary as JSON (POST) when a window drifts.")
    alert_command: str | None = _f(None, "Command run with the report summary as JSON on stdin when a window drifts.")

    def validate(self) -> "DriftSettings":
        def check(ok, key, expected):
            if not ok:
                raise ConfigError(f"monitor setting '{key}' must be {expected}, got {getattr(self, key)!r}")
        check(self.window >= 2, "window", ">= 2")
        check(self.min_samples >= 5, "min_samples", ">= 5 (the classifier needs examples in each fold)")
        check(0 < self.alpha < 0.5, "alpha", "in (0, 0.5)")
        check(self.permutations >= 20, "permutations", ">= 20")
        check(self.max_reference >= self.min_samples, "max_reference", ">= min_samples")
        for key in ("oov_margin", "charset_margin", "refusal_margin", "quality_margin"):
            check(0 <= getattr(self, key) <= 2, key, "in [0, 2]")
        check(self.min_feedback >= 1, "min_feedback", ">= 1")
        names = {n for n, _, _ in FIGURES}
        check(isinstance(self.drift_on, list) and self.drift_on and set(self.drift_on) <= names,
              "drift_on", "a non-empty list of: " + ", ".join(names))
        return self


def load_settings(path: Path | None = None, overrides: list[str] | None = None) -> DriftSettings:
    """Defaults ← a YAML mapping (`monitor.yaml`) ← `key=value` overrides."""
    import yaml

    from ..config import read_yaml_mapping

    values = read_yaml_mapping(Path(path), "monitor config", "a mapping of settings") if path else {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: use key=value, e.g. --set alpha=0.05")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    known = {f.name: f for f in dataclasses.fields(DriftSettings)}
    settings = DriftSettings()
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown monitor setting {key!r}; settings: {', '.join(known)}")
        default = getattr(settings, key)
        if isinstance(default, bool) or default is None or isinstance(default, str):
            pass
        elif isinstance(default, int) and not isinstance(value, bool) and isinstance(value, (int, float)) \
                and float(value).is_integer():
            value = int(value)
        elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, list) and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if type(value) is not type(default) and default is not None and value is not None:
            raise ConfigError(f"monitor setting {key!r} must be a {type(default).__name__}, got {value!r}")
        setattr(settings, key, value)
    return settings.validate()


@dataclass
class Figure:
    name: str
    group: str
    value: float | None
    threshold: float | None
    flagged: bool | None  # None: not judged (too few samples)
    n_reference: int
    n_window: int
    p_value: float | None = None
    detail: str = ""


@dataclass
class DriftReport:
    model: str
    run_dir: str
    time: str
    window: dict
    reference: dict
    figures: list[Figure]
    drifted: bool | None
    drift_on: list[str]
    shifted: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    alerts: list[dict] = field(default_factory=list)

    def figure(self, name: str) -> Figure | None:
        return next((f for f in self.figures if f.name == name), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, body: dict) -> "DriftReport":
        body = dict(body)
        body["figures"] = [Figure(**f) for f in body.get("figures", [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in names})


# -- what is monitored ------------------------------------------------------------------------


@dataclass
class MonitorTarget:
    name: str  # the model name clients send (what the request log holds)
    run_dir: Path


def resolve_target(model: str, store: Path | None = None) -> MonitorTarget:
    """A served model name → its run: NAME@VERSION|ALIAS through the registry, else a run named
    so in the store, else a run directory (served under its directory name)."""
    from ..govern.registry import lookup, parse_ref

    ref = parse_ref(model)
    if ref is not None and not Path(model).exists():
        return MonitorTarget(model, lookup(ref).run_dir)
    if store is not None and is_run_dir(Path(store) / model):
        return MonitorTarget(model, (Path(store) / model).resolve())
    if is_run_dir(model):
        return MonitorTarget(Path(model).resolve().name, Path(model).resolve())
    raise AffinaError(f"{model}: not a registered NAME@VERSION|ALIAS, a run in the store "
                      f"{store or '(none given)'}, or a run directory; pass the name clients "
                      "use and --store DIR")


def _record_prompt(record) -> str:
    if record.messages:
        return "\n".join(m["content"] for m in record.messages[:-1] if m["role"] == "user") or \
            "\n".join(m["content"] for m in record.messages if m["role"] == "user")
    if record.prompt:
        return "\n".join(m["content"] for m in record.prompt if m["role"] == "user")
    return record.text or ""


def _record_reply(record) -> str | None:
    if record.messages and record.messages[-1]["role"] == "assistant":
        return record.messages[-1]["content"]
    return record.chosen


def reference_texts(run_dir: Path, settings: DriftSettings) -> tuple[list[str], list[str], list[dict]]:
    """(prompts, replies, files) of the run's training data, at most `max_reference` rows
    drawn with the seed. The files are the run's own, verified against their sha256."""
    from ..data.loading import load_records
    from ..record.datafiles import read_inputs

    inputs = resolve_inputs(run_dir)
    paths = inputs.get("train", []) + inputs.get("mix", [])
    if not paths:
        raise AffinaError(f"{run_dir}: no training data recorded (inputs.json); cannot tell drift")
    records = load_records(paths).records
    rng = np.random.default_rng(settings.seed)
    if len(records) > settings.max_reference:
        records = [records[i] for i in sorted(rng.choice(len(records), settings.max_reference, replace=False))]
    prompts = [_record_prompt(r) for r in records]
    replies = [r for r in (_record_reply(r) for r in records) if r is not None]
    files = [{"path": f.path, "role": f.role, "sha256": f.sha256} for f in read_inputs(run_dir) or []
             if f.role in ("train", "mix")]
    return prompts, replies, files


def prompt_text(prompt) -> str | None:
    """The user's words in a logged prompt: a chat's user messages, or a completion's prompt."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        parts = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return None


# -- figures ----------------------------------------------------------------------------------


def _judged(n_ref: int, n_win: int, settings: DriftSettings) -> bool:
    return n_ref >= settings.min_samples and n_win >= settings.min_samples


def input_figures(ref_texts: list[str], win_texts: list[str], ref_emb: np.ndarray,
                  win_emb: np.ndarray, settings: DriftSettings) -> tuple[list[Figure], np.ndarray | None]:
    """The input-drift figures, and the classifier's per-window-prompt scores."""
    nr, nw = len(ref_texts), len(win_texts)
    judged = _judged(nr, nw, settings)
    out, scores = [], None
    if judged:
        clf = stats.domain_classifier(ref_emb, win_emb, alpha=settings.alpha,
                                      permutations=settings.permutations, seed=settings.seed)
        scores = clf.scores
        out.append(Figure("domain_classifier", "input", clf.value, clf.threshold, clf.value > clf.threshold,
                          nr, nw, clf.p_value, "threshold: permutation null's 1-alpha quantile"))
        m = stats.mmd(ref_emb, win_emb, alpha=settings.alpha, permutations=settings.permutations,
                      seed=settings.seed)
        out.append(Figure("mmd", "input", m.value, m.threshold, m.value > m.threshold, nr, nw, m.p_value,
                          "threshold: permutation null's 1-alpha quantile"))
    else:
        out += [Figure(n, "input", None, None, None, nr, nw, detail="too few samples")
                for n in ("domain_classifier", "mmd")]
    ref_len, win_len = [len(t) for t in ref_texts], [len(t) for t in win_texts]
    if nr and nw:
        k = stats.ks(ref_len, win_len, alpha=settings.alpha)
        out.append(Figure("prompt_length", "input", k.value, k.threshold, k.value > k.threshold if judged else None,
                          nr, nw, k.p_value, f"mean chars {np.mean(ref_len):.0f} (reference) vs "
                          f"{np.mean(win_len):.0f} (window)"))
        ref_mix, win_mix = stats.script_mix(ref_texts), stats.script_mix(win_texts)
        tv = stats.total_variation(ref_mix, win_mix)
        out.append(Figure("charset_mix", "input", tv, settings.charset_margin,
                          tv > settings.charset_margin if judged else None, nr, nw,
                          detail="window: " + ", ".join(f"{k} {v:.0%}" for k, v in win_mix.items())))
        base, rate = stats.oov_rates(ref_texts, win_texts, settings.seed)
        out.append(Figure("oov_rate", "input", rate, base + settings.oov_margin,
                          rate > base + settings.oov_margin if judged else None, nr, nw,
                          detail=f"reference held-out rate {base:.3f} + margin {settings.oov_margin}"))
    else:
        out += [Figure(n, "input", None, None, None, nr, nw, detail="no samples")
                for n in ("prompt_length", "charset_mix", "oov_rate")]
    return out, scores


def output_figures(ref_replies: list[str], win_replies: list[str], ref_emb: np.ndarray | None,
                   win_emb: np.ndarray | None, settings: DriftSettings, reference: str) -> list[Figure]:
    nr, nw = len(ref_replies), len(win_replies)
    judged = _judged(nr, nw, settings)
    if not (nr and nw):
        return [Figure(n, "output", None, None, None, nr, nw, detail="no replies")
                for n in ("reply_length", "refusal_rate", "reply_embedding")]
    out = []
    k = stats.ks([len(r) for r in ref_replies], [len(r) for r in win_replies], alpha=settings.alpha)
    out.append(Figure("reply_length", "output", k.value, k.threshold, k.value > k.threshold if judged else None,
                      nr, nw, k.p_value, f"reference: {reference}"))
    ref_rate = float(np.mean([stats.is_refusal(r) for r in ref_replies]))
    win_rate = float(np.mean([stats.is_refusal(r) for r in win_replies]))
    out.append(Figure("refusal_rate", "output", win_rate, ref_rate + settings.refusal_margin,
                      win_rate > ref_rate + settings.refusal_margin if judged else None, nr, nw,
                      detail=f"reference rate {ref_rate:.3f} + margin {settings.refusal_margin}"))
    if judged and ref_emb is not None:
        m = stats.mmd(ref_emb, win_emb, alpha=settings.alpha, permutations=settings.permutations,
                      seed=settings.seed)
        out.append(Figure("reply_embedding", "output", m.value, m.threshold, m.value > m.threshold, nr, nw,
                          m.p_value, f"reference: {reference}"))
    else:
        out.append(Figure("reply_embedding", "output", None, None, None, nr, nw, detail="too few samples"))
    return out


def quality_figure(ref_ratings: list[float], win_ratings: list[float], settings: DriftSettings) -> Figure:
    nr, nw = len(ref_ratings), len(win_ratings)
    if not nw:
        return Figure("feedback_rating", "quality", None, None, None, nr, nw, detail="no feedback in the window")
    mean = float(np.mean(win_ratings))
    if nr < settings.min_feedback or nw < settings.min_feedback:
        return Figure("feedback_rating", "quality", mean, None, None, nr, nw,
                      detail=f"too little feedback to judge (needs {settings.min_feedback} on each side)")
    base = float(np.mean(ref_ratings))
    floor = base - settings.quality_margin
    return Figure("feedback_rating", "quality", mean, floor, mean < floor, nr, nw,
                  detail=f"earlier feedback mean {base:.3f} - margin {settings.quality_margin}; "
                         "flagged below the threshold")


# -- the measurement --------------------------------------------------------------------------


def _window(log: RequestLog, name: str, settings: DriftSettings, since: datetime | None,
            until: datetime | None) -> list[dict]:
    if since or until:
        return list(log.query(model=name, status="200", since=since, until=until))
    return list(reversed(list(log.query(model=name, status="200", until=until, limit=settings.window,
                                        newest_first=True))))


def measure_drift(target: MonitorTarget, log: RequestLog, settings: DriftSettings, *,
                  since: datetime | None = None, until: datetime | None = None,
                  embedder=None) -> DriftReport:
    from ..methods.embedder import TextEmbedder

    settings.validate()
    ref_prompts, ref_train_replies, files = reference_texts(target.run_dir, settings)
    rows = _window(log, target.name, settings, since, until)
    usable = [r for r in rows if prompt_text(r["prompt"]) is not None]
    win_prompts = [prompt_text(r["prompt"]) for r in usable]
    win_replies = [r["response"] for r in usable if r["response"] is not None]

    # Output reference: the model's first served replies (before this window), when there are
    # enough of them; else what it was trained to answer.
    first_id = rows[0]["id"] if rows else None
    baseline = [r for r in log.query(model=target.name, status="200", limit=settings.window)
                if first_id is None or r["id"] < first_id]
    baseline_replies = [r["response"] for r in baseline if r["response"] is not None]
    if len(baseline_replies) >= settings.min_samples:
        ref_replies, reply_reference = baseline_replies, f"first {len(baseline_replies)} served replies"
    else:
        ref_replies, reply_reference = ref_train_replies, "training replies"

    embedder = embedder or TextEmbedder(settings.embedding_model)

    def embed(texts):
        return embedder.encode(texts).numpy().astype(np.float64) if texts else np.zeros((0, 1))

    ref_emb, win_emb = embed(ref_prompts), embed(win_prompts)
    figures, scores = input_figures(ref_prompts, win_prompts, ref_emb, win_emb, settings)
    reply_ref_emb = reply_win_emb = None
    if _judged(len(ref_replies), len(win_replies), settings):
        reply_ref_emb, reply_win_emb = embed(ref_replies), embed(win_replies)
    figures += output_figures(ref_replies, win_replies, reply_ref_emb, reply_win_emb, settings,
                              reply_reference)

    feedback = FeedbackStore(log)
    window_ids = {r["request_id"] for r in rows}
    earlier_ids = [r["request_id"] for r in baseline]
    win_ratings = [f["rating"] for f in feedback.query(request_ids=sorted(window_ids))] if window_ids else []
    ref_ratings = [f["rating"] for f in feedback.query(request_ids=earlier_ids)] if earlier_ids else []
    figures.append(quality_figure(ref_ratings, win_ratings, settings))

    shifted = []
    if len(win_prompts) and len(ref_prompts):
        distance, nearest = stats.nearest_distances(ref_emb, win_emb)
        for i in np.argsort(-distance)[:5]:
            shifted.append({"request_id": usable[i]["request_id"], "prompt": win_prompts[i][:500],
                            "distance": round(float(distance[i]), 4),
                            "classifier_score": None if scores is None else round(float(scores[i]), 4),
                            "nearest_training_prompt": ref_prompts[int(nearest[i])][:500]})

    flags = [f.flagged for f in figures if f.name in settings.drift_on]
    drifted = None if any(f is None for f in flags) else any(flags)
    return DriftReport(
        model=target.name, run_dir=str(target.run_dir),
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        window={"requests": len(rows), "usable": len(usable), "not_logged": len(rows) - len(usable),
                "first": rows[0]["created_at"].isoformat() if rows else None,
                "last": rows[-1]["created_at"].isoformat() if rows else None,
                "first_id": rows[0]["request_id"] if rows else None,
                "last_id": rows[-1]["request_id"] if rows else None,
                "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                "log": log.display_url},
        reference={"files": files, "prompts": len(ref_prompts), "replies": reply_reference,
                   "record_created": read_record(target.run_dir).created},
        figures=figures, drifted=drifted, drift_on=list(settings.drift_on), shifted=shifted,
        settings={k: v for k, v in dataclasses.asdict(settings).items() if not k.startswith("alert_")})
