"""(IA)³: learned vectors that rescale keys, values and feed-forward activations, via PEFT.

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (arXiv:2205.05638). Trainable: one vector per adapted layer, of its output size (or of
its input size for feed-forward layers, whose input is rescaled). Merges exactly into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ._peft import PeftArtifact, apply_peft, target_list
from .base import register

__all__ = ["Ia3MethodConfig", "Ia3Method"]


@dataclass
class Ia3MethodConfig:
    target_modules: list[str] = field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"],
        metadata={"help": "Layers whose activations are rescaled: keys, values and the feed-forward "
                          "output projection (Liu et al. 2022, sec. 3.3), or `all-linear`."})
    feedforward_modules: list[str] = field(
        default_factory=lambda: ["down_proj"],
        metadata={"help": "Which of `target_modules` are feed-forward layers: their input, not their "
                          "output, is rescaled."})

    def validate(self) -> None:
        if list(self.target_modules) == ["all-linear"]:  # every linear layer: the FFN ones included
            return
        extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
        if extra:
            raise ConfigError(f"method.feedforward_modules must be a subset of method.target_modules; "
                              f"not targeted: {', '.join(extra)}")


class Ia3Method(PeftArtifact):
    name = "ia3"
    description = "(IA)^3: learned rescaling of keys, values and FFN activations (Liu et al. 2022), via PEFT."
    config_class = Ia3MethodConfig

    def apply(self, model, cfg: Ia3MethodConfig):
        from peft import IA3Config, TaskType

        return apply_peft(model, IA3Config(task_type=TaskType.CAUSAL_LM,
                                           target_modules=target_list(cfg.target_modules),
                                           feedforward_modules=list(cfg.feedforward_modules)))


register(Ia3Method())
