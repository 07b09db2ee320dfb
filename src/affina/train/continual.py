"""Continued training (`train.continue_from`): an earlier model, new data, replay, forgetting.

The continued run
- keeps the earlier run's base, method and method options, and starts from its weights
  (`Method.continue_weights`): its artifact, or one of its checkpoints when `train.continue_from`
  names a checkpoint's directory (`RUN/checkpoints/checkpoint-N`);
- trains on the new data plus `replay.fraction` of examples drawn from the earlier run's own
  training files (a `data.mix`, drawn with `train.seed`: the draw is in the run record's
  `data.mix` and `continual.replay`);
- re-warms the learning rate over `train.rewarm_ratio` of its steps, then decays it again;
- scores the earlier model (its weights before the first step) and the result on the new
  evaluation set and on every earlier evaluation set: the ones registered with the model's
  name, the earlier run's own, and those it was itself checked against. Before vs after per
  set is the forgetting table (`continual.forgetting`), which promotion gates on.

A registry reference is resolved (and its files verified) by the CLI one layer up; here the
earlier model is a run directory.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..record import is_run_dir, read_record
from ..record.datafiles import file_sha256, resolve_inputs
from ..ui import info, print_table, warn
from .rundir import split_resume_target

__all__ = ["EarlierModel", "continual_config", "earlier_eval_sets", "forgetting_rows",
           "print_forgetting", "write_plan", "read_plan", "CONTINUAL_NAME"]

CONTINUAL_NAME = "continual.json"  # the plan, written beside config.yaml (read again on --resume)


@dataclass
class EarlierModel:
    run_dir: Path
    given: str = ""  # what the user named: NAME@ALIAS, NAME@VERSION or a directory
    ref: str | None = None  # NAME@VERSION when it came from the registry
    eval_sets: list[str] = field(default_factory=list)  # evaluation files registered with NAME
    # The weights to start from, relative to run_dir: one of its checkpoints
    # (checkpoints/checkpoint-N), or None for the run's own artifact.
    artifact: str | None = None

    @classmethod
    def of_run_dir(cls, text: str) -> "EarlierModel":
        """A run directory, or one of its checkpoints' directories (RUN/checkpoints/checkpoint-N)."""
        path = Path(text)
        if is_run_dir(path):
            return cls(path.resolve(), given=text)
        run_dir, checkpoint = split_resume_target(path, None)  # the layout --resume reads
        if checkpoint and re.fullmatch(r"checkpoint-\d+", checkpoint) and path.is_dir() and is_run_dir(run_dir):
            return cls(run_dir.resolve(), given=text, artifact=path.relative_to(run_dir).as_posix())
        raise ConfigError(f"train.continue_from: {text!r} is not a run directory or one of its checkpoints "
                          "(RUN/checkpoints/checkpoint-N; NAME@ALIAS references are resolved by "
                          "`affina train --continue-from`)")


def _rows(paths: list[str]) -> list[int]:
    from ..data.loading import load_records

    records = load_records(paths).records
    return [sum(1 for r in records if r.source == str(p)) for p in paths]


def continual_config(cfg: RunConfig, earlier: EarlierModel) -> tuple[RunConfig, dict]:
    """(the config the continued run trains with, the plan recorded in its run record)."""
    record = read_record(earlier.run_dir)
    cfg = copy.deepcopy(cfg)
    if cfg.data.mix:
        raise ConfigError("with train.continue_from, give the new data as data.train; the replay "
                          "mix with the earlier data is built from it (replay.fraction)")
    if cfg.method.name != record.method.name and cfg.method.options:
        raise ConfigError(f"train.continue_from: {earlier.given} was trained with method "
                          f"{record.method.name}; a continued run keeps it (drop method.* keys)")
    if cfg.method.name != record.method.name:
        info(f"continuing with the earlier run's method {record.method.name} (not {cfg.method.name})")
    cfg.method.name, cfg.method.options = record.method.name, dict(record.method.options)
    base = record.base_model.spec
    if base not in ("default",) and not Path(base).exists() and Path(record.base_model.path).exists():
        base = record.base_model.path  # the spec was a relative path from elsewhere
    cfg.model.spec = base
    cfg.train.warmup_ratio = cfg.train.rewarm_ratio

    new_files = list(cfg.data.train)
    inputs = resolve_inputs(earlier.run_dir)  # sha256-checked: replay draws from the data it saw
    new_resolved = {str(Path(p).resolve()) for p in new_files}
    replay_files = [p for p in inputs.get("train", []) + inputs.get("mix", [])
                    if str(Path(p).resolve()) not in new_resolved]
    fraction = cfg.replay.fraction
    new_rows = _rows(new_files)
    replay = {"fraction": fraction, "seed": cfg.train.seed, "new_rows": sum(new_rows),
              "new_files": [{"path": str(Path(p).resolve()), "rows": n} for p, n in zip(new_files, new_rows)],
              "replay_rows": 0, "replay_files": []}
    if fraction > 0 and replay_files:
        replay_rows = _rows(replay_files)
        wanted = round(sum(new_rows) * fraction / (1 - fraction))
        # Weights in examples: every new row is drawn once, the replay share is spread over
        # the earlier files by their size.
        entries = [{"path": p, "weight": float(n)} for p, n in zip(new_files, new_rows)]
        entries += [{"path": p, "weight": wanted * n / sum(replay_rows)} for p, n in zip(replay_files, replay_rows)
                    if wanted * n > 0]
        cfg.data.train, cfg.data.mix = [], entries
        cfg.data.mix_size = sum(new_rows) + wanted
        replay["replay_rows"] = wanted
        replay["replay_files"] = [{"path": str(Path(p).resolve()), "rows": n, "sha256": file_sha256(Path(p))}
                                  for p, n in zip(replay_files, replay_rows)]
    elif fraction > 0:
        warn(f"{earlier.given}: its training data is the new data itself (or none is recorded); "
             "nothing else to replay")
    plan = {"from": earlier.given or str(earlier.run_dir), "version": earlier.ref,
            "run_dir": str(earlier.run_dir), "artifact": earlier.artifact or record.artifact,
            "method": record.method.name,
            "rewarm_ratio": cfg.train.rewarm_ratio, "replay": replay,
            "earlier_eval": earlier_eval_sets(earlier, record)}
    return cfg.validate(), plan


def earlier_eval_sets(earlier: EarlierModel, record=None) -> list[dict]:
    """Every earlier evaluation set, each once: registered with the name, the earlier run's own,
    and those the earlier run was itself checked against (a chain of continuations)."""
    record = record or read_record(earlier.run_dir)
    found: dict[str, dict] = {}

    def add(path: str, origin: str, sha256: str | None = None):
        p = Path(path)
        if not p.is_file():
            warn(f"earlier evaluation set {path} ({origin}) is gone; forgetting on it is not measured")
            return
        key = str(p.resolve())
        digest = file_sha256(p)
        if sha256 and digest != sha256:
            warn(f"earlier evaluation set {path} changed since it was used; measuring on it as it is now")
        found.setdefault(key, {"path": key, "sha256": digest, "origin": origin})

    for path in earlier.eval_sets:
        add(path, f"registered with {earlier.ref.split('@')[0]}" if earlier.ref else "registered")
    for path in resolve_inputs(earlier.run_dir).get("eval", []):  # sha256-checked
        add(path, f"evaluation data of run {earlier.run_dir.name}")
    for item in (getattr(record, "continual", None) or {}).get("earlier_eval", []):
        add(item["path"], item.get("origin", "earlier"), item.get("sha256"))
    return list(found.values())


def forgetting_rows(sets: list[dict], before: list[dict], after: list[dict]) -> list[dict]:
    """Per earlier set: its scores before and after, and the change of each (after - before)."""
    out = []
    for s, b, a in zip(sets, before, after):
        b, a = b or {}, a or {}
        out.append({**s, "before": b, "after": a,
                    "delta": {k: round(a[k] - b[k], 6) for k in a if k in b
                              and isinstance(a[k], (int, float)) and isinstance(b[k], (int, float))}})
    return out


def print_forgetting(rows: list[dict]) -> None:
    if not rows:
        return
    table = []
    for r in rows:
        for measure in sorted(r["delta"]):
            table.append([Path(r["path"]).name, r["origin"], measure, f"{r['before'][measure]:.4f}",
                          f"{r['after'][measure]:.4f}", f"{r['delta'][measure]:+.4f}"])
    print_table("earlier evaluation sets (forgetting: before → after)",
                ["set", "origin", "measure", "before", "after", "change"], table)


def write_plan(run_dir: Path, plan: dict) -> None:
    (Path(run_dir) / CONTINUAL_NAME).write_text(json.dumps(plan, indent=1))


def read_plan(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CONTINUAL_NAME
    return json.loads(path.read_text()) if path.is_file() else None
