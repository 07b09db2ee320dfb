"""The SFT recipe: one path for every method and device, read top to bottom.

setup (config, model, data, tracking) → evaluate the base → apply the method → train with
validation and checkpoints → save the artifact → evaluate the result → manifest + summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..config import RunConfig, config_from_dict, config_to_dict
from ..data.loading import load_records
from ..data.prepare import PreparedData
from ..errors import AffinaError, ConfigError
from ..evaluate.metrics import check_metric_names
from ..evaluate.report import classify_records, compare_rows, evaluate_records
from ..methods import (attach_data, build_method_config, data_collator, get_method, load_options,
                       method_report, method_task, method_trains, metrics_function, prepare_method_data,
                       trainable_report)
from ..models import load_model
from ..track import library_versions, write_manifest
from ..track.manifest import git_commit
from ..track.mlflow_log import MlflowRun
from ..ui import info, print_table, warn
from .callbacks import HistoryCallback
from .plots import plot_learning_curve

__all__ = ["train", "TrainResult", "CONFIG_NAME"]

CONFIG_NAME = "config.yaml"


@dataclass
class TrainResult:
    run_dir: Path
    manifest: dict


def train(cfg: RunConfig, *, resume: Path | None = None, callbacks: tuple = ()) -> TrainResult:
    """Run one fine-tuning job. With `resume`, continue the run in that directory from its last
    checkpoint, using the config saved there."""
    started = time.time()
    if resume is not None:
        cfg = _config_of_run(resume)
    method = get_method(cfg.method.name)
    method_cfg = build_method_config(method, cfg.method.options)
    _check_eval_config(cfg)
    run_dir = _make_run_dir(cfg, resume)
    info(f"run directory: {run_dir}")

    from transformers import set_seed

    set_seed(cfg.train.seed)
    loaded = load_model(cfg.model.spec, device=_device(cfg), dtype=_dtype(cfg), for_training=True,
                        **load_options(method, method_cfg))
    data = prepare_method_data(method, method_cfg, cfg.data, loaded.tokenizer, cfg.train.seed)
    for message in data.warnings:
        warn(message)
    eval_records = load_records(cfg.eval.data).records[: cfg.eval.limit] if cfg.eval.data else []

    with MlflowRun(cfg.track.mlflow, cfg.track.uri, cfg.track.experiment, run_dir.name) as tracker:
        tracker.log_params(config_to_dict(cfg))
        _log_datasets(tracker, data)
        summary = data.summary()  # tags make runs findable by data fingerprint (lineage)
        tracker.set_tags({"affina.run_dir": str(run_dir.resolve()), "affina.method": method.name,
                          "affina.data.train_fingerprint": summary["train"]["fingerprint"],
                          "affina.data.validation_fingerprint": summary["validation"]["fingerprint"]})

        task = method_task(method)
        before = None
        # A new classification head has no "before": the base cannot classify yet.
        if eval_records and cfg.eval.compare_base and task != "classify":
            before = _cached_eval(run_dir / "eval" / "before.json", lambda: _evaluate(
                loaded.model, loaded.tokenizer, eval_records, cfg, "before"))

        set_seed(cfg.train.seed)
        model = method.apply(loaded.model, method_cfg)
        model = attach_data(method, model, method_cfg, data, loaded.tokenizer)
        params = trainable_report(model)
        info(f"method {method.name}: {params.trainable:,} trainable of {params.total:,} "
             f"parameters ({params.percent:.3f}%)")

        trainer = _build_trainer(model, loaded.tokenizer, data, cfg, run_dir,
                                 [HistoryCallback(tracker), *callbacks],
                                 data_collator(method, method_cfg, loaded.tokenizer),
                                 metrics_function(method, method_cfg))
        if method_trains(method):  # fewshot: nothing to optimise, the run is its prompt recipe
            trainer.train(resume_from_checkpoint=True if resume is not None else None)
        val_metrics = trainer.evaluate() if data.val else {}

        artifact_dir = run_dir / "adapter"
        method.save(model, artifact_dir)
        loaded.tokenizer.save_pretrained(artifact_dir)
        history = trainer.state.log_history
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
        stopping = _stopping_record(trainer, run_dir)
        plot_learning_curve(history, run_dir / "learning_curve.png",
                            f"{method.name} on {Path(cfg.model.spec).name}",
                            best_step=stopping["best_step"],
                            stop_step=stopping["stop_step"] if stopping["stopped_early"] else None)

        after = (_evaluate(model, loaded.tokenizer, eval_records, cfg, "after", task)
                 if eval_records else None)
        if after is not None:
            _write_json(run_dir / "eval" / "after.json", after)

        manifest = {
            "kind": method.artifact_kind,
            "artifact": artifact_dir.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_model": {"spec": cfg.model.spec, "path": str(loaded.path),
                           "fingerprint": loaded.fingerprint,
                           "class": type(loaded.model).__name__},
            "data": data.summary(),
            "method": {"name": method.name, **_asdict(method_cfg), **params.as_dict(),
                       **method_report(method, model, method_cfg)},
            "seed": cfg.train.seed,
            "device": str(loaded.device),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "mlflow_run_id": tracker.run_id,
            "train": {"global_step": trainer.state.global_step,
                      "epochs": round(trainer.state.epoch or 0.0, 4),
                      "train_loss": _last(history, "loss"),
                      "seconds": round(time.time() - started, 1), **stopping},
            "metrics": {"validation_loss": val_metrics.get("eval_loss"),
                        "eval_before": _scores(before), "eval_after": _scores(after)},
        }
        write_manifest(run_dir, manifest)
        tracker.log_metrics({"final_validation_loss": val_metrics.get("eval_loss", float("nan"))})
        for tag, result in (("before", before), ("after", after)):
            if result:
                tracker.log_metrics({f"eval_{tag}_{k}": v for k, v in _scores(result).items()})
        tracker.log_artifacts(run_dir, artifact_path="run")

    _print_summary(run_dir, data, params, manifest, before, after)
    return TrainResult(run_dir, manifest)


# -- setup ---------------------------------------------------------------------------------


def _config_of_run(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise AffinaError(f"cannot resume: {path} not found (is {run_dir} a run directory?)")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def _check_eval_config(cfg: RunConfig) -> None:
    try:
        check_metric_names(cfg.eval.metrics)
    except ConfigError as e:
        raise ConfigError(f"eval.metrics: {e}") from None


def _make_run_dir(cfg: RunConfig, resume: Path | None) -> Path:
    if resume is not None:
        run_dir = Path(resume)
        if not any((run_dir / "checkpoints").glob("checkpoint-*")):
            raise AffinaError(f"cannot resume: {run_dir} has no checkpoint yet; start a new run")
        return run_dir
    name = cfg.train.run_name or f"{cfg.method.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.train.output_dir) / name
    if (run_dir / CONFIG_NAME).exists():
        raise ConfigError(f"run directory {run_dir} already exists; pick another train.run_name "
                          f"or continue it with --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_NAME).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return run_dir


def _device(cfg: RunConfig):
    import torch

    return None if cfg.model.device == "auto" else torch.device(cfg.model.device)


def _dtype(cfg: RunConfig):
    import torch

    if cfg.model.dtype == "auto":
        return None
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype must be auto, float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    return getattr(torch, cfg.model.dtype)


def _build_trainer(model, tokenizer, data: PreparedData, cfg: RunConfig, run_dir: Path, callbacks,
                   collator, compute_metrics=None):
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    t = cfg.train
    device = next(model.parameters()).device
    bf16 = device.type == "cuda" and next(model.parameters()).dtype == torch.bfloat16
    has_val = bool(data.val)
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        seed=t.seed, data_seed=t.seed,
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,
        logging_steps=t.logging_steps, logging_first_step=True,
        eval_strategy="steps" if has_val and t.eval_steps > 0 else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        **({"gradient_checkpointing": True} if t.gradient_checkpointing else {}),
        use_cpu=device.type == "cpu", bf16=bf16,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda", disable_tqdm=False,
        **_best_checkpoint_args(t, has_val),
    )
    callbacks = list(callbacks)
    if t.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))
    return Trainer(model=model, args=args, train_dataset=data.train,
                   eval_dataset=data.val or None, data_collator=collator,
                   compute_metrics=compute_metrics,
                   callbacks=callbacks)


def _best_checkpoint_args(t, has_val: bool) -> dict:
    """TrainingArguments for early stopping: the trainer can only restore a checkpoint it wrote
    at a validation step, so checkpoints must fall on validation steps."""
    if t.early_stopping_patience < 0:
        raise ConfigError("train.early_stopping_patience must be >= 0 (0 turns early stopping off)")
    if t.early_stopping_patience == 0:
        return {}
    if not has_val or t.eval_steps <= 0:
        raise ConfigError("train.early_stopping_patience needs validation: set train.eval_steps > 0 "
                          "and data.val_fraction > 0 or data.validation")
    if t.save_steps <= 0 or t.save_steps % t.eval_steps:
        raise ConfigError(f"train.early_stopping_patience needs train.save_steps a multiple of "
                          f"train.eval_steps (got save_steps={t.save_steps}, eval_steps={t.eval_steps}); "
                          f"set train.save_steps={t.eval_steps}")
    metric = t.metric_for_best if t.metric_for_best.startswith("eval_") else f"eval_{t.metric_for_best}"
    return {"load_best_model_at_end": t.load_best, "metric_for_best_model": metric,
            "greater_is_better": t.greater_is_better}


def _stopping_record(trainer, run_dir: Path) -> dict:
    """Where training stopped and which checkpoint was best, for the manifest and the plot."""
    state = trainer.state
    best = state.best_model_checkpoint
    best_step = int(best.rsplit("-", 1)[-1]) if best else None
    return {"best_checkpoint": Path(os.path.relpath(best, run_dir)).as_posix() if best else None,
            "best_metric": state.best_metric, "best_step": best_step,
            "stopped_early": bool(state.max_steps and state.global_step < state.max_steps),
            "stop_step": state.global_step}


def _log_datasets(tracker: MlflowRun, data: PreparedData) -> None:
    summary = data.summary()
    sources = ",".join(f["path"] for f in data.files if f.get("role") == "train")
    tracker.log_dataset(data.train_records, name="train", source=sources,
                        digest=summary["train"]["fingerprint"], context="training")
    if data.val_records:
        tracker.log_dataset(data.val_records, name="validation", source=sources,
                            digest=summary["validation"]["fingerprint"], context="validation")


# -- evaluation ----------------------------------------------------------------------------


def _evaluate(model, tokenizer, records, cfg: RunConfig, label: str, task: str = "generate") -> dict:
    info(f"evaluating {label} on {len(records)} held-out examples")
    if task == "classify":
        from ..runs import OpenedModel

        opened = OpenedModel(model, tokenizer, label, None, task)
        return classify_records(opened, records, metrics=["accuracy", "macro_f1"],
                                batch_size=cfg.eval.batch_size, label=label)
    return evaluate_records(model, tokenizer, records, metrics=cfg.eval.metrics,
                            max_length=cfg.data.max_length, max_new_tokens=cfg.eval.max_new_tokens,
                            batch_size=cfg.eval.batch_size, train_on_prompt=cfg.data.train_on_prompt,
                            label=label)


def _cached_eval(path: Path, compute) -> dict:
    """The base model's scores do not change on resume: reuse them."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    _write_json(path, result)
    return result


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False))


def _scores(result: dict | None) -> dict | None:
    if not result:
        return None
    out = {k: result[k] for k in ("loss", "perplexity") if k in result}
    out.update(result.get("metrics", {}))
    return out


def _asdict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def _print_summary(run_dir: Path, data: PreparedData, params, manifest: dict, before, after) -> None:
    tr = manifest["train"]
    rows = [
        ["run", str(run_dir)],
        ["training examples", f"{len(data.train_records):,}"
         + (f" packed into {data.packing['rows']} rows" if data.packing else "")],
        ["validation examples", f"{len(data.val_records):,}"],
        ["trainable parameters", f"{params.trainable:,} ({params.percent:.3f}%)"],
        ["steps / epochs", f"{tr['global_step']} / {tr['epochs']}"],
        ["final train loss", _fmt(tr["train_loss"])],
        ["validation loss", _fmt(manifest["metrics"]["validation_loss"])],
        ["wall time", f"{tr['seconds']:.0f} s"],
    ]
    print_table("training summary", ["", "value"], rows)
    results = [r for r in (before, after) if r]
    if results:
        header, table = compare_rows(results)
        print_table("held-out evaluation (before vs after)", header, table)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"
