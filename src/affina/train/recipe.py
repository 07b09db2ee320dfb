"""The SFT recipe: one path for every method and device, read top to bottom.

validate (config, method, metrics) → run directory (config + data files with their sha256) →
load model and data → evaluate the base → apply the method → train with validation and
checkpoints → save the artifact → template check → evaluate the result → run record + MLflow →
summary. Nothing is written before the whole config has been checked.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..config import RunConfig, config_to_dict
from ..data.loading import load_records
from ..data.prepare import PreparedData
from ..data.tokenize import stop_token_ids, template_sha256
from ..errors import AffinaError, ConfigError
from ..evaluate.evaluator import EvalSettings, evaluate_model, flat_scores
from ..evaluate.metrics import check_metric_names
from ..evaluate.report import compare_rows
from ..methods import build_method_config, get_method, trainable_report
from ..models import load_model, pick_device, pick_dtype
from ..record import (BaseModelInfo, DataInfo, MethodInfo, MetricsInfo, RunRecord, SplitInfo, TemplateInfo, TrainInfo,
                      data_file, git_commit, library_versions, write_record)
from ..record.trackers import WANDB_DIR, Trackers, open_trackers
from ..runs import OpenedModel
from ..ui import info, print_table, warn
from .callbacks import HistoryCallback, WeightsToHost
from .continual import (EarlierModel, continual_config, forgetting_rows, print_forgetting, read_plan,
                        write_plan)
from .display import TrainingDisplay
from .plots import plot_learning_curve
from . import distributed
from .profiles import after_training, apply_profile, check_device_settings
from .speed import Profile
from .steps import STEP_ARGUMENTS, recipe_trainer_class
from .rundir import CONFIG_NAME, config_of_run, make_run_dir, resume_point, split_resume_target

__all__ = ["train", "TrainResult", "CONFIG_NAME", "validate_run_config"]


@dataclass
class TrainResult:
    run_dir: Path
    record: RunRecord | None  # None on the ranks > 0 of a distributed run


def validate_run_config(cfg: RunConfig):
    """Everything about a config that can be checked without loading a model: each section's
    values, the method's own options, the metric names and the data files' existence. Returns
    (method, method config)."""
    cfg.validate()
    method = get_method(cfg.method.name)
    method_cfg = build_method_config(method, cfg.method.options)
    try:
        check_metric_names(cfg.eval.metrics)
    except ConfigError as e:
        raise ConfigError(f"eval.metrics: {e}") from None
    for key, paths in (("data.train", cfg.data.train), ("data.validation", cfg.data.validation),
                       ("data.mix", [p for p, _ in cfg.data.mix_entries()]), ("eval.data", cfg.eval.data)):
        for path in paths:
            if not Path(path).exists():
                raise ConfigError(f"{key}: file not found: {path}")
    if cfg.distributed.strategy == "fsdp" and not method.shards_with_fsdp:
        raise ConfigError(f"distributed.strategy=fsdp: method {method.name} does not train sharded "
                          f"(lora, dora, rslora, qlora and full do); use distributed.strategy=ddp")
    method.check_train_settings(cfg.train)
    if not (cfg.data.train or cfg.data.mix):
        raise ConfigError("no training data: set data.train (e.g. data.train=examples/product_json/train.jsonl) "
                          "or data.mix")
    return method, method_cfg


def train(cfg: RunConfig, *, resume: Path | None = None, checkpoint: str | None = None,
          callbacks: tuple = (), display: str = "bar", evaluate_after=None,
          earlier: EarlierModel | None = None) -> TrainResult:
    """Run one fine-tuning job. With `resume`, continue the run in that directory from its last
    intact checkpoint (or from `checkpoint`, `checkpoint-N`; `resume` may also be that checkpoint's
    directory), using the config and the (verified) data files saved there. `display`: bar,
    jsonl or quiet (see train/display.py). `evaluate_after`: False skips the held-out evaluation
    of the tuned model (a sweep's pruned trial). `earlier`: the model `train.continue_from`
    names, resolved (a registry reference is resolved by the CLI); default: that run directory."""
    started = time.time()
    if resume is not None:
        resume, checkpoint = split_resume_target(Path(resume), checkpoint)
        cfg = config_of_run(resume)
    cfg = distributed.adopt_launch(cfg)  # started by torchrun or accelerate launch: as they say
    method, method_cfg = validate_run_config(cfg)
    me = distributed.rank()  # under a launcher: only rank 0 writes; every rank trains
    distributed.init_process_group(cfg)
    if resume is None:
        cfg = distributed.shared_run_name(cfg)  # several ranks, one run directory
    continual = None
    if resume is None and cfg.train.continue_from:
        # The earlier run's method, base and weights; new data + replay as a data.mix.
        cfg, continual = continual_config(cfg, earlier or EarlierModel.of_run_dir(cfg.train.continue_from))
        method, method_cfg = validate_run_config(cfg)
    # The device and dtype first: a method's `auto` options follow them, and how the base loads
    # can depend on those (qlora's compute dtype); what they cannot do stops the run before its
    # directory is made.
    device = _device(cfg) or pick_device()
    dtype = _dtype(cfg) or pick_dtype(device)
    check_device_settings(cfg, device)
    if resume is not None:  # found once: opening a checkpoint to check it is not free
        run_dir, start_from = resume, resume_point(resume, checkpoint)
        continual = read_plan(run_dir)
    elif me.distributed:
        run_dir, start_from = make_run_dir(cfg) if me.main else None, None
        if continual and me.main:
            write_plan(run_dir, continual)
        distributed.barrier()
        run_dir = run_dir or Path(cfg.train.output_dir) / cfg.train.run_name
    else:
        run_dir, start_from = make_run_dir(cfg), None
        if continual:
            write_plan(run_dir, continual)
    if not me.main:
        display = "quiet"
        cfg = dataclasses.replace(cfg, track=dataclasses.replace(cfg.track, mlflow=False,
                                                                   tensorboard=False, wandb=False))
    info(f"run directory: {run_dir}")

    from transformers import set_seed

    set_seed(cfg.train.seed)
    attention = None if cfg.model.attn_implementation == "auto" else cfg.model.attn_implementation
    method_cfg = method.resolve_for_device(method_cfg, device.type, cfg.train.profile,
                                           str(dtype).removeprefix("torch."))
    loaded = load_model(cfg.model.spec, device=device, dtype=dtype, for_training=True,
                        attn_implementation=attention, **method.load_options(method_cfg))
    data = method.prepare_data(method_cfg, cfg.data, loaded.tokenizer, cfg.train.seed)
    method_cfg = method.resolve_config(method_cfg, data)
    for message in data.warnings:
        warn(message)
    evaluation = load_records(cfg.eval.data) if cfg.eval.data else None
    eval_records = evaluation.records[: cfg.eval.limit] if evaluation else []
    settings = EvalSettings.of_run_config(cfg)
    # The stop rule and template the run trains with: recorded, then checked against the artifact.
    stops = stop_token_ids(loaded.tokenizer, loaded.model.generation_config)
    template = TemplateInfo(template_sha256(loaded.tokenizer), stops,
                            [loaded.tokenizer.convert_ids_to_tokens(i) for i in stops])

    continued = _mlflow_run_of(run_dir) if me.main else None
    with open_trackers(cfg.track, run_dir, mlflow_run_id=continued) as tracker, ExitStack() as stack:
        if continued is None:
            # MLflow refuses changed param values; a resumed run's data paths are re-resolved
            # (absolute, possibly moved), so its params stay those logged when it started.
            tracker.log_params(config_to_dict(cfg))
        _log_datasets(tracker, data)
        summary = data.summary()  # tags make runs findable by data fingerprint (lineage)
        tracker.set_tags({"affina.run_dir": str(run_dir.resolve()), "affina.method": method.name,
                          "affina.data.train_fingerprint": summary["train"]["fingerprint"],
                          "affina.data.validation_fingerprint": summary["validation"]["fingerprint"],
                          "affina.data.source_fingerprint": summary.get("source_fingerprint")})
        if me.main:
            _remember_mlflow_run(run_dir, tracker.run_id)

        before = None
        # A continued run's "before" is the earlier model (below), not the base.
        if (eval_records and cfg.eval.compare_base and method.task.compares_base and not continual
                and me.main):
            base_view = OpenedModel(loaded.model, loaded.tokenizer, "base", None, None, stops)
            before = _cached_eval(run_dir / "eval" / "before.json", lambda: _evaluate(
                base_view, eval_records, settings, "before"))

        set_seed(cfg.train.seed)
        model = method.apply(loaded.model, method_cfg)
        if continual:
            model = method.continue_weights(model, method_cfg,
                                            Path(continual["run_dir"]) / continual["artifact"])
        model = method.attach_data(model, method_cfg, data, loaded.tokenizer)
        earlier_before = []
        if continual and me.main:  # the earlier model, before the first step: "before" of every set
            earlier_view = OpenedModel(model, loaded.tokenizer, "earlier", None, method, stops)
            if eval_records:
                before = _cached_eval(run_dir / "eval" / "before.json", lambda: _evaluate(
                    earlier_view, eval_records, settings, "the earlier model"))
            earlier_before = [_cached_eval(run_dir / "eval" / f"earlier-{i}-before.json", lambda s=s: _evaluate(
                earlier_view, _set_records(s), settings, f"the earlier model on {Path(s['path']).name}"))
                for i, s in enumerate(continual["earlier_eval"])]
        params = trainable_report(model)
        info(f"method {method.name}: {params.trainable:,} trainable of {params.total:,} "
             f"parameters ({params.percent:.3f}%)")
        profile = apply_profile(model, cfg, loaded.device)

        trainer = _build_trainer(model, loaded.tokenizer, data, cfg, run_dir,
                                 [HistoryCallback(tracker), TrainingDisplay(display), *callbacks],
                                 method.collator(method_cfg, loaded.tokenizer),
                                 method.compute_metrics(method_cfg), method, method_cfg, profile)
        if method.trains:  # fewshot: nothing to optimise, the run is its prompt recipe
            _train(trainer, start_from)
        val_metrics = _final_validation(trainer) if data.val else {}
        artifact_dir = run_dir / "adapter"
        sharded = getattr(trainer, "is_fsdp_enabled", False)
        if sharded:
            # Sharded weights: every rank takes part in gathering them, rank 0 writes
            # save_pretrained's files (the method's own artifact, see Method.shards_with_fsdp).
            trainer.save_model(str(artifact_dir))
            (artifact_dir / "training_args.bin").unlink(missing_ok=True)
        if not me.main:  # rank 0 saves, evaluates and records
            return TrainResult(run_dir, None)
        stack.enter_context(after_training(profile, model))  # eager, full-precision evaluation

        if not sharded:
            method.save(model, artifact_dir)
        loaded.tokenizer.save_pretrained(artifact_dir)
        _check_saved_template(artifact_dir, template)
        history = trainer.state.log_history
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
        stopping = _stopping_record(trainer, run_dir)
        plot_learning_curve(history, run_dir / "learning_curve.png",
                            f"{method.name} on {Path(cfg.model.spec).name}",
                            best_step=stopping["best_step"],
                            stop_step=stopping["stop_step"] if stopping["stopped_early"] else None,
                            ylabel=method.loss_label)

        after = None
        tuned = OpenedModel(model, loaded.tokenizer, "after", None, method, stops)
        if eval_records and (evaluate_after is None or evaluate_after()):
            after = _evaluate(tuned, eval_records, settings, "after")
            _write_json(run_dir / "eval" / "after.json", after)
        if continual:  # forgetting: every earlier set, before vs after
            earlier_after = [_evaluate(tuned, _set_records(s), settings, f"after, on {Path(s['path']).name}")
                             for s in continual["earlier_eval"]]
            continual["forgetting"] = forgetting_rows(
                continual["earlier_eval"], [flat_scores(r) for r in earlier_before],
                [flat_scores(r) for r in earlier_after])
            _write_json(run_dir / "eval" / "forgetting.json", continual["forgetting"])

        record = RunRecord(
            kind=method.artifact_kind, artifact=artifact_dir.name,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            base_model=BaseModelInfo(cfg.model.spec, str(loaded.path), loaded.fingerprint,
                                     type(loaded.model).__name__),
            data=_data_info(data, evaluation, run_dir),
            method=MethodInfo(method.name, dataclasses.asdict(method_cfg), params.trainable,
                              params.total, round(params.percent, 4), params.trainable_bytes,
                              method.report(model, method_cfg)),
            seed=cfg.train.seed, device=str(loaded.device), versions=library_versions(),
            git_commit=git_commit(), mlflow_run_id=tracker.run_id,
            train=TrainInfo(global_step=trainer.state.global_step,
                            epochs=round(trainer.state.epoch or 0.0, 4),
                            train_loss=_last(history, "loss"),
                            seconds=round(time.time() - started, 1), world_size=me.world_size,
                            profile=profile.name, chunked_loss=profile.chunked_loss,
                            mixed_precision=profile.mixed_precision,
                            fused_projections=profile.fuse_projections, **stopping),
            metrics=MetricsInfo(val_metrics.get("eval_loss"), flat_scores(before), flat_scores(after)),
            template=template, continual=continual)
        write_record(run_dir, record)
        tracker.log_metrics({"final_validation_loss": val_metrics.get("eval_loss", float("nan"))})
        for tag, result in (("before", before), ("after", after)):
            if result:
                tracker.log_metrics({f"eval_{tag}_{k}": v for k, v in flat_scores(result).items()})
        _log_run_files(tracker, run_dir, cfg.track.log_checkpoints)

    _print_summary(run_dir, data, params, record, before, after, method.task.compares_base)
    if continual:
        print_forgetting(continual["forgetting"])
    return TrainResult(run_dir, record)


def _set_records(entry: dict):
    """One earlier evaluation set's records (its file is the one recorded: sha256-checked)."""
    from ..data.loading import file_sha256

    path = Path(entry["path"])
    if file_sha256(path) != entry["sha256"]:
        raise AffinaError(f"earlier evaluation set {path} changed while this run trained; "
                          "restore it and resume the run")
    return load_records([str(path)]).records


# -- setup ---------------------------------------------------------------------------------


def _train(trainer, checkpoint: str | None) -> None:
    """Train, or continue from `checkpoint`. A checkpoint taken at the last step (a run killed
    after saving it, before its record was written) is restored without training: the trainer
    would otherwise take one step past the end, as it checks for the end only after a step."""
    if checkpoint is not None:
        from transformers import TrainerState

        state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        if 0 < state.max_steps <= state.global_step:
            trainer._load_from_checkpoint(checkpoint)  # the weights only; nothing is left to train
            trainer.state = state
            return
    trainer.train(resume_from_checkpoint=checkpoint)


def _mlflow_run_of(run_dir: Path) -> str | None:
    """A resumed run continues its own MLflow run instead of opening a second one."""
    marker = run_dir / ".mlflow_run_id"
    return marker.read_text().strip() or None if marker.is_file() else None


def _remember_mlflow_run(run_dir: Path, run_id: str | None) -> None:
    if run_id:
        (run_dir / ".mlflow_run_id").write_text(run_id)


def _device(cfg: RunConfig):
    import torch

    return None if cfg.model.device == "auto" else torch.device(cfg.model.device)


def _dtype(cfg: RunConfig):
    import torch

    return None if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)


def _build_trainer(model, tokenizer, data: PreparedData, cfg: RunConfig, run_dir: Path, callbacks,
                   collator, compute_metrics=None, method=None, method_cfg=None,
                   profile: Profile = Profile()):
    from transformers import EarlyStoppingCallback, Trainer

    args = _training_args(model, data, cfg, run_dir, checkpointing=profile.checkpointing,
                          bf16=profile.bf16_autocast)
    callbacks = list(callbacks)
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(cfg.train.early_stopping_patience,
                                               cfg.train.early_stopping_threshold))
    if profile.fp8_base or profile.host_embeddings:
        callbacks.append(WeightsToHost(fp8=profile.fp8_base, embeddings=profile.host_embeddings))
    from transformers.trainer_callback import PrinterCallback

    trainer = method.build_trainer(model, tokenizer, data, args, callbacks, method_cfg) if method else None
    if trainer is None:
        if profile.cuda_graphs:  # a few lengths, so a few recorded graphs serve every batch
            collator.pad_to_multiple_of = cfg.train.pad_to_multiple_of  # (methods/base.py checked the method)
        # The profile's loss step (train/speed.py), no device read between logging steps (steps.py)
        trainer_class = recipe_trainer_class(Trainer, profile)
        trainer = trainer_class(model=model, args=args, train_dataset=data.train,
                                eval_dataset=data.val or None, data_collator=collator,
                                compute_metrics=compute_metrics, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # raw metric dicts; TrainingDisplay replaces them
    return trainer


def _training_args(model, data: PreparedData, cfg: RunConfig, run_dir: Path, checkpointing=False,
                   bf16=False):
    from transformers import TrainingArguments

    t = cfg.train
    device = next(model.parameters()).device
    has_val = bool(data.val)
    return TrainingArguments(
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
        optim=t.optimizer, neftune_noise_alpha=t.neftune_alpha or None,
        **({"gradient_checkpointing": True} if t.gradient_checkpointing or checkpointing else {}),
        use_cpu=device.type == "cpu", bf16=bf16,
        **distributed.trainer_arguments(cfg, model, device.type),
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        disable_tqdm=True,  # TrainingDisplay shows progress
        **STEP_ARGUMENTS,  # the recipe's Trainer counts tokens seen itself (train/steps.py)
        **_best_checkpoint_args(t, has_val),
    )


def _best_checkpoint_args(t, has_val: bool) -> dict:
    """TrainingArguments for early stopping: the trainer can only restore a checkpoint it wrote
    at a validation step, so checkpoints must fall on validation steps."""
    if t.early_stopping_patience == 0:
        return {}
    if not has_val:  # the config asked for validation; the data left none (e.g. too few rows)
        raise ConfigError("train.early_stopping_patience needs validation examples, and the data "
                          "left none; add data.validation or raise data.val_fraction")
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


def _log_datasets(tracker: Trackers, data: PreparedData) -> None:
    summary = data.summary()
    sources = ",".join(f["path"] for f in data.files if f.get("role") == "train")
    tracker.log_dataset(data.train_records, name="train", source=sources,
                        digest=summary["train"]["fingerprint"], context="training")
    if data.val_records:
        tracker.log_dataset(data.val_records, name="validation", source=sources,
                            digest=summary["validation"]["fingerprint"], context="validation")


def _final_validation(trainer) -> dict:
    """The trained model's validation metrics: those of the evaluation at its last step when it
    had one (and no best checkpoint was reloaded after it), else a fresh evaluation."""
    state = trainer.state
    last = next((h for h in reversed(state.log_history) if "eval_loss" in h), None)
    if last and last.get("step") == state.global_step and not trainer.args.load_best_model_at_end:
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


def _data_info(data: PreparedData, evaluation, run_dir: Path) -> DataInfo:
    """The data the run trained on and the evaluation files that scored it (`evaluation`: their
    LoadResult, or None)."""
    summary = data.summary()
    files = [data_file(f["path"], f.get("role", "train"), run_dir, sha256=f.get("sha256"),
                       format=f.get("format", ""), rows=f.get("rows", 0)) for f in data.files]
    files += [data_file(f["path"], "eval", run_dir, sha256=f["sha256"], format=f["format"], rows=f["rows"])
              for f in (evaluation.files if evaluation else [])]

    def split(d: dict) -> SplitInfo:
        d = dict(d)
        return SplitInfo(d.pop("rows", 0), d.pop("fingerprint", None), d)

    return DataInfo(files=files, train=split(summary["train"]), validation=split(summary["validation"]),
                    packing=summary["packing"], chat_template=summary["chat_template"],
                    warnings=list(summary["warnings"]), mix=summary.get("mix"),
                    source_fingerprint=summary.get("source_fingerprint"))


def _check_saved_template(artifact_dir: Path, template: TemplateInfo) -> None:
    """The template parity check at the end of training: the tokenizer saved with the artifact
    (what `generate`, `eval`, export and the server load) carries the chat template and stop
    tokens the run trained with."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(artifact_dir)
    if template_sha256(saved) != template.sha256:
        raise AffinaError(f"{artifact_dir}: the saved tokenizer's chat template differs from the one "
                          "used in training; this is a bug, please report it")
    missing = set(template.stop_token_ids) - set(stop_token_ids(saved))
    if missing - {None}:
        warn(f"the saved tokenizer does not name stop token(s) {sorted(missing)} itself; they are "
             "recorded in the run record, which generation and serving use")


def _log_run_files(tracker: Trackers, run_dir: Path, checkpoints: bool) -> None:
    """The artifact, record, config, history, plots and eval reports go to MLflow; trainer
    checkpoints (optimizer state: several times the artifact) only when asked for."""
    for path in sorted(run_dir.iterdir()):
        if path.name == "checkpoints" and not checkpoints:
            continue
        if path.name.startswith(".") or path.name == WANDB_DIR:  # W&B keeps its own files
            continue
        if path.is_dir():
            tracker.log_artifacts(path, artifact_path=f"run/{path.name}")
        else:
            tracker.log_artifact(path, artifact_path="run")


# -- evaluation ----------------------------------------------------------------------------


def _evaluate(opened: OpenedModel, records, settings: EvalSettings, label: str) -> dict:
    info(f"evaluating {label} on {len(records)} held-out examples")
    return evaluate_model(opened, records, settings, label=label)


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


def _last(history: list[dict], key: str):
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def _print_summary(run_dir: Path, data: PreparedData, params, record: RunRecord, before, after,
                   compares_base: bool) -> None:
    tr = record.train
    rows = [
        ["run", str(run_dir)],
        ["training examples", f"{len(data.train_records):,}"
         + (f" packed into {data.packing['rows']} rows" if data.packing else "")],
        ["validation examples", f"{len(data.val_records):,}"],
        ["trainable parameters", f"{params.trainable:,} ({params.percent:.3f}%)"],
        ["steps / epochs", f"{tr.global_step} / {tr.epochs}"],
        ["training step", f"profile {tr.profile}, precision {tr.mixed_precision}"
         + (", projections fused" if tr.fused_projections else "")
         + (f", {tr.world_size} processes" if tr.world_size > 1 else "")],
        ["final train loss", _fmt(tr.train_loss)],
        ["validation loss", _fmt(record.metrics.validation_loss)],
        ["wall time", f"{tr.seconds:.0f} s"],
    ]
    print_table("training summary", ["", "value"], rows)
    results = [r for r in (before, after) if r]
    if results:
        header, table = compare_rows(results)
        title = ("held-out evaluation (before vs after)" if len(results) == 2 else
                 "held-out evaluation (after; a new head has no before)" if not compares_base else
                 "held-out evaluation")
        print_table(title, header, table)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"
