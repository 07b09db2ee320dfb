"""LoRA: low-rank adapters on chosen linear layers, via PEFT.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685).
The artifact is a plain PEFT directory (adapter_config.json + adapter_model.safetensors).
Trainable parameters: r·(d_in + d_out) per adapted linear layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from ._peft import LoraFamilyArtifact, apply_peft, target_list
from .base import register

__all__ = ["LoraMethodConfig", "LoraMethod", "auto_dropout"]


def auto_dropout(device_type: str | None, profile: str = "default") -> float:
    """`method.dropout: auto` for a run on `device_type` (cuda, cpu, ...; None: not known) under
    `train.profile`. 0 under the speed and memory profiles on CUDA (dropout there costs a mask
    and a copy of every adapted layer's input, per step, for a regulariser short fine-tunes
    rarely need); on the CPU 0 as well, chosen by measurement (docs/training.md: dropout 0.05
    cost time per step and saved no validation loss on the demo); 0.05 (PEFT's customary value)
    under the default profile on CUDA, which keeps the plain transformers step."""
    if device_type == "cuda" and profile == "default":
        return 0.05
    return 0.0


@dataclass
class LoraMethodConfig:
    r: int = field(default=16, metadata={"help": "Rank of the update BA (Hu et al. 2021, sec. 4.1)."})
    alpha: float = field(default=32, metadata={"help": "Scaling numerator: the update is scaled by alpha/r."})
    dropout: float | str = field(default="auto", metadata={
        "help": "Dropout on the adapter's input, or `auto`: resolved when training starts (the run "
                "record keeps the number): 0 on the CPU and under train.profile speed/memory on "
                "CUDA, 0.05 under the default profile on CUDA (docs/training.md)."})
    target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Linear layers to adapt, by name suffix (q_proj, v_proj, ...), or `all-linear` "
                          "(every linear layer except the output head)."})
    bias: str = field(default="none", metadata={"help": "Train biases too: none, all or lora_only."})

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        number = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        if not (self.dropout == "auto" or (number and 0 <= self.dropout < 1)):
            raise ConfigError(f"method.dropout must be auto or a number in [0, 1), got {self.dropout!r}")
        if number:
            self.dropout = float(self.dropout)
        if self.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"method.bias must be none, all or lora_only, got {self.bias!r}")

    def for_device(self, device_type: str | None, profile: str = "default", dtype: str | None = None):
        """This config with `dropout: auto` resolved for the device and profile (a copy); `dtype`
        (the base's load dtype) is for subclasses that depend on it (qlora)."""
        if self.dropout != "auto":
            return self
        return dataclasses.replace(self, dropout=auto_dropout(device_type, profile))


def lora_config(cfg: LoraMethodConfig, **variant):
    """The PEFT LoraConfig for `cfg`; `variant` switches on DoRA or rsLoRA."""
    from peft import LoraConfig, TaskType

    # The recipe resolves `auto` for its device first; a config applied outside it gets the
    # device-independent value.
    cfg = cfg.for_device(None)
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
