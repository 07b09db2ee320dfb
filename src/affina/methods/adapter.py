"""Bottleneck adapters: small down/up projections added inside each transformer block.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (arXiv:1902.00751);
He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning"
(arXiv:2110.04366); Rebuffi et al. 2017, "Learning multiple visual domains with residual
adapters" (arXiv:1705.08045); Pfeiffer et al. 2021, "AdapterFusion" (arXiv:2005.00247).
PEFT offers none of these placements, so the layers live in `adapter_layers.py`.

The artifact holds the adapter weights and their config only (`bottleneck_adapter.safetensors`,
`bottleneck_adapter.json`) and loads onto a fresh copy of the base model. Trainable parameters:
2·d·b + b + d per adapter (d hidden size, b bottleneck), two adapters per block for `sequential`,
one for `parallel` and `residual`. Adapters hold a non-linearity, so they do not fold into the
base weights: serve them on their base.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ._whole_model import transformer_blocks
from .base import Method, register

__all__ = ["AdapterMethodConfig", "AdapterMethod", "WEIGHTS_NAME", "CONFIG_NAME"]

PLACEMENTS = ("sequential", "parallel", "residual")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
# Submodule names of the adapters inside each block (adapter_layers.ADAPTER_PREFIX).
ADAPTER_PREFIX = "bottleneck_"
WEIGHTS_NAME = "bottleneck_adapter.safetensors"
CONFIG_NAME = "bottleneck_adapter.json"


@dataclass
class AdapterMethodConfig:
    placement: str = field(default="sequential", metadata={
        "help": "sequential: after attention and after the FFN, inside the residual path (Houlsby et al. "
                "2019); parallel: beside the FFN, scaled and summed with its output (He et al. 2022); "
                "residual: one adapter after the block with its own skip (Rebuffi et al. 2017; "
                "Pfeiffer et al. 2021)."})
    bottleneck_size: int = field(default=0, metadata={
        "help": "Adapter width b; 0: hidden size / reduction_factor."})
    reduction_factor: int = field(default=16, metadata={
        "help": "hidden size / b when bottleneck_size is 0 (Pfeiffer et al. 2021 use 16)."})
    activation: str = field(default="relu", metadata={
        "help": f"Non-linearity between the projections: {', '.join(ACTIVATIONS)} (Houlsby et al. use gelu-like; "
                "Pfeiffer et al. relu)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout inside the adapter."})
    scaling: float = field(default=1.0, metadata={
        "help": "Multiplier s on the adapter's output (He et al. 2022 find s=4 good for the parallel "
                "placement)."})
    layers: list[int] = field(default_factory=list, metadata={
        "help": "Block indices to adapt (negative counts from the end); empty: every block."})

    def validate(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"method.placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"method.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.bottleneck_size < 0 or self.reduction_factor < 1:
            raise ConfigError("method.bottleneck_size must be >= 0 and method.reduction_factor >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")


def _resolved(model, cfg: AdapterMethodConfig) -> dict:
    """The config with model-dependent choices fixed: what the artifact records."""
    hidden = model.config.hidden_size
    _, blocks = transformer_blocks(model)
    n = len(blocks)
    layers = cfg.layers or list(range(n))
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(f"method.layers: {bad} out of range for a model with {n} blocks")
    return {**asdict(cfg), "hidden_size": hidden,
            "bottleneck_size": cfg.bottleneck_size or max(1, hidden // cfg.reduction_factor),
            "layers": sorted({i % n for i in layers})}


def _inject(model, resolved: dict):
    from .adapter_layers import inject_adapters  # torch: imported only when adapters are built

    _, blocks = transformer_blocks(model)
    try:
        inject_adapters(blocks, resolved["layers"], resolved["placement"], resolved["hidden_size"],
                        resolved["bottleneck_size"], resolved["activation"], resolved["dropout"],
                        resolved["scaling"])
    except ValueError as e:
        raise ConfigError(f"method adapter: {e}") from None
    model.bottleneck_adapter_config = resolved  # kept on the model so `save` can write it
    return model


class AdapterMethod(Method):
    name = "adapter"
    description = "Bottleneck adapters, sequential/parallel/residual (Houlsby 2019; He 2022; Pfeiffer 2021)."
    config_class = AdapterMethodConfig
    artifact_kind = "adapter"
    can_merge = False

    def apply(self, model, cfg: AdapterMethodConfig):
        for p in model.parameters():
            p.requires_grad_(False)
        return _inject(model, _resolved(model, cfg))

    def save(self, model, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
                   if f".{ADAPTER_PREFIX}" in k}
        save_file(weights, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        resolved = dict(model.bottleneck_adapter_config)
        resolved["base_model_class"] = type(model).__name__
        (directory / CONFIG_NAME).write_text(json.dumps(resolved, indent=1))

    def load(self, base, directory: Path):
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise ConfigError(f"{directory}: no {CONFIG_NAME}; not a bottleneck adapter directory")
        resolved = json.loads((directory / CONFIG_NAME).read_text())
        resolved.pop("base_model_class", None)
        model = _inject(base, resolved)
        weights = load_file(str(directory / WEIGHTS_NAME), device=str(next(base.parameters()).device))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if f".{ADAPTER_PREFIX}" in k]
        if missing or unexpected:
            raise ConfigError(f"{directory / WEIGHTS_NAME} does not fit this base model "
                              f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def merge(self, model):
        raise ConfigError("bottleneck adapters cannot be merged: their non-linearity does not fold "
                          "into the base weights; serve the adapter on its base model instead")


register(AdapterMethod())
