"""Saving and loading for methods whose artifact is the whole model (full, partial): a plain HF
model directory that `transformers` loads with no affina code."""

from __future__ import annotations

from pathlib import Path

from .base import Method

__all__ = ["WholeModelArtifact", "optimizer_state_bytes", "save_whole_model", "load_whole_model", "transformer_blocks",
           "continue_whole_model"]


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

    def continue_weights(self, model, cfg, directory: Path):
        return continue_whole_model(model, directory)


def continue_whole_model(model, directory: Path):
    """Copy a saved whole model's weights into `model` in place, keeping which parameters
    `apply` left trainable (and their dtype and device). Every weight must match by name."""
    import torch
    from safetensors.torch import load_file

    from ..errors import ConfigError

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{directory}: no safetensors weights to continue from")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    own = model.state_dict()
    missing = [k for k in own if k not in state and not _tied(model, k)]
    if missing:
        raise ConfigError(f"{directory}: the earlier model lacks {len(missing)} weights of this one "
                          f"(e.g. {missing[0]}); it was trained on another base")
    with torch.no_grad():
        for name, tensor in own.items():
            if name in state:
                tensor.copy_(state[name].to(dtype=tensor.dtype, device=tensor.device))
    return model


def _tied(model, name: str) -> bool:
    """The output head of a model with tied embeddings is saved once, as the input embeddings."""
    return name.endswith("lm_head.weight") and bool(getattr(model.config, "tie_word_embeddings", False))


def transformer_blocks(model):
    """(prefix, blocks): the ModuleList of decoder blocks, found by its length, not its name, so
    that Llama's `model.layers`, GPT-2's `transformer.h` and others all work."""
    import torch.nn as nn

    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")
