"""RunConfig: everything a run needs, typed, documented, nested by concern.

Loaded from YAML (`-c run.yaml`) and overridden with dotted keys on the command line
(`train.lr=1e-4 method.r=16`). Each field's `help` is the reference documentation
(`affina config --help-keys` prints it). The `method:` section is free-form here and validated
by the chosen method's own config class (see `affina.methods`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

__all__ = [
    "DataConfig", "ModelConfig", "MethodConfig", "TrainConfig", "EvalConfig", "TrackConfig",
    "ReplayConfig", "RunConfig", "load_config", "read_yaml_mapping", "apply_overrides", "apply_values", "config_to_dict", "describe_keys",
]


_DTYPES = ("auto", "float32", "bfloat16", "float16")
BUILTIN_TEMPLATES = ("chatml",)  # data.chat_template names; their texts: affina.data.templates
_ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2")
_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_bnb_8bit",
               "paged_adamw_8bit", "paged_adamw_32bit")
PROFILES = ("default", "speed", "memory")  # train.profile; what each does: affina.train.speed
MIXED_PRECISION = ("auto", "bf16", "fp8", "none")  # train.mixed_precision
_PROFILES = PROFILES
_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
               "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


def _f(default: Any, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    train: list[str] = _f([], "Training data files (JSONL, JSON, CSV, Parquet or a datasets directory).")
    validation: list[str] = _f([], "Explicit validation files; when empty, `val_fraction` of train is held out.")
    val_fraction: float = _f(0.1, "Seeded fraction of the training rows held out for validation.")
    format: str | None = _f(None, "Force a format (alpaca, chat, sharegpt, prompt_completion, text, text_label); auto-detected when unset.")
    max_length: int = _f(512, "Maximum tokens per example; longer examples are truncated and counted.")
    packing: bool = _f(False, "Pack short examples into rows of `max_length` tokens; attention and loss never cross examples.")
    train_on_prompt: bool = _f(False, "Compute loss on prompt tokens too (default: only on assistant replies; raw text always trains on every token).")
    dedupe: bool = _f(False, "Drop exact duplicate examples (they are always counted and reported).")
    mix: list | dict = _f([], "Weighted mix of training files instead of data.train: a list of {path: FILE, weight: W} or a mapping FILE: W. Examples are drawn per file in proportion to the weights (seeded; without replacement, repeating a file only when its share exceeds its size).")
    mix_size: int | None = _f(None, "Number of examples drawn for data.mix; default the total rows of its files.")
    chat_template: str | None = _f(None, "Chat template replacing the tokenizer's: a Jinja template string, a path to a .jinja file, or a builtin name (chatml). Saved with the artifact, so generation and serving use it.")
    system_prompt: str | None = _f(None, "System message put first in every conversation that has none (training, evaluation, generation and serving: it becomes part of the saved chat template); `none`: an empty one, so a template's own default system prompt is not injected.")

    def validate(self) -> None:
        _check(0 <= self.val_fraction < 1, "data.val_fraction", self.val_fraction, "in [0, 1)")
        _check(self.max_length >= 2, "data.max_length", self.max_length, ">= 2")
        if self.mix and self.train:
            raise ConfigError("set data.train or data.mix, not both (data.mix lists every training "
                              "file with its weight)")
        self.mix_entries()
        _check(self.mix_size is None or self.mix_size >= 1, "data.mix_size", self.mix_size, ">= 1 (or unset)")
        if self.chat_template is not None:
            _check_chat_template(self.chat_template)

    def mix_entries(self) -> list[tuple[str, float]]:
        """`data.mix` as (path, weight) pairs, in order; ConfigError on a malformed entry."""
        items = list(self.mix.items()) if isinstance(self.mix, dict) else []
        if isinstance(self.mix, list):
            for entry in self.mix:
                if not (isinstance(entry, dict) and set(entry) == {"path", "weight"}):
                    raise ConfigError(f"data.mix entries must look like {{path: FILE, weight: W}}, "
                                      f"got {entry!r}")
                items.append((entry["path"], entry["weight"]))
        elif not isinstance(self.mix, dict):
            raise ConfigError(f"data.mix must be a list of {{path, weight}} or a mapping FILE: W, got {self.mix!r}")
        out = []
        for path, weight in items:
            ok = isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0
            _check(ok, f"data.mix[{path}].weight", weight, "a number > 0")
            out.append((str(path), float(weight)))
        return out


@dataclass
class ModelConfig:
    spec: str = _f("default", "Base model: `default` (SmolLM2-135M-Instruct, embedded), a local HF directory, a .gguf file or a hub id.")
    device: str = _f("auto", "`auto` (CUDA when available, else CPU), `cpu` or `cuda[:N]`.")
    dtype: str = _f("auto", "`auto` (bf16 on CUDA where supported, float32 on CPU), `float32`, `bfloat16` or `float16`.")
    attn_implementation: str = _f("auto", "Attention kernel for training: `auto` (the model's default), `eager`, `sdpa` or `flash_attention_2` (needs the flash-attn package and a CUDA device).")

    def validate(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", self.device),
               "model.device", self.device, "auto, cpu, cuda, cuda:N or mps")
        _check(self.dtype in _DTYPES, "model.dtype", self.dtype, ", ".join(_DTYPES))
        _check(self.attn_implementation in _ATTENTION, "model.attn_implementation",
               self.attn_implementation, ", ".join(_ATTENTION))
        if self.attn_implementation == "flash_attention_2":
            import importlib.util

            if importlib.util.find_spec("flash_attn") is None:
                raise ConfigError("model.attn_implementation=flash_attention_2 needs the flash-attn "
                                  "package (pip install flash-attn) and a CUDA device; use sdpa")
            if self.device in ("cpu", "mps"):
                raise ConfigError(f"model.attn_implementation=flash_attention_2 needs a CUDA device, "
                                  f"not model.device={self.device}; use sdpa")


@dataclass
class MethodConfig:
    name: str = _f("lora", "Adaptation method; `affina methods` lists them. Its own fields go beside `name`.")
    options: dict = _f({}, "The method's own fields (validated by that method's config class).")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs", "Directory under which each run gets its own directory.")
    run_name: str | None = _f(None, "Name of the run directory; default `<method>-<timestamp>`.")
    seed: int = _f(42, "Seed for data split, shuffling, initialisation and dropout.")
    epochs: float = _f(1.0, "Passes over the training data (ignored when `max_steps` > 0).")
    max_steps: int = _f(-1, "Stop after this many optimiser steps (-1: use `epochs`).")
    batch_size: int = _f(8, "Examples (or packed rows) per device per step.")
    grad_accum: int = _f(1, "Gradient accumulation steps; effective batch = batch_size x grad_accum.")
    lr: float = _f(2e-4, "Peak learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_ratio: float = _f(0.05, "Fraction of steps with linear warm-up.")
    scheduler: str = _f("cosine", "Learning-rate schedule (linear, cosine, constant, constant_with_warmup).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    eval_steps: int = _f(50, "Compute validation loss every this many steps (0: only at the end).")
    save_steps: int = _f(50, "Write a checkpoint every this many steps (used by --resume).")
    save_total_limit: int = _f(2, "Keep at most this many checkpoints.")
    logging_steps: int = _f(5, "Log training loss every this many steps.")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory by recomputing activations.")
    early_stopping_patience: int = _f(0, "Stop after this many validations in a row without improvement of `metric_for_best` (0: never stop early). Needs validation data and save_steps a multiple of eval_steps.")
    early_stopping_threshold: float = _f(0.0, "Minimum improvement of `metric_for_best` that counts as an improvement for early stopping.")
    metric_for_best: str = _f("eval_loss", "Validation measure that picks the best checkpoint and drives early stopping (`eval_loss`, or another `eval_*` key the trainer reports).")
    greater_is_better: bool = _f(False, "Whether a higher `metric_for_best` is better (false for losses).")
    load_best: bool = _f(True, "With early stopping on, restore the best checkpoint's weights at the end (recorded in the run record as best_checkpoint).")
    optimizer: str = _f("adamw_torch", "Optimizer (TrainingArguments.optim): adamw_torch, adamw_torch_fused, adafactor, sgd, adamw_bnb_8bit, paged_adamw_8bit, paged_adamw_32bit (the last three from bitsandbytes).")
    profile: str = _f("default", "Training-step profile (docs/training.md): default (the plain transformers step; on the CPU with the chunked loss, see chunked_loss); speed (bf16 adapter inputs kept bf16, chunked output projection + cross-entropy, per-block torch.compile on CUDA); memory (chunked loss, activation checkpointing, saved activations offloaded to CPU on CUDA).")
    chunked_loss: str = _f("auto", "Chunked output projection + cross-entropy, so the [tokens x vocabulary] logits are never held (same loss and gradients): auto (on under the speed and memory profiles, and on the CPU under every profile), true, false.")
    loss_chunk_tokens: int = _f(1024, "With the chunked loss: tokens whose logits are computed at a time.")
    mixed_precision: str = _f("auto", "Autocast for the matmuls, fp32 master weights: auto (bf16 on CUDA when the weights are bf16; none on the CPU: faster there with avx512_bf16, but its loss curve strayed from fp32's by more than 2%, docs/training.md), bf16, fp8 (bf16 autocast, and the frozen base's matmuls in fp8 on GPUs with fp8 tensor cores, H100/H200: an approximation, like QLoRA's base; adapter methods only, not with distributed.strategy=fsdp; affina.train.fp8), none.")
    cuda_graphs: bool = _f(False, "Under train.profile=speed on one CUDA device: each compiled decoder block replays as CUDA graphs (torch.compile mode reduce-overhead), so the GPU stops waiting for the CPU to launch kernels; batches are padded to a multiple of train.pad_to_multiple_of tokens so a few graphs serve every length. Needs grad_accum 1 and one process (docs/training.md).")
    fuse_projections: bool = _f(False, "Sibling projections that read one input (attention's q/k/v, the MLP's gate/up) computed together: one base matmul over their weights laid end to end (no copy kept) and one adapter down-projection, instead of one each; the same loss and gradients (affina.train.fused, docs/training.md). Fewer, larger matmuls for a GPU; on the CPU no faster, and it copies weights the loader had memory-mapped. Not with distributed.strategy=fsdp.")
    pad_to_multiple_of: int = _f(64, "With cuda_graphs: batches are padded to a multiple of this many tokens (each length records graphs of its own; packed rows are all one length already).")
    neftune_alpha: float | None = _f(None, "NEFTune noise scale on the input embeddings during training (Jain et al. 2023, arXiv:2310.05914; the paper uses 5-15); unset or 0: off.")
    continue_from: str | None = _f(None, "Continue an earlier model on new data: a run directory, one of its checkpoints (RUN/checkpoints/checkpoint-N), or NAME@VERSION|ALIAS from the registry (`affina train --continue-from`). Its method and options are kept, its weights are the starting point, `replay.fraction` of the training examples are drawn from its training data, and every earlier evaluation set is scored before and after (forgetting).")
    rewarm_ratio: float = _f(0.1, "With continue_from: the fraction of steps over which the learning rate is re-warmed from 0 to train.lr before it decays again (replaces warmup_ratio; Ibrahim et al. 2024, arXiv:2403.08763).")

    def validate(self) -> None:
        _check(self.optimizer in _OPTIMIZERS, "train.optimizer", self.optimizer, ", ".join(_OPTIMIZERS))
        _check(self.neftune_alpha is None or self.neftune_alpha >= 0, "train.neftune_alpha",
               self.neftune_alpha, ">= 0 (0 or unset: off)")
        if "bnb" in self.optimizer or "paged" in self.optimizer:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError(f"train.optimizer={self.optimizer} needs the bitsandbytes package "
                                  "(pip install bitsandbytes)")
        _check(self.profile in _PROFILES, "train.profile", self.profile, ", ".join(_PROFILES))
        self.chunked_loss = str(self.chunked_loss).lower()  # YAML true/false arrive as booleans
        _check(self.chunked_loss in ("auto", "true", "false"), "train.chunked_loss", self.chunked_loss,
               "auto, true or false")
        _check(self.mixed_precision in MIXED_PRECISION, "train.mixed_precision", self.mixed_precision,
               ", ".join(MIXED_PRECISION))
        _check(self.loss_chunk_tokens >= 1, "train.loss_chunk_tokens", self.loss_chunk_tokens, ">= 1")
        _check(self.pad_to_multiple_of >= 1, "train.pad_to_multiple_of", self.pad_to_multiple_of, ">= 1")
        _check(self.max_steps == -1 or self.max_steps >= 1, "train.max_steps", self.max_steps, "-1 or >= 1")
        _check(self.max_steps >= 1 or self.epochs > 0, "train.epochs", self.epochs, "> 0")
        for key in ("batch_size", "grad_accum", "save_steps", "save_total_limit", "logging_steps"):
            _check(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), ">= 1")
        _check(self.lr > 0, "train.lr", self.lr, "> 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, ">= 0 (0: no clipping)")
        _check(self.eval_steps >= 0, "train.eval_steps", self.eval_steps, ">= 0")
        _check(self.scheduler in _SCHEDULERS, "train.scheduler", self.scheduler, ", ".join(_SCHEDULERS))
        _check(0 <= self.rewarm_ratio < 1, "train.rewarm_ratio", self.rewarm_ratio, "in [0, 1)")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience",
               self.early_stopping_patience, ">= 0 (0 turns early stopping off)")
        if self.run_name is not None:
            _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}", self.run_name) is not None,
                   "train.run_name", self.run_name, "one path component of letters, digits, '.', '_', '+', '-'")
        if self.early_stopping_patience and self.eval_steps and self.save_steps % self.eval_steps:
            raise ConfigError(f"train.early_stopping_patience needs train.save_steps a multiple of "
                              f"train.eval_steps (got save_steps={self.save_steps}, eval_steps="
                              f"{self.eval_steps}); set train.save_steps={self.eval_steps}")


@dataclass
class EvalConfig:
    data: list[str] = _f([], "Held-out files evaluated before and after training (loss + generation metrics); empty: skip.")
    metrics: list[str] = _f([], "Generation metrics: exact_match, token_f1, rouge_l, chrf, bleu, json_valid, json_fields, accuracy, macro_f1, or your own as package.module:function; empty: chosen from the task and the data (JSON fields for JSON replies, text overlap otherwise, accuracy/macro-F1 for labels).")
    max_new_tokens: int = _f(128, "Generation budget per example.")
    batch_size: int = _f(16, "Examples generated at once.")
    limit: int | None = _f(None, "Evaluate only the first N examples.")
    compare_base: bool = _f(True, "Also evaluate the base model before training, for a before/after table.")

    def validate(self) -> None:
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens", self.max_new_tokens, ">= 1")
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size, ">= 1")
        _check(self.limit is None or self.limit >= 1, "eval.limit", self.limit, ">= 1 (or unset)")


@dataclass
class TrackConfig:
    mlflow: bool = _f(True, "Log params, per-step metrics, dataset inputs and the artifact to MLflow.")
    uri: str | None = _f(None, "MLflow tracking URI; default a sqlite store under $AFFINA_HOME.")
    experiment: str = _f("affina", "MLflow experiment name.")
    log_checkpoints: bool = _f(False, "Also upload the trainer checkpoints (optimizer state included) to MLflow; by default only the artifact, record, config, history and plots go there.")
    tensorboard: bool = _f(False, "Also write TensorBoard event files (params, per-step metrics) under the run's tb/ directory; needs `pip install tensorboard` (or tensorboardX).")
    wandb: bool = _f(False, "Also log to Weights & Biases; offline (files under the run's wandb/) unless WANDB_MODE is set; needs `pip install wandb`.")
    wandb_project: str = _f("affina", "W&B project name.")

    def validate(self) -> None:
        _check(bool(self.experiment), "track.experiment", self.experiment, "a non-empty name")
        import importlib.util

        if self.tensorboard and not (importlib.util.find_spec("tensorboard")
                                     or importlib.util.find_spec("tensorboardX")):
            raise ConfigError("track.tensorboard=true needs the tensorboard package: "
                              "pip install tensorboard (or pip install 'affina[trackers]')")
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise ConfigError("track.wandb=true needs the wandb package: pip install wandb "
                              "(or pip install 'affina[trackers]')")
        _check(bool(self.wandb_project), "track.wandb_project", self.wandb_project, "a non-empty name")


@dataclass
class DistributedConfig:
    strategy: str = _f("none", "none: one process; ddp: data-parallel (every method); fsdp: sharded with FSDP2 (lora, qlora, full). With ddp/fsdp, `affina train` starts the launcher itself on one machine; `affina train --print-launch` prints the command for each machine. A process that torchrun or `accelerate launch` started with several processes trains ddp when this says none.")
    launcher: str = _f("torchrun", "What `affina train` and --print-launch start the processes with: torchrun (PyTorch's) or accelerate (`accelerate launch --multi_gpu`, the same torchrun underneath); either trains the same way.")
    nproc_per_node: int = _f(0, "Processes per machine (0: one per CUDA device, or 2 on a machine without one).")
    nnodes: int = _f(1, "Machines taking part.")
    master_addr: str = _f("127.0.0.1", "Address of the first machine (rank 0), reachable from the others.")
    master_port: int = _f(29500, "A free port on the first machine.")
    backend: str = _f("auto", "Collective backend: auto (nccl on CUDA, gloo on the CPU), nccl, gloo.")
    find_unused_parameters: bool = _f(False, "DDP: look for parameters that got no gradient each step (only needed by models with unused branches; costs a graph traversal).")

    def validate(self) -> None:
        _check(self.strategy in ("none", "ddp", "fsdp"), "distributed.strategy", self.strategy, "none, ddp or fsdp")
        _check(self.launcher in ("torchrun", "accelerate"), "distributed.launcher", self.launcher, "torchrun or accelerate")
        _check(self.nproc_per_node >= 0, "distributed.nproc_per_node", self.nproc_per_node, ">= 0 (0: auto)")
        _check(self.nnodes >= 1, "distributed.nnodes", self.nnodes, ">= 1")
        _check(1 <= self.master_port <= 65535, "distributed.master_port", self.master_port, "a port, 1-65535")
        _check(self.backend in ("auto", "nccl", "gloo"), "distributed.backend", self.backend, "auto, nccl or gloo")


@dataclass
class ReplayConfig:
    fraction: float = _f(0.25, "With train.continue_from: the share of training examples drawn (seeded by train.seed, without replacement where the earlier data is large enough) from the earlier model's training data, so it keeps what it knew (experience replay); 0: new data only.")

    def validate(self) -> None:
        _check(0 <= self.fraction < 1, "replay.fraction", self.fraction, "in [0, 1)")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def validate(self) -> "RunConfig":
        """Check every section's values (not only their types) and the settings that conflict
        across sections; raises ConfigError naming the key. Called whenever a config is built,
        so a bad value stops a run before anything is written or loaded."""
        for section in (self.data, self.model, self.train, self.eval, self.track, self.distributed, self.replay):
            section.validate()
        t = self.train
        if t.early_stopping_patience and (t.eval_steps <= 0 or not (self.data.validation
                                                                   or self.data.val_fraction > 0)):
            raise ConfigError("train.early_stopping_patience needs validation: set train.eval_steps > 0 "
                              "and data.val_fraction > 0 or data.validation")
        if self.distributed.strategy == "fsdp" and t.mixed_precision == "fp8":
            raise ConfigError("train.mixed_precision=fp8 keeps whole fp8 copies of the frozen weights, which "
                              "FSDP shards: use distributed.strategy=ddp, or train.mixed_precision=bf16")
        if self.distributed.strategy == "fsdp" and t.fuse_projections:
            raise ConfigError("train.fuse_projections lays sibling weights end to end in one tensor, which FSDP "
                              "shards per parameter: use distributed.strategy=ddp, or train.fuse_projections=false")
        if t.cuda_graphs:
            if t.profile != "speed":
                raise ConfigError("train.cuda_graphs replays the speed profile's compiled blocks: "
                                  "set train.profile=speed")
            if t.grad_accum != 1:
                raise ConfigError("train.cuda_graphs needs train.grad_accum=1 (a replay reuses the memory the "
                                  "previous micro-batch's gradients are in); raise train.batch_size instead")
            if self.distributed.strategy != "none":
                raise ConfigError("train.cuda_graphs runs in one process: set distributed.strategy=none, "
                                  "or train.cuda_graphs=false")
        if self.model.dtype == "float16":
            raise ConfigError("model.dtype=float16: training float16 weights without a loss scaler "
                              "underflows gradients; use bfloat16 (GPUs since Ampere) or float32")
        return self


_SECTIONS = {f.name: f.type for f in fields(RunConfig)}


def _check(ok, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")


def looks_like_template(value: str) -> bool:
    """A `data.chat_template` value that is Jinja text rather than a file path or builtin name."""
    return "{{" in value or "{%" in value


def _check_chat_template(value: str) -> None:
    """A Jinja string, an existing .jinja file, or a builtin name (texts in affina.data.templates)."""
    if looks_like_template(value) or value in BUILTIN_TEMPLATES:
        return
    if value.endswith(".jinja") or "/" in value or "\\" in value:
        _check(Path(value).expanduser().is_file(), "data.chat_template", value, "an existing .jinja file")
        return
    _check(False, "data.chat_template", value,
           "a Jinja template, a .jinja file or one of: " + ", ".join(BUILTIN_TEMPLATES))


def _section_types() -> dict[str, type]:
    hints = get_type_hints(RunConfig)
    return {name: hints[name] for name in _SECTIONS}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a field's annotated type."""
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        if type(None) in args or tp is Any:
            return None
        raise ConfigError(f"config key '{key}' must not be empty")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__}")
        return [_coerce(v, args[0], key) for v in value] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _set_key(cfg: RunConfig, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    section_name = parts[0]
    if section_name not in _SECTIONS:
        raise ConfigError(f"unknown config section '{section_name}' in '{dotted}'; sections: {', '.join(_SECTIONS)}")
    section = getattr(cfg, section_name)
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{section_name}' must be a mapping")
        for k, v in value.items():
            _set_key(cfg, f"{section_name}.{k}", v)
        return
    if len(parts) != 2:
        raise ConfigError(f"config key '{dotted}' is too deep; use section.key")
    key = parts[1]
    if section_name == "method" and key != "name":
        # Method fields are validated later by the method's own config class.
        section.options[key] = value
        return
    hints = get_type_hints(type(section))
    if key not in hints:
        raise ConfigError(
            f"unknown config key '{dotted}'; keys in '{section_name}': {', '.join(hints)}")
    setattr(section, key, _coerce(value, hints[key], dotted))


def apply_overrides(cfg: RunConfig, overrides: list[str], method_fields=None) -> RunConfig:
    """Apply `section.key=value` strings; values are parsed as YAML (`1e-4`, `true`, `[a, b]`).
    `method_fields`: see `apply_values`."""
    values = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        values[key.strip()] = value
    return apply_values(cfg, values, method_fields)


def apply_values(cfg: RunConfig, values: dict[str, Any], method_fields=None) -> RunConfig:
    """Set dotted keys in order (command-line overrides, a sweep trial's values).

    When they change `method.name` and `method_fields` (method name → its field names; the
    method catalogue is a layer this module cannot import, so callers pass
    `affina.methods.method_field_names`) is given, the method fields already in `cfg` (from the
    YAML or the base config) were chosen for the old method: those the new method does not have
    are dropped, with a note. Method fields given in `values` are the user's own choice for the
    new method and are kept, so one that does not fit is still refused."""
    old_name, given = cfg.method.name, set()
    for key, value in values.items():
        _set_key(cfg, key, value)
        if key == "method" and isinstance(value, dict):
            given |= set(value) - {"name"}
        elif key.startswith("method.") and key != "method.name":
            given.add(key.split(".", 1)[1])
    if cfg.method.name != old_name and method_fields is not None:
        _drop_foreign_method_fields(cfg, set(method_fields(cfg.method.name)), keep=given)
    return cfg


def _drop_foreign_method_fields(cfg: RunConfig, own: set[str], keep: set[str]) -> None:
    import sys

    dropped = [k for k in cfg.method.options if k not in own and k not in keep]
    for key in dropped:
        del cfg.method.options[key]
    if dropped:
        print(f"affina: note: method.name={cfg.method.name} has no "
              f"{', '.join('method.' + k for k in dropped)}; dropped", file=sys.stderr)


def read_yaml_mapping(path: Path, kind: str, shape: str) -> dict:
    """A YAML file that must hold a mapping, with one-line errors naming the file (and line)."""
    if not path.is_file():
        raise ConfigError(f"{kind} not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {shape}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                method_fields=None) -> RunConfig:
    """Defaults ← YAML file ← dotted overrides. Relative data paths in the YAML resolve against the
    YAML file's directory when they exist there, so a config can travel with its data.
    `method_fields`: see `apply_values` (what `affina train` passes)."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        raw = read_yaml_mapping(path, "config file", "the config must be a mapping of sections")
        for section, body in raw.items():
            _set_key(cfg, str(section), body)
        _resolve_relative_paths(cfg, path.parent)
    apply_overrides(cfg, overrides or [], method_fields)
    return cfg.validate()


def _resolve_relative_paths(cfg: RunConfig, base: Path) -> None:
    def fix(items: list[str]) -> list[str]:
        out = []
        for p in items:
            candidate = base / p
            out.append(str(candidate) if not Path(p).is_absolute() and not Path(p).exists()
                       and candidate.exists() else p)
        return out

    cfg.data.train = fix(cfg.data.train)
    cfg.data.validation = fix(cfg.data.validation)
    cfg.eval.data = fix(cfg.eval.data)
    if cfg.data.mix:
        cfg.data.mix = [{"path": fix([path])[0], "weight": weight} for path, weight in cfg.data.mix_entries()]
    if cfg.data.chat_template and cfg.data.chat_template.endswith(".jinja"):
        cfg.data.chat_template = fix([cfg.data.chat_template])[0]


def config_to_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain data; `method.options` is flattened beside `method.name`."""
    d = dataclasses.asdict(cfg)
    method = {"name": d["method"]["name"], **d["method"]["options"]}
    d["method"] = method
    return d


def config_from_dict(d: dict) -> RunConfig:
    cfg = RunConfig()
    for section, body in d.items():
        _set_key(cfg, section, body)
    return cfg.validate()


def describe_keys() -> list[tuple[str, str, str]]:
    """(key, default, help) for every documented key: the config reference."""
    rows = []
    for section, tp in _section_types().items():
        for f in fields(tp):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{section}.{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
