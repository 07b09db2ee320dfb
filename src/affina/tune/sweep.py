"""`affina sweep`: an optuna study whose trials are ordinary training runs.

search space + base config → study (sqlite beside the results, or a shared RDB URL) → each
trial: sample values → train (pruned by intermediate validation loss) → objective from the run's
manifest → ranked table, search plot, best config as a ready-to-run YAML.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import RunConfig, config_to_dict, load_config
from ..errors import ConfigError
from ..ui import info, print_table, warn
from .plots import plot_search
from .pruning import PruningCallback
from .space import SearchSpace, apply_params, load_space, suggest_params

__all__ = ["SweepResult", "run_sweep", "BEST_CONFIG_NAME", "PLOT_NAME"]

BEST_CONFIG_NAME, PLOT_NAME = "best.yaml", "search.png"


@dataclass
class SweepResult:
    study_name: str
    storage: str
    out_dir: Path
    rows: list[dict]  # one per trial, best first; pruned and failed trials after
    best_config: Path | None
    plot: Path | None


def run_sweep(space_path: str | Path, *, config: str | Path | None = None, overrides: list[str] = (),
              n_trials: int | None = None, timeout: float | None = None, storage: str | None = None,
              study_name: str | None = None, out_dir: str | Path | None = None) -> SweepResult:
    import optuna

    if not n_trials and not timeout:
        raise ConfigError("give a budget: --trials N and/or --timeout SECONDS")
    space = load_space(space_path)
    from ..methods import method_field_names

    base = load_config(config, list(overrides), method_field_names)
    if not base.data.train:
        raise ConfigError("the sweep's base config has no data.train; pass -c run.yaml or data.train=FILE")
    study_name = study_name or Path(space_path).stem
    out_dir = Path(out_dir or Path("sweeps") / study_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    _check_pruning_possible(base, space)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=space.seed if space.seed is not None else base.train.seed)
    study = optuna.create_study(study_name=study_name, storage=storage, direction=space.direction,
                                sampler=sampler, pruner=space.make_pruner(), load_if_exists=True)
    info(f"study '{study_name}' in {storage}: {space.direction} {space.objective} over "
         f"{', '.join(p.key for p in space.params)}")
    base_scores = BaseScores(out_dir / "base_eval")

    def objective(trial) -> float:
        values = suggest_params(trial, space, base.method.name)
        cfg = apply_params(base, values)
        cfg.train.output_dir = str(out_dir / "runs")
        cfg.train.run_name = f"trial-{trial.number:03d}"
        info(f"trial {trial.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        pruning = PruningCallback(trial, maximise=space.direction == "maximize")
        from ..train import train

        run_dir = Path(cfg.train.output_dir) / cfg.train.run_name
        cached = base_scores.seed(cfg, run_dir)
        # A pruned trial is out of the race: its tuned model is not worth a held-out evaluation.
        result = train(cfg, callbacks=(pruning,), evaluate_after=lambda: not pruning.pruned)
        if not cached:
            base_scores.keep(cfg, run_dir)
        trial.set_user_attr("run_dir", str(result.run_dir))
        value = _objective_value(result.record, space.objective)
        _record_trial(result, cfg, study_name, trial.number, values, pruning.pruned_at, value,
                      base_reused=cached)
        if pruning.pruned:
            info(f"trial {trial.number} pruned at step {pruning.pruned_at}")
            raise optuna.TrialPruned()
        if value is None:
            raise ConfigError(f"trial {trial.number}: the run produced no {space.objective}; "
                              "the base config needs validation data (and eval.data for eval.* objectives)")
        return value

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    callbacks = []
    if n_trials:
        # The budget is for the study, not this worker: workers on several machines sharing
        # one storage stop together at N finished trials in all, and a rerun adds none.
        finished = len(study.get_trials(deepcopy=False, states=done))
        callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=done))
        n_trials = n_trials - finished
        if n_trials <= 0:
            info(f"study '{study_name}' already has {finished} finished trials; nothing to run")
    if n_trials is None or n_trials > 0:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=callbacks)
    return _finish(study, space, base, out_dir, storage)


def _check_pruning_possible(base: RunConfig, space: SearchSpace) -> None:
    if space.pruner.get("name", "median") == "none":
        return
    if base.train.eval_steps <= 0 or not (base.data.validation or base.data.val_fraction > 0):
        warn("pruning needs validation during training: set train.eval_steps > 0 and validation "
             "data; trials will not be pruned")


def _objective_value(record, objective: str) -> float | None:
    if objective == "validation_loss":
        return record.metrics.validation_loss
    return (record.metrics.eval_after or {}).get(objective.split(".", 1)[1])


def _record_trial(result, cfg: RunConfig, study: str, number: int, values: dict,
                  pruned_at: int | None, value, base_reused: bool = False) -> None:
    """The trial's place in the study goes into its run record and its MLflow run's tags."""
    from ..record import read_record, write_record

    record = read_record(result.run_dir)
    record.sweep = {"study": study, "trial": number, "params": values,
                    "state": "pruned" if pruned_at is not None else "complete",
                    "pruned_at_step": pruned_at, "objective_value": value,
                    "base_eval": "reused from the study" if base_reused else None,
                    "after_eval": ("skipped: trial pruned" if pruned_at is not None and cfg.eval.data
                                   else None)}
    write_record(result.run_dir, record)
    run_id = record.mlflow_run_id
    if run_id:
        from mlflow import MlflowClient

        from ..record import default_tracking_uri

        client = MlflowClient(tracking_uri=cfg.track.uri or default_tracking_uri())
        for key, tag in (("study", study), ("trial", number), ("state", record.sweep["state"])):
            client.set_tag(run_id, f"affina.sweep.{key}", str(tag))


def _finish(study, space: SearchSpace, base: RunConfig, out_dir: Path, storage: str) -> SweepResult:
    import optuna

    State = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = sorted([t for t in trials if t.state == State.COMPLETE], key=lambda t: t.value,
                      reverse=space.direction == "maximize")
    others = [t for t in trials if t.state != State.COMPLETE]
    rows = [{"rank": i + 1 if t.state == State.COMPLETE else None, "trial": t.number,
             "state": t.state.name.lower(), "value": t.value, "params": t.params,
             "last_step": t.last_step, "run_dir": t.user_attrs.get("run_dir")}
            for i, t in enumerate(complete + others)]
    keys = [p.key for p in space.params]
    print_table(f"sweep '{study.study_name}': {len(complete)} complete, "
                f"{sum(t.state == State.PRUNED for t in trials)} pruned ({space.direction} {space.objective})",
                ["rank", "trial", "state", space.objective, *keys, "pruned at", "run"],
                [[r["rank"] or "-", r["trial"], r["state"], "-" if r["value"] is None else f"{r['value']:.4f}",
                  *[_fmt(r["params"].get(k, "-")) for k in keys],
                  f"step {r['last_step']}" if r["state"] == "pruned" else "-", r["run_dir"] or "-"]
                 for r in rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plot = plot_search(study, out_dir / PLOT_NAME, space.objective)
    best_path = None
    if complete:
        best = complete[0]
        cfg = apply_params(base, best.params)
        best_path = out_dir / BEST_CONFIG_NAME
        header = (f"# Best trial {best.number} of study '{study.study_name}' ({storage}): "
                  f"{space.objective} = {best.value:.6g}\n# Run it with: affina train -c {best_path}\n")
        best_path.write_text(header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        info(f"best configuration: {best_path}")
    import json

    (out_dir / "sweep.json").write_text(json.dumps(
        {"study": study.study_name, "storage": storage, "objective": space.objective,
         "direction": space.direction, "trials": rows}, indent=1, default=str) + "\n")
    if plot:
        info(f"search plot: {plot}")
    return SweepResult(study.study_name, storage, out_dir, rows, best_path, plot)


class BaseScores:
    """The base model's held-out scores, evaluated once per study and copied into each trial.

    Trials differ in training settings, not in the base or its evaluation, so one evaluation
    serves them all; the key holds everything that changes the scores (base spec and dtype, the
    evaluation files' sha256, the evaluation settings), so a search over any of those still
    evaluates each distinct base. A trial finds the scores as its `eval/before.json`, which the
    recipe reuses exactly as it does on resume."""

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, cfg: RunConfig) -> Path | None:
        import hashlib
        import json

        from ..data.loading import file_sha256

        if not cfg.eval.data or not cfg.eval.compare_base:
            return None
        key = {"spec": cfg.model.spec, "dtype": cfg.model.dtype, "device": cfg.model.device,
               "data": [file_sha256(Path(p)) for p in cfg.eval.data], "eval": config_to_dict(cfg)["eval"],
               "max_length": cfg.data.max_length, "train_on_prompt": cfg.data.train_on_prompt,
               "format": cfg.data.format}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return self.directory / f"{digest[:20]}.json"

    def seed(self, cfg: RunConfig, run_dir: Path) -> bool:
        """Put the study's base scores into the trial's run directory; whether there were any."""
        import shutil

        path = self._path(cfg)
        target = run_dir / "eval" / "before.json"
        if path is None or not path.is_file() or target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return True

    def keep(self, cfg: RunConfig, run_dir: Path) -> None:
        """Keep the base scores a trial computed, for the trials after it."""
        import shutil

        path, source = self._path(cfg), run_dir / "eval" / "before.json"
        if path is not None and source.is_file() and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
