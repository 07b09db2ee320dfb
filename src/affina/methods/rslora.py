"""rsLoRA: LoRA with rank-stabilised scaling alpha/sqrt(r) instead of alpha/r, via PEFT.

Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA"
(arXiv:2312.03732): with alpha/r the update's scale collapses as r grows, so high ranks learn no
better than low ones; alpha/sqrt(r) keeps them learning. Same parameter count as LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._peft import LoraFamilyArtifact, apply_peft
from .base import register
from .lora import LoraMethodConfig, lora_config

__all__ = ["RsloraMethodConfig", "RsloraMethod"]


@dataclass
class RsloraMethodConfig(LoraMethodConfig):
    """The LoRA fields; `alpha` is divided by sqrt(r) (Kalajdzievski 2023, eq. 5)."""


class RsloraMethod(LoraFamilyArtifact):
    name = "rslora"
    description = "LoRA with rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023), via PEFT."
    config_class = RsloraMethodConfig

    def apply(self, model, cfg: RsloraMethodConfig):
        return apply_peft(model, lora_config(cfg, use_rslora=True))


register(RsloraMethod())
