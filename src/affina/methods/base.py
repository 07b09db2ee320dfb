"""The Method base class and the registry every adaptation method registers into.

A method is one module: a config dataclass (field help cites the paper) and a `Method`
subclass implementing `apply`, `save` and `load`, registered once. The recipe, the evaluator,
export and the server only ever talk to this interface (including `task` and `sharing`), so
none of them branches on method names.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from ..errors import ConfigError

__all__ = ["Method", "Task", "GENERATE", "CLASSIFY", "PREFER", "Sharing", "TrainableReport", "register",
           "get_method", "method_names", "build_method_config", "method_config_dict",
           "trainable_report", "describe_fields", "method_field_names"]


@dataclass
class TrainableReport:
    trainable: int
    total: int
    trainable_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(1, self.total)

    def as_dict(self) -> dict:
        return {"trainable_params": self.trainable, "total_params": self.total,
                "trainable_percent": round(self.percent, 4), "trainable_bytes": self.trainable_bytes}


class Sharing(str, Enum):
    """How a server can hold a trained artifact beside others on one base model."""

    PEFT_ADAPTER = "peft_adapter"  # a LoRA-family adapter: one PeftModel holds many, one per request
    WRAPS_BASE = "wraps_base"      # reads the unchanged base (few-shot, a frozen head): shares it
    OWN_COPY = "own_copy"          # changes the base's modules or weights: served from its own copy


@dataclass(frozen=True)
class Task:
    """What a method's model does, so that evaluation and serving ask the method, never a name.

    `output` is "text" (the model continues a prompt) or "label" (it maps a text to one of a set
    of labels). `compares_base`: the untrained base can be scored the same way before training
    (a new classification head cannot)."""

    name: str
    output: str
    compares_base: bool
    default_metrics: tuple[str, ...] = ()


GENERATE = Task("generate", "text", compares_base=True)
# Preference tuning (DPO, ORPO, KTO) makes a text model too; its held-out pairs are scored by the
# evaluator from the records' kind, so the base can be compared the same way.
PREFER = Task("prefer", "text", compares_base=True)
CLASSIFY = Task("classify", "label", compares_base=False, default_metrics=("accuracy", "macro_f1"))


class Method(ABC):
    """An adaptation method. Subclasses set the four class attributes and implement `apply`,
    `save` and `load`; every other hook has the default that causal-LM methods share. A missing
    attribute or abstract hook fails when the class is defined or instantiated, not at run time.

    Hooks never mutate the method config they are given: `resolve_config` returns the config a
    run records once the data is known (e.g. a classifier's label set)."""

    name: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type]
    artifact_kind: ClassVar[str]  # "adapter" (loads onto a base) or "model" (a whole HF model)
    task: ClassVar[Task] = GENERATE
    trains: ClassVar[bool] = True  # False: nothing is optimised (fewshot)
    can_merge: ClassVar[bool] = True  # whether `merge` folds the artifact into plain weights
    # Whether the method trains under FSDP2 (distributed.strategy=fsdp): its artifact is the
    # trained model's own `save_pretrained`, which the Trainer writes from the gathered shards.
    shards_with_fsdp: ClassVar[bool] = False
    # Whether the base's linear layers stay frozen full-precision nn.Linear layers while it trains
    # (what train.mixed_precision=fp8 runs in fp8): not under full (they train) or qlora (4-bit).
    frozen_base: ClassVar[bool] = True
    loss_label: ClassVar[str] = "loss (mean over loss tokens)"  # the learning curve's y axis

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None) or cls.__name__.endswith(("Artifact", "Base")):
            return  # a shared partial implementation, not a method yet
        for attr in ("name", "description", "config_class", "artifact_kind"):
            if not hasattr(cls, attr):
                raise TypeError(f"method class {cls.__name__} must set `{attr}`")
        if cls.artifact_kind not in ("adapter", "model"):
            raise TypeError(f"{cls.__name__}.artifact_kind must be 'adapter' or 'model'")

    @abstractmethod
    def apply(self, model, cfg) -> Any:
        """Freeze, wrap or inject: the trainable model."""

    @abstractmethod
    def save(self, model, directory: Path) -> None:
        """Write the artifact (a standard format) into `directory`."""

    @abstractmethod
    def load(self, base, directory: Path) -> Any:
        """The trained model: the artifact in `directory` applied to `base`."""

    def merge(self, model) -> Any:
        """A plain transformers model with the artifact folded in."""
        from ..errors import ConfigError

        raise ConfigError(f"a {self.name} run cannot be merged into plain weights; serve the run "
                          "itself (affina serve) or use it with affina generate")

    def continue_weights(self, model, cfg, directory: Path) -> Any:
        """The trainable model (`apply`'s result) with an earlier run's artifact in `directory`
        loaded into it: the starting point of continued training (`train.continue_from`)."""
        from ..errors import ConfigError

        raise ConfigError(f"a {self.name} run cannot be continued (train.continue_from); start a "
                          "new run on the combined data instead")

    def check_train_settings(self, train) -> None:
        """ConfigError for `train` settings (a TrainConfig) this method cannot train with."""
        from ..errors import ConfigError

        if train.cuda_graphs and type(self).build_trainer is not Method.build_trainer:
            raise ConfigError(f"train.cuda_graphs: method {self.name} trains with a trainer of its own, which "
                              "does not mark the steps CUDA graphs replay; set train.cuda_graphs=false")
        if train.mixed_precision == "fp8" and not self.frozen_base:
            raise ConfigError(f"train.mixed_precision=fp8 runs a frozen base's linear layers in fp8, and method "
                              f"{self.name} has none (it trains them, quantises them, or trains nothing); "
                              "use train.mixed_precision=bf16")

    @property
    def can_continue(self) -> bool:
        """Whether a run of this method can be continued (it implements `continue_weights`)."""
        return type(self).continue_weights is not Method.continue_weights

    def load_options(self, cfg) -> dict:
        """Extra `load_model` keyword arguments for the base (e.g. a quantization_config)."""
        return {}

    def prepare_data(self, cfg, data_cfg, tokenizer, seed: int):
        """DataConfig → PreparedData (tokenised train/validation sets)."""
        from ..data.prepare import prepare_data

        return prepare_data(data_cfg, tokenizer, seed)

    def resolve_config(self, cfg, data):
        """The method config completed from the prepared data; returns a new object."""
        return cfg

    def resolve_for_device(self, cfg, device_type: str, profile: str, dtype: str | None = None):
        """The method config with its device-dependent `auto` values resolved for a run on
        `device_type` (cuda, cpu, ...) under `train.profile`, with the base loading in `dtype`
        (a torch dtype's name), through the config's own `for_device` when it has one (LoRA's
        `dropout: auto`, qlora's `compute_dtype: auto`); the run record keeps the result. The
        recipe calls it before loading, so `load_options` sees resolved values."""
        for_device = getattr(cfg, "for_device", None)
        return for_device(device_type, profile, dtype) if for_device else cfg

    def attach_data(self, model, cfg, data, tokenizer):
        """Give the model what it keeps from the data (few-shot keeps its example pool)."""
        return model

    def collator(self, cfg, tokenizer):
        from ..data.packing import BatchCollator

        return BatchCollator(tokenizer.pad_token_id)

    def build_trainer(self, model, tokenizer, data, args, callbacks, cfg):
        """A trainer of the method's own (e.g. TRL's DPOTrainer) built from the recipe's
        `TrainingArguments`, or None: the recipe's `transformers.Trainer` on `data.train`."""
        return None

    def compute_metrics(self, cfg):
        """Trainer metrics on the validation set, or None for loss only."""
        return None

    def report(self, model, cfg) -> dict:
        """Extra facts for the run record."""
        return {}

    def sharing(self, cfg) -> Sharing:
        """How a server holds this run beside others on one base (see `Sharing`)."""
        return Sharing.OWN_COPY


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the catalogue; a second method under a taken name is an error."""
    if not isinstance(method, Method):
        raise TypeError(f"{method!r} is not a Method (subclass affina.methods.Method)")
    if method.name in _REGISTRY and type(_REGISTRY[method.name]) is not type(method):
        raise ValueError(f"a method named {method.name!r} is already registered "
                         f"({type(_REGISTRY[method.name]).__name__})")
    _REGISTRY[method.name] = method
    return method


def _ensure_loaded() -> None:
    # Importing the modules registers every built-in method.
    from . import (adapter, dora, fewshot, full, head, ia3, lora, partial, preference,  # noqa: F401
                   prefix, prompt, qlora, rslora)


def method_names() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_field_names(name: str) -> set[str]:
    """The `method.*` keys a method has (what `config.apply_values` keeps on a method switch)."""
    return {f.name for f in dataclasses.fields(get_method(name).config_class)}


def build_method_config(method: Method, options: dict) -> Any:
    """Validate `method.*` keys against the method's own config dataclass."""
    cls = method.config_class
    hints = get_type_hints(cls)
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise ConfigError(f"unknown key(s) for method '{method.name}': {', '.join('method.' + k for k in unknown)}; "
                          f"valid: {', '.join('method.' + k for k in hints)}")
    from ..config import _coerce  # one coercion rule for every config value

    values = {k: _coerce(v, hints[k], f"method.{k}") for k, v in options.items()}
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def method_config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def trainable_report(model) -> TrainableReport:
    trainable = total = nbytes = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        total += _logical_numel(p)
        if p.requires_grad:
            trainable += p.numel()
            nbytes += p.numel() * p.element_size()
    return TrainableReport(trainable, total, nbytes)


def _logical_numel(p) -> int:
    """Parameters a tensor stands for: 4-bit weights pack two per byte (bitsandbytes keeps the
    original shape in `quant_state`)."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    if shape is not None:
        n = 1
        for s in shape:
            n *= int(s)
        return n
    return p.numel()


def describe_fields(method: Method) -> list[tuple[str, str, str]]:
    """(key, default, help) for each of a method's config fields: its reference documentation."""
    rows = []
    for f in dataclasses.fields(method.config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f"method.{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
