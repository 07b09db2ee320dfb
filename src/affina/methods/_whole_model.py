"""Saving and loading for methods whose artifact is the whole model (full, partial): a plain HF
model directory that `transformers` loads with no affina code."""

from __future__ import annotations

from pathlib import Path

__all__ = ["save_whole_model", "load_whole_model", "transformer_blocks"]


def save_whole_model(model, directory: Path) -> None:
    model.save_pretrained(directory)


def load_whole_model(base, directory: Path):
    """The saved model, in the base's dtype and on its device (the base is only a template)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=base.dtype)
    model.generation_config = base.generation_config
    return model.to(base.device)


def transformer_blocks(model):
    """(prefix, blocks): the ModuleList of decoder blocks, found by its length, not its name, so
    that Llama's `model.layers`, GPT-2's `transformer.h` and others all work."""
    import torch.nn as nn

    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")
