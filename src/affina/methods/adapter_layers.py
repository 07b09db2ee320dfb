"""Bottleneck adapter modules and where they sit in a transformer block.

An adapter is down-projection → non-linearity → up-projection, its output added back to what it
adapts. The up-projection starts at zero, so an adapted model computes exactly what its base does
until training moves it. Adapters attach through forward hooks and registered submodules: the
base modules and their parameter names stay untouched, so base weights load as they are.

    sequential (Houlsby et al. 2019)       parallel (He et al. 2022)     residual (Pfeiffer et al. 2021)
    x ─┬─ attn ─ A ─(+)─┬─ ffn ─ A ─(+)─   x ─┬─ ffn ──(+)─(+)─           x ─ attn+ffn block ─┬─ A ─(+)─
       └────────────────┘└────────────┘       ├─ s·A ───┘   │                                 └───────┘
       (each A has its own skip: h + A(h))    └─────────────┘
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BottleneckAdapter", "inject_adapters", "remove_adapters", "PLACEMENTS", "ACTIVATIONS",
           "ADAPTER_PREFIX"]

PLACEMENTS = ("sequential", "parallel", "residual")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
ADAPTER_PREFIX = "bottleneck_"
_ATTENTION_NAMES = ("self_attn", "attn", "attention")
_FFN_NAMES = ("mlp", "feed_forward", "ffn")


class BottleneckAdapter(nn.Module):
    """x (B, T, d) → s · up(dropout(act(down(x)))) (B, T, d): the update only, no skip."""

    def __init__(self, hidden: int, bottleneck: int, activation: str, dropout: float, scaling: float):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden)
        self.scaling = scaling
        # Zero up-projection: the adapter starts as the identity on its sublayer (Houlsby sec. 2.1).
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(self.dropout(self.act(self.down(x))))


def _first_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _add_after(adapter: BottleneckAdapter):
    """Hook: sublayer output h → h + A(h) (the adapter sees the output it corrects)."""
    def hook(module, args, output):
        h = _first_tensor(output)
        return _replace_first(output, h + adapter(h))
    return hook


def _add_beside(adapter: BottleneckAdapter):
    """Hook: sublayer f, input x → f(x) + A(x) (the adapter runs in parallel with f)."""
    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        return _replace_first(output, _first_tensor(output) + adapter(x))
    return hook


def _child(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    raise ValueError(f"{type(block).__name__} has no {what} sublayer named {' / '.join(names)}")


def inject_adapters(blocks: nn.ModuleList, layers: list[int], placement: str, hidden: int,
                    bottleneck: int, activation: str, dropout: float, scaling: float) -> list:
    """Add adapters to `blocks[i]` for i in `layers`; returns the hook handles."""
    handles = []
    for i in layers:
        block = blocks[i]
        ref = next(block.parameters())

        def new() -> BottleneckAdapter:
            return BottleneckAdapter(hidden, bottleneck, activation, dropout, scaling).to(ref.device, ref.dtype)

        if placement == "sequential":
            attn, ffn = _child(block, _ATTENTION_NAMES, "attention"), _child(block, _FFN_NAMES, "feed-forward")
            block.add_module(ADAPTER_PREFIX + "attn", new())
            block.add_module(ADAPTER_PREFIX + "ffn", new())
            handles.append(attn.register_forward_hook(_add_after(getattr(block, ADAPTER_PREFIX + "attn"))))
            handles.append(ffn.register_forward_hook(_add_after(getattr(block, ADAPTER_PREFIX + "ffn"))))
        elif placement == "parallel":
            ffn = _child(block, _FFN_NAMES, "feed-forward")
            block.add_module(ADAPTER_PREFIX + "ffn", new())
            handles.append(ffn.register_forward_hook(_add_beside(getattr(block, ADAPTER_PREFIX + "ffn")),
                                                     with_kwargs=True))
        elif placement == "residual":
            block.add_module(ADAPTER_PREFIX + "out", new())
            handles.append(block.register_forward_hook(_add_after(getattr(block, ADAPTER_PREFIX + "out"))))
        else:
            raise ValueError(f"unknown placement {placement!r}")
    return handles


def remove_adapters(blocks: nn.ModuleList, handles: list) -> None:
    for h in handles:
        h.remove()
    for block in blocks:
        for name in [n for n, _ in block.named_children() if n.startswith(ADAPTER_PREFIX)]:
            delattr(block, name)
