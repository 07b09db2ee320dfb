"""The retraining loop: when drift persists and enough feedback exists, continue the served model
on the corrected replies (plus replay), evaluate, and promote it only through the gates.

    decide   drift history (the last `drift_windows` windows since the last retraining all
             drifted) + exportable feedback rows not used before (`min_feedback`) → due or not
    prepare  feedback → training rows (a seeded share held out as the new task's evaluation
             set) → the continued run's config (`train.continue_from=NAME@ALIAS`, replay)
    submit   a callable that trains it and returns the run: a fine-tuning job through the jobs
             API (`jobs/loop_submit.py`: a server's /v1 API, or the server's own queue when
             `affina serve` runs the loop), or, with no server to train, `local_train`: the
             CLI's own train recipe in a subprocess (`affina train --continue-from ...`)
    register NAME@next, with the trigger (drift reports, feedback request ids) beside the run
    promote  `govern.promote` with every gate (metric, forgetting): the alias moves only if the
             earlier sets did not regress

Every step is appended to `loop.jsonl` in the model's monitor directory, and the trigger is
written into the new run (`trigger.json`, shown by `affina lineage`) and tagged on its version.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import AffinaError, ConfigError
from ..record.feedback import FeedbackStore
from ..record.requestlog import RequestLog
from ..ui import info
from .drift import MonitorTarget
from .feedback_export import feedback_rows
from .history import MonitorStore

__all__ = ["LoopPolicy", "Decision", "TrainingJob", "TrainedRun", "decide", "training_job", "run_loop",
           "local_train", "load_policy"]


def _f(default, help: str):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class LoopPolicy:
    alias: str = _f("champion", "Alias that is served and that a successful retraining moves.")
    drift_windows: int = _f(3, "Consecutive drifted windows (since the last retraining) before retraining.")
    min_feedback: int = _f(20, "Fewest corrected or approved feedback rows, not used by an earlier retraining.")
    replay_fraction: float = _f(0.25, "replay.fraction of the continued run: the share drawn from the earlier training data.")
    eval_fraction: float = _f(0.2, "Share of the feedback rows held out (seeded) as the new task's evaluation set.")
    approve_at: float = _f(1.0, "A rating at least this high turns the model's own reply into a training row.")
    redact: bool = _f(True, "Redact e-mail addresses, phone numbers and similar in the feedback rows.")
    margin: float = _f(0.0, "Promotion margin on the registered evaluation set.")
    forgetting_margin: float = _f(0.0, "Promotion margin on each earlier evaluation set (the forgetting gate).")
    metric: str | None = _f(None, "Promotion metric (default: the one registered with the model).")
    output_dir: str = _f("runs", "Where the continued run's directory is made.")
    seed: int = _f(0, "Seed of the held-out split and of the continued run (train.seed).")
    train: list = _f([], "Extra `section.key=value` overrides for the continued run (e.g. train.max_steps=100).")

    def validate(self) -> "LoopPolicy":
        def check(ok, key, expected):
            if not ok:
                raise ConfigError(f"policy key '{key}' must be {expected}, got {getattr(self, key)!r}")
        check(self.drift_windows >= 1, "drift_windows", ">= 1")
        check(self.min_feedback >= 1, "min_feedback", ">= 1")
        check(0 <= self.replay_fraction < 1, "replay_fraction", "in [0, 1)")
        check(0 <= self.eval_fraction < 1, "eval_fraction", "in [0, 1)")
        check(self.margin >= 0 and self.forgetting_margin >= 0, "margin", ">= 0 (and forgetting_margin too)")
        check(all(isinstance(t, str) and "=" in t for t in self.train), "train",
              "a list of section.key=value strings")
        return self


def load_policy(path: Path | None = None, overrides: list[str] | None = None) -> LoopPolicy:
    import yaml

    from ..config import read_yaml_mapping

    values = read_yaml_mapping(Path(path), "retraining policy", "a mapping of policy keys") if path else {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--policy-set {item!r}: use key=value")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    known = {f.name for f in dataclasses.fields(LoopPolicy)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown policy key {unknown[0]!r}; keys: {', '.join(sorted(known))}")
    policy = LoopPolicy()
    for key, value in values.items():
        default = getattr(policy, key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and value is not None and type(value) is not type(default):
            raise ConfigError(f"policy key {key!r} must be a {type(default).__name__}, got {value!r}")
        setattr(policy, key, value)
    return policy.validate()


# -- decide -----------------------------------------------------------------------------------


@dataclass
class Decision:
    due: bool
    reason: str
    windows: list[dict]  # the history summaries it rests on
    feedback: int  # usable feedback rows


def decide(history: list[dict], usable_feedback: int, policy: LoopPolicy,
           since: str | None = None) -> Decision:
    """Whether retraining is due: the last `drift_windows` windows made after `since` (the last
    retraining) all drifted, and at least `min_feedback` usable feedback rows exist."""
    recent = [h for h in history if since is None or str(h["time"]) > since]
    last = recent[-policy.drift_windows:]
    drifted = len(last) == policy.drift_windows and all(h.get("drifted") is True for h in last)
    if not drifted:
        streak = 0
        for h in reversed(recent):
            if h.get("drifted") is not True:
                break
            streak += 1
        return Decision(False, f"{streak} drifted window(s) in a row, {policy.drift_windows} needed",
                        last, usable_feedback)
    if usable_feedback < policy.min_feedback:
        return Decision(False, f"drift in the last {policy.drift_windows} windows, but only "
                        f"{usable_feedback} usable feedback rows ({policy.min_feedback} needed)",
                        last, usable_feedback)
    return Decision(True, f"drift in the last {policy.drift_windows} windows and {usable_feedback} "
                    "usable feedback rows", last, usable_feedback)


# -- prepare and submit -----------------------------------------------------------------------


@dataclass
class TrainingJob:
    """Everything a submitter needs to run the continued training."""

    continue_from: str  # NAME@ALIAS
    version: str  # NAME@N: the version the alias holds now, the one continued
    train_file: Path  # the feedback rows to train on
    eval_file: Path | None  # the held-out feedback rows: the new task's evaluation set
    replay_fraction: float
    seed: int
    extra: list[str]  # the policy's own section.key=value overrides
    run_dir: Path  # where `local_train` puts the run (train.output_dir / train.run_name)

    @property
    def overrides(self) -> list[str]:
        out = [f"data.train={self.train_file}", f"replay.fraction={self.replay_fraction}",
               f"train.seed={self.seed}"]
        if self.eval_file:
            out.append(f"eval.data={self.eval_file}")
        return out + [f"train.output_dir={self.run_dir.parent}", f"train.run_name={self.run_dir.name}",
                      *self.extra]

    def argv(self) -> list[str]:
        return ["train", "--continue-from", self.version, "-q", *self.overrides]


@dataclass
class TrainedRun:
    """What a submitter hands back: the run directory, and the job that trained it (if any)."""

    run_dir: Path
    job_id: str | None = None
    fine_tuned_model: str | None = None
    registered_as: str | None = None
    training_file: str | None = None
    validation_file: str | None = None


def training_job(name: str, version: str, policy: LoopPolicy, rows: list[dict], workdir: Path) -> TrainingJob:
    """Write the feedback rows (train + held-out evaluation split) and build the job."""
    rng = random.Random(policy.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_eval = int(round(len(rows) * policy.eval_fraction))
    eval_rows = [rows[i] for i in sorted(order[:n_eval])]
    train_rows = [rows[i] for i in sorted(order[n_eval:])]
    workdir.mkdir(parents=True, exist_ok=True)

    def write(path: Path, items: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        return path.resolve()

    train_file = write(workdir / "feedback-train.jsonl", train_rows)
    eval_file = write(workdir / "feedback-eval.jsonl", eval_rows) if eval_rows else None
    run_name = f"{name}-retrain-{workdir.name}"
    return TrainingJob(f"{name}@{policy.alias}", version, train_file, eval_file, policy.replay_fraction,
                       policy.seed, list(policy.train), Path(policy.output_dir).resolve() / run_name)


def local_train(job: TrainingJob) -> TrainedRun:
    """The submitter without a server: the CLI's own train recipe in a subprocess, waited for."""
    done = subprocess.run([sys.executable, "-m", "affina.cli", *job.argv()], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise AffinaError(f"the continued training failed (exit {done.returncode}): {tail[0]}")
    return TrainedRun(job.run_dir)


# -- the loop ---------------------------------------------------------------------------------


def _log_step(path: Path, step: str, **detail) -> dict:
    event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": step, **detail}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event, default=str) + "\n")
    return event


def _past_events(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_loop(target: MonitorTarget, policy: LoopPolicy, *, log_url: str | None = None,
             monitor_dir: Path | None = None,
             submit: Callable[[TrainingJob], TrainedRun] = local_train) -> dict:
    """One pass of the policy for a served `NAME@ALIAS`. Returns the last step taken:
    `waiting` (not due), `failed` (the training did not finish), `refused` / `promoted`
    (retrained and judged by the gates)."""
    from ..govern.promote import promote
    from ..govern.registry import _client, lookup, parse_ref, register_run

    ref = parse_ref(target.name)
    if ref is None or ref.is_version or ref.selector != policy.alias:
        raise AffinaError(f"--loop retrains a served alias: monitor NAME@{policy.alias} "
                          f"(got {target.name!r}; set the policy's alias to match)")
    store = MonitorStore(monitor_dir)
    loop_log = store.directory(target.name) / "loop.jsonl"
    past = _past_events(loop_log)
    retrains = [e for e in past if e["step"] in ("promoted", "refused")]
    since = retrains[-1]["time"] if retrains else None
    # Each feedback row drives at most one retraining: a refused candidate's rows are not
    # silently retried (export them by hand to look at them).
    used = {rid for e in retrains for rid in e.get("request_ids", [])}

    log = RequestLog(log_url, create=False)
    try:
        rows, skipped, redacted = feedback_rows(FeedbackStore(log), model=target.name,
                                                approve_at=policy.approve_at, redact=policy.redact)
    finally:
        log.close()
    rows = [r for r in rows if r["lineage"]["request_id"] not in used]
    decision = decide(store.history(target.name), len(rows), policy, since)
    if not decision.due:
        return _log_step(loop_log, "waiting", reason=decision.reason, feedback=len(rows))

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    served = lookup(ref)
    job = training_job(ref.name, f"{ref.name}@{served.version}", policy, rows,
                       store.directory(target.name) / "loop" / stamp)
    request_ids = [r["lineage"]["request_id"] for r in rows]
    _log_step(loop_log, "retraining", reason=decision.reason, continue_from=job.version,
              feedback=len(rows), submitter=getattr(submit, "__name__", type(submit).__name__))
    info(f"retraining {job.continue_from} ({job.version}): {decision.reason}")
    try:
        trained = submit(job)
    except AffinaError as e:  # the rows stay unused: the next due pass tries again
        return _log_step(loop_log, "failed", reason=str(e).splitlines()[0], continue_from=job.version)
    if isinstance(trained, (str, Path)):
        trained = TrainedRun(Path(trained))
    run_dir = trained.run_dir
    if trained.job_id:
        _log_step(loop_log, "trained", job=trained.job_id, fine_tuned_model=trained.fine_tuned_model,
                  registered_as=trained.registered_as, run_dir=str(run_dir))
    trigger = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": decision.reason,
               "monitored": target.name, "continued": job.version, "policy": dataclasses.asdict(policy),
               "drift_reports": [h.get("report") for h in decision.windows],
               "job": ({"id": trained.job_id, "fine_tuned_model": trained.fine_tuned_model,
                        "registered_as": trained.registered_as, "training_file": trained.training_file,
                        "validation_file": trained.validation_file} if trained.job_id else None),
               "feedback": {"rows": len(rows), "request_ids": request_ids, "skipped": skipped,
                            "redacted": redacted,
                            "files": [str(f) for f in (job.train_file, job.eval_file) if f]}}
    (Path(run_dir) / "trigger.json").write_text(json.dumps(trigger, indent=1))
    version = register_run(Path(run_dir), ref.name)
    _client().set_model_version_tag(ref.name, str(version.version), "affina.trigger",
                                    json.dumps({k: trigger[k] for k in ("time", "reason", "monitored")}
                                               | {"feedback_rows": len(rows), "run_dir": str(run_dir), "job": trained.job_id}))
    _log_step(loop_log, "registered", version=version.ref, run_dir=str(run_dir), job=trained.job_id)
    result = promote(version.ref, policy.alias, margin=policy.margin, metric=policy.metric,
                     forgetting_margin=policy.forgetting_margin)
    step = "promoted" if result["decision"] == "promoted" else "refused"
    reasons = "; ".join(f"{g['gate']}: {'pass' if g['passed'] else 'FAIL'} — {g['detail']}" for g in result["gates"])
    return _log_step(loop_log, step, reason=reasons, version=version.ref, report=result["report"],
                     request_ids=request_ids, forgetting=result["forgetting"], job=trained.job_id)
