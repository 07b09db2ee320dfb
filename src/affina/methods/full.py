"""Full fine-tuning: every weight trains.

The baseline every parameter-efficient method is measured against (e.g. Hu et al. 2021, table 2).
Training state is about 4× the model's size in float32 (weights, gradients, two AdamW moments);
activation checkpointing (Chen et al. 2016, arXiv:1604.06174) trades recomputation for the
activation memory on top. The artifact is a plain HF model directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._whole_model import WholeModelArtifact, optimizer_state_bytes  # noqa: F401 (re-export)
from .base import register

__all__ = ["FullMethodConfig", "FullMethod", "optimizer_state_bytes"]


@dataclass
class FullMethodConfig:
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass instead of keeping them (Chen et al. "
                "2016): roughly O(sqrt(layers)) activation memory for ~30% more compute."})


class FullMethod(WholeModelArtifact):
    name = "full"
    description = "Full fine-tuning: every weight trains; the artifact is a whole HF model."
    config_class = FullMethodConfig

    def apply(self, model, cfg: FullMethodConfig):
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.activation_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model


register(FullMethod())
