"""Prefix tuning: trained key/value vectors prepended at every layer, via PEFT.

Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"
(arXiv:2101.00190). Trainable (no reparametrisation): virtual tokens × layers × 2 (key and
value) × key/value width. Nothing merges into the weights: the prefix is extra attention state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ._peft import apply_peft, load_peft, save_peft, continue_peft
from .base import Method, register

__all__ = ["PrefixMethodConfig", "PrefixMethod"]


@dataclass
class PrefixMethodConfig:
    num_virtual_tokens: int = field(default=20, metadata={
        "help": "Prefix length per layer (Li & Liang 2021 use 10 for summarisation, 200 for table-to-text)."})
    prefix_projection: bool = field(default=False, metadata={
        "help": "Reparametrise the prefix through a two-layer MLP while training (Li & Liang 2021, "
                "sec. 4.3): steadier optimisation, many more trainable parameters."})
    encoder_hidden_size: int = field(default=512, metadata={
        "help": "Hidden size of that MLP (only with prefix_projection)."})

    def validate(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"method.num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")


class PrefixMethod(Method):
    name = "prefix"
    description = "Prefix tuning: trained key/value prefixes at every layer (Li & Liang 2021), via PEFT."
    config_class = PrefixMethodConfig
    artifact_kind = "adapter"
    can_merge = False

    def apply(self, model, cfg: PrefixMethodConfig):
        from peft import PrefixTuningConfig, TaskType

        return apply_peft(model, PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.prefix_projection, encoder_hidden_size=cfg.encoder_hidden_size))

    def save(self, model, directory: Path) -> None:
        save_peft(model, directory)

    def load(self, base, directory: Path):
        return load_peft(base, directory)

    def continue_weights(self, model, cfg, directory: Path):
        return continue_peft(model, directory)

    def merge(self, model):
        raise ConfigError("prefix tuning cannot be merged: the prefix is extra attention state, not a "
                          "weight change; serve the adapter on its base model instead")


register(PrefixMethod())
