"""Saving and loading for methods whose artifact is the whole model (full, partial): a plain HF
model directory that `transformers` loads with no affina code."""

from __future__ import annotations

from pathlib import Path

from .base import Method

__all__ = ["WholeModelArtifact", "optimizer_state_bytes", "save_whole_model", "load_whole_model", "transformer_blocks"]


def save_whole_model(model, directory: Path) -> None:
    model.save_pretrained(directory)


def load_whole_model(base, directory: Path):
    """The saved model, in the base's dtype and on its device (the base is only a template)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=base.dtype)
    model.generation_config = base.generation_config
    return model.to(base.device)


def optimizer_state_bytes(model) -> int:
    """Weights + gradients + AdamW's two moments for the trainable parameters."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


class WholeModelArtifact(Method):
    """Report, save, load and merge for a method whose artifact is the whole model; the method
    class adds its name, config and `apply`."""

    artifact_kind = "model"

    def report(self, model, cfg) -> dict:
        return {"training_state_bytes": optimizer_state_bytes(model)}

    def save(self, model, directory: Path) -> None:
        save_whole_model(model, directory)

    def load(self, base, directory: Path):
        return load_whole_model(base, directory)

    def merge(self, model):
        return model  # already a plain model


def transformer_blocks(model):
    """(prefix, blocks): the ModuleList of decoder blocks, found by its length, not its name, so
    that Llama's `model.layers`, GPT-2's `transformer.h` and others all work."""
    import torch.nn as nn

    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")
