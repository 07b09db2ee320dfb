"""LoRA: low-rank adapters on chosen linear layers, via PEFT.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685).
The artifact is a plain PEFT directory (adapter_config.json + adapter_model.safetensors).
Trainable parameters: r·(d_in + d_out) per adapted linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ._peft import LoraFamilyArtifact, apply_peft, target_list
from .base import register

__all__ = ["LoraMethodConfig", "LoraMethod"]


@dataclass
class LoraMethodConfig:
    r: int = field(default=16, metadata={"help": "Rank of the update BA (Hu et al. 2021, sec. 4.1)."})
    alpha: float = field(default=32, metadata={"help": "Scaling numerator: the update is scaled by alpha/r."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter's input."})
    target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Linear layers to adapt, by name suffix (q_proj, v_proj, ...), or `all-linear` "
                          "(every linear layer except the output head)."})
    bias: str = field(default="none", metadata={"help": "Train biases too: none, all or lora_only."})

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"method.bias must be none, all or lora_only, got {self.bias!r}")


def lora_config(cfg: LoraMethodConfig, **variant):
    """The PEFT LoraConfig for `cfg`; `variant` switches on DoRA or rsLoRA."""
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.r, lora_alpha=cfg.alpha,
                      lora_dropout=cfg.dropout, target_modules=target_list(cfg.target_modules),
                      bias=cfg.bias, **variant)


class LoraMethod(LoraFamilyArtifact):
    name = "lora"
    description = "Low-rank adapters on linear layers (Hu et al. 2021), via PEFT."
    config_class = LoraMethodConfig

    def peft_config(self, cfg: LoraMethodConfig):
        return lora_config(cfg)

    def apply(self, model, cfg: LoraMethodConfig):
        return apply_peft(model, self.peft_config(cfg))


register(LoraMethod())
