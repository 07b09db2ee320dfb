"""Prompt tuning: trained soft-prompt embeddings prepended to the input, via PEFT.

Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"
(arXiv:2104.08691). Trainable: virtual tokens × hidden size. Nothing merges into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ._peft import apply_peft, load_peft, save_peft, continue_peft
from .base import Method, register

__all__ = ["PromptMethodConfig", "PromptMethod"]


@dataclass
class PromptMethodConfig:
    num_virtual_tokens: int = field(default=20, metadata={
        "help": "Soft-prompt length (Lester et al. 2021, sec. 3.2: gains flatten past ~20 tokens)."})
    init: str = field(default="random", metadata={
        "help": "`random`, or `text`: start from the embeddings of `init_text` (Lester et al. 2021, "
                "sec. 3.1: class-label/text init beats random for small models)."})
    init_text: str = field(default="", metadata={"help": "Text whose token embeddings start the prompt (init=text)."})

    def validate(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"method.num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.init not in ("random", "text"):
            raise ConfigError(f"method.init must be random or text, got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("method.init=text needs method.init_text")


class PromptMethod(Method):
    name = "prompt"
    description = "Prompt tuning: a trained soft prompt before the input (Lester et al. 2021), via PEFT."
    config_class = PromptMethodConfig
    artifact_kind = "adapter"
    can_merge = False

    def apply(self, model, cfg: PromptMethodConfig):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        extra = {}
        if cfg.init == "text":
            # PEFT tokenises the init text with the base model's tokenizer, from its directory.
            extra = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.init_text,
                     "tokenizer_name_or_path": model.name_or_path}
        return apply_peft(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                    num_virtual_tokens=cfg.num_virtual_tokens, **extra))

    def save(self, model, directory: Path) -> None:
        save_peft(model, directory)

    def load(self, base, directory: Path):
        return load_peft(base, directory)

    def continue_weights(self, model, cfg, directory: Path):
        return continue_peft(model, directory)

    def merge(self, model):
        raise ConfigError("prompt tuning cannot be merged: the soft prompt is extra input, not a "
                          "weight change; serve the adapter on its base model instead")


register(PromptMethod())
