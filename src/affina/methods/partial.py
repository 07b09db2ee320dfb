"""Partial fine-tuning: train a chosen subset of the weights, freeze the rest.

Selections combine (a parameter trains if any selection picks it):
- the last N transformer blocks (the classic "freeze the bottom" recipe; Howard & Ruder 2018,
  arXiv:1801.06146, on why upper layers carry the task-specific features);
- parameters whose name matches a regular expression;
- the input embeddings and/or the output head;
- `bitfit`: every bias term only (Ben Zaken et al. 2022, arXiv:2106.10199) — where the
  architecture has biases; Llama-style models have none, and the method says so;
- `norm`: only the normalisation layers' scales/shifts (cf. Zhao et al. 2024, "Tuning LayerNorm
  in Attention", arXiv:2312.11420).
The artifact is a plain HF model directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..ui import warn
from ._whole_model import WholeModelArtifact, transformer_blocks
from .base import register

__all__ = ["PartialMethodConfig", "PartialMethod", "selected_parameters"]


@dataclass
class PartialMethodConfig:
    last_n_blocks: int = field(default=2, metadata={
        "help": "Train the last N transformer blocks (0: none). Upper blocks adapt most to a new "
                "task (Howard & Ruder 2018)."})
    patterns: list[str] = field(default_factory=list, metadata={
        "help": "Also train parameters whose full name matches any of these regular expressions "
                "(e.g. `self_attn\\.o_proj`)."})
    embeddings: bool = field(default=False, metadata={"help": "Also train the input token embeddings."})
    lm_head: bool = field(default=False, metadata={
        "help": "Also train the output head (with tied embeddings this is the same matrix as the "
                "input embeddings)."})
    bitfit: bool = field(default=False, metadata={
        "help": "Also train every bias term (BitFit, Ben Zaken et al. 2022); an error where the "
                "model has no biases."})
    norm: bool = field(default=False, metadata={
        "help": "Also train the normalisation layers (LayerNorm/RMSNorm weights and biases)."})

    def validate(self) -> None:
        if self.last_n_blocks < 0:
            raise ConfigError(f"method.last_n_blocks must be >= 0, got {self.last_n_blocks}")
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ConfigError(f"method.patterns: {p!r} is not a regular expression ({e})") from None
        if not (self.last_n_blocks or self.patterns or self.embeddings or self.lm_head
                or self.bitfit or self.norm):
            raise ConfigError("method partial selects nothing to train: set method.last_n_blocks, "
                              "method.patterns, method.embeddings, method.lm_head, method.bitfit "
                              "or method.norm")


def selected_parameters(model, cfg: PartialMethodConfig) -> set[str]:
    """Names (as `named_parameters` gives them) of the parameters `cfg` selects."""
    names = {n for n, _ in model.named_parameters()}
    chosen: set[str] = set()
    if cfg.last_n_blocks:
        prefix, blocks = transformer_blocks(model)
        if cfg.last_n_blocks > len(blocks):
            raise ConfigError(f"method.last_n_blocks={cfg.last_n_blocks} but the model has "
                              f"{len(blocks)} blocks")
        first = len(blocks) - cfg.last_n_blocks
        chosen |= {n for n in names
                   if any(n.startswith(f"{prefix}.{i}.") for i in range(first, len(blocks)))}
    for pattern in cfg.patterns:
        hits = {n for n in names if re.search(pattern, n)}
        if not hits:
            raise ConfigError(f"method.patterns: {pattern!r} matches no parameter of "
                              f"{type(model).__name__} (e.g. {sorted(names)[0]})")
        chosen |= hits
    if cfg.embeddings:
        chosen |= _names_of(model, model.get_input_embeddings().weight)
    if cfg.lm_head:
        chosen |= _names_of(model, model.get_output_embeddings().weight)
    if cfg.bitfit:
        biases = {n for n in names if n.endswith(".bias")}
        if not biases:
            raise ConfigError(f"method.bitfit: {type(model).__name__} has no bias parameters (its "
                              "linear and norm layers are built with bias=False), so BitFit has "
                              "nothing to train; use method.norm or method.last_n_blocks instead")
        chosen |= biases
    if cfg.norm:
        norms = {f"{m}.{p}" if m else p for m, module in model.named_modules()
                 if "norm" in type(module).__name__.lower()
                 for p, _ in module.named_parameters(recurse=False)}
        chosen |= norms & names
    return chosen


def _names_of(model, tensor) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p is tensor} & \
        {n for n, _ in model.named_parameters()}


class PartialMethod(WholeModelArtifact):
    name = "partial"
    description = "Train a chosen subset (last N blocks, name patterns, embeddings/head, bitfit, norm)."
    config_class = PartialMethodConfig

    def apply(self, model, cfg: PartialMethodConfig):
        chosen = selected_parameters(model, cfg)
        if cfg.lm_head and getattr(model.config, "tie_word_embeddings", False) and not cfg.embeddings:
            warn("method.lm_head: the output head is tied to the input embeddings in this model, "
                 "so the embeddings train too")
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)
        return model


register(PartialMethod())
