"""DoRA: weight-decomposed low-rank adaptation, via PEFT.

Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation" (arXiv:2402.09353): each adapted
weight is split into a magnitude vector and a direction; LoRA updates the direction and the
magnitude trains directly. Trainable: r·(d_in + d_out) + d_out per adapted linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._peft import LoraFamilyArtifact, apply_peft
from .base import register
from .lora import LoraMethodConfig, lora_config

__all__ = ["DoraMethodConfig", "DoraMethod"]


@dataclass
class DoraMethodConfig(LoraMethodConfig):
    """The LoRA fields; the magnitude vectors are added per adapted layer (Liu et al. 2024, sec. 4)."""


class DoraMethod(LoraFamilyArtifact):
    name = "dora"
    description = "Weight-decomposed LoRA: magnitude + low-rank direction (Liu et al. 2024), via PEFT."
    config_class = DoraMethodConfig

    def apply(self, model, cfg: DoraMethodConfig):
        return apply_peft(model, lora_config(cfg, use_dora=True))


register(DoraMethod())
