"""Full fine-tuning: every weight trains.

The baseline every parameter-efficient method is measured against (e.g. Hu et al. 2021, table 2).
Training state is about 4× the model's size in float32 (weights, gradients, two AdamW moments);
activation checkpointing (Chen et al. 2016, arXiv:1604.06174) trades recomputation for the
activation memory on top. The artifact is a plain HF model directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._whole_model import WholeModelArtifact, optimizer_state_bytes  # noqa: F401 (re-export)
from .base import register

__all__ = ["FullMethodConfig", "FullMethod", "optimizer_state_bytes"]


@dataclass
class FullMethodConfig:
    """No options of its own: activation checkpointing, the usual companion of full fine-tuning
    (Chen et al. 2016), is `train.gradient_checkpointing`, which every method shares."""


class FullMethod(WholeModelArtifact):
    name = "full"
    shards_with_fsdp = True
    frozen_base = False
    description = "Full fine-tuning: every weight trains; the artifact is a whole HF model."
    config_class = FullMethodConfig

    def apply(self, model, cfg: FullMethodConfig):
        for p in model.parameters():
            p.requires_grad_(True)
        return model


register(FullMethod())
