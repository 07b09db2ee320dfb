"""Sibling projections computed together (`train.fuse_projections`).

A decoder block projects one input several times: attention's query, key and value
(`q_proj`, `k_proj`, `v_proj`) all read the normalised hidden states, and the MLP's gate and
up projections (`gate_proj`, `up_proj`) both read the next one. Under LoRA each of those is
the frozen base's matmul plus the adapter's two small ones, so a Llama block runs 5 base
matmuls and 10 adapter matmuls on 2 inputs, forward, and as many again for the input
gradients. The small ones (rank 16 against a hidden size of 4,096) leave a GPU mostly idle.

Fused, each group of siblings runs:

- one base matmul against the siblings' weights laid end to end (the weights are moved into one
  tensor once, and each layer's weight parameter becomes its slice of it: no copy is kept, state
  dicts and adapter files are unchanged); in fp8 (`train.mixed_precision=fp8`) the same with
  the fp8 copies, each sibling's scale on its own output rows;
- one adapter down-projection with the siblings' `lora_A` weights stacked (a few hundred kB,
  concatenated each call, so they keep training as separate parameters), then each sibling's
  own `lora_B` and scaling.

The block's own code still calls each projection in turn: the group's first layer (`q_proj`,
`gate_proj`: the one a block calls first) computes every sibling's output for its input and hands
the others theirs when they are called with the same input tensor; a sibling called with another
input, with adapters disabled or merged,
with several adapters active, with a LoRA variant (DoRA) or with extra arguments computes its
own output as before. Adapter dropout, where it is not zero, stays per sibling (each its own
mask).

The layers are the same objects throughout, their class switched to a subclass that adds the
hand-over (`unfuse_projections` switches them back and gives each weight its own storage again,
which saving a merged model needs). On the CPU in float32 the fused step gives the same loss and
gradients as the unfused one, to float rounding (tests/train/test_fused.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fp8 import Fp8Linear, fp8_linear, mark_static

__all__ = ["SIBLINGS", "ProjectionGroup", "fuse_projections", "unfuse_projections", "fused_groups"]

# Names of projections that read the same input, in the order a block calls them.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))


def _lora_linear_type():
    from peft.tuners.lora.layer import Linear

    return Linear


def _base_of(module: torch.nn.Module) -> torch.nn.Module:
    return module.base_layer if isinstance(module, _lora_linear_type()) else module


def _member(module: torch.nn.Module) -> bool:
    """A layer whose frozen base matmul can join a fused one: a frozen plain or fp8 linear layer,
    or PEFT's LoRA linear layer around one (plain LoRA: not DoRA)."""
    lora = _lora_linear_type()
    if type(module) is lora:
        if module.lora_variant:  # DoRA and the other variants compute their own way
            return False
        module = module.base_layer
    return (type(module) in (torch.nn.Linear, Fp8Linear) and not module.weight.requires_grad
            and module.weight.is_floating_point())


class ProjectionGroup:
    """Sibling projections of one input, and the outputs handed over between their calls."""

    def __init__(self, members: list[torch.nn.Module]):
        self.members = members
        bases = [_base_of(m) for m in members]
        self.sizes = [b.out_features for b in bases]
        self.fp8 = isinstance(bases[0], Fp8Linear)
        with torch.no_grad():
            if self.fp8:  # the fp8 copies end to end, each sibling's scale on its own rows
                self.weight = torch.cat([b.fp8_weight for b in bases])
                self.weight_t = torch.cat([b.fp8_weight_t for b in bases], dim=1)
                self.scale = torch.cat([b.fp8_scale for b in bases], dim=1)
                self.ones = bases[0].fp8_ones
                for b, part, part_t in zip(bases, self.weight.split(self.sizes),
                                           self.weight_t.split(self.sizes, dim=1)):
                    b.fp8_weight, b.fp8_weight_t = part, part_t  # part_t: columns of a wider matrix
                mark_static(self.weight, self.weight_t, self.scale)
            else:  # the weights end to end; each parameter becomes its slice (no second copy)
                self.weight = torch.cat([b.weight.detach() for b in bases])
                for b, part in zip(bases, self.weight.split(self.sizes)):
                    b.weight.data = part
                mark_static(self.weight)
        self.bases = bases
        self.input: torch.Tensor | None = None
        self.outputs: list[torch.Tensor | None] = [None] * len(members)

    # -- the hand-over ------------------------------------------------------------------------

    def output(self, member: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """`member`'s output for `x`: handed over when a sibling computed it for this very input,
        computed with all siblings' when `member` is the first of the group, else None (the
        member computes its own)."""
        i = member.fused_index
        if i and self.input is x and self.outputs[i] is not None:
            out, self.outputs[i] = self.outputs[i], None
            if all(o is None for o in self.outputs):
                self.input = None  # nothing left to hand over: hold no tensor between steps
            return out
        if i or not self._fusable():
            return None
        outs = self._compute(x)
        self.input, self.outputs = x, [None] + outs[1:]
        return outs[0]

    def _fusable(self) -> bool:
        """Whether every LoRA sibling is in a plain training or evaluation state now: adapters on
        and not merged, one active adapter, no variant (DoRA)."""
        for m in self.members:
            if isinstance(m, _lora_linear_type()):
                active = m.active_adapters
                if (m.disable_adapters or m.merged or len(active) != 1 or active[0] not in m.lora_A
                        or active[0] in m.lora_variant):
                    return False
        return True

    def _compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Biases are joined on each call (a few kB): they may train (BitFit) and stay parameters.
        bias = torch.cat([b.bias for b in self.bases]) if self.bases[0].bias is not None else None
        if self.fp8:
            base = fp8_linear(x, self.weight, self.weight_t, self.scale, self.ones)
            if bias is not None:
                base = base + bias.to(base.dtype)
        else:
            base = F.linear(x, self.weight, bias)
        outs = list(base.split(self.sizes, dim=-1))
        # The adapters' down-projections of the siblings without dropout, in one matmul.
        lora = _lora_linear_type()
        shared, own = [], []
        for i, m in enumerate(self.members):
            if isinstance(m, lora):
                name = m.active_adapters[0]
                (shared if isinstance(m.lora_dropout[name], torch.nn.Identity) else own).append((i, m, name))
        if shared:
            a = torch.cat([m.lora_A[name].weight for _, m, name in shared])
            downs = F.linear(x, a).split([m.lora_A[name].out_features for _, m, name in shared], dim=-1)
            for (i, m, name), down in zip(shared, downs):
                outs[i] = outs[i] + m.lora_B[name](down) * m.scaling[name]
        for i, m, name in own:
            outs[i] = outs[i] + m.lora_B[name](m.lora_A[name](m.lora_dropout[name](x))) * m.scaling[name]
        return [o.to(base.dtype) for o in outs]

    def unfuse(self) -> None:
        """Each sibling's weight parameter back in storage of its own (saving a model writes
        tensors that share storage as one). fp8 copies are never saved and stay slices."""
        if not self.fp8:
            with torch.no_grad():
                for b in self.bases:
                    b.weight.data = b.weight.data.clone()


class _Fused:
    """Mixed in before a sibling's own class: takes its output from the group when it can."""

    fused_group: ProjectionGroup
    fused_index: int

    def forward(self, x, *args, **kwargs):
        if not args and not kwargs:
            out = self.fused_group.output(self, x)
            if out is not None:
                return out
        return super().forward(x, *args, **kwargs)


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (_Fused, cls), {"__module__": __name__})
    return _FUSED_CLASSES[cls]


def _groups_in(module: torch.nn.Module) -> list[list[torch.nn.Module]]:
    """Sibling layers of `module` that can be fused: two or more of one SIBLINGS set, with the
    same input size, base kind (plain or fp8), dtype, device and bias presence."""
    groups = []
    children = dict(module.named_children())
    for names in SIBLINGS:
        members = [children[n] for n in names if n in children and _member(children[n])]
        if len(members) < 2:
            continue
        bases = [_base_of(m) for m in members]
        first = bases[0]
        if all(type(b) is type(first) and b.in_features == first.in_features
               and b.weight.dtype == first.weight.dtype and b.weight.device == first.weight.device
               and (b.bias is None) == (first.bias is None) for b in bases):
            groups.append(members)
    return groups


def fuse_projections(blocks: list[torch.nn.Module]) -> int:
    """Fuse the sibling projections inside `blocks` (the decoder blocks): after the adapters are
    added, the model is on its device and fp8 layers are swapped in, before compiling (a group's
    joined weight is a tensor of its own, which `.to()` would not move). Returns how many groups."""
    count = 0
    for block in blocks:
        for module in list(block.modules()):
            for members in _groups_in(module):
                group = ProjectionGroup(members)
                for i, m in enumerate(members):
                    m.__class__ = _fused_class(type(m))
                    m.fused_group, m.fused_index = group, i
                count += 1
    return count


def fused_groups(model: torch.nn.Module) -> list[ProjectionGroup]:
    groups = []
    for m in model.modules():
        if isinstance(m, _Fused) and m.fused_group not in groups:
            groups.append(m.fused_group)
    return groups


def unfuse_projections(model: torch.nn.Module) -> int:
    """Undo `fuse_projections`: each layer its own class and weight storage again. Returns how
    many groups."""
    groups = fused_groups(model)
    for group in groups:
        group.unfuse()
        for m in group.members:
            m.__class__ = type(m).__bases__[1]  # Fused<cls> has the bases (_Fused, cls)
            del m.fused_group, m.fused_index
    return len(groups)
