"""One forward pass over rows of different LoRA adapters (and the base), with the adapters'
matrices stacked: two matmuls per adapted layer whatever the number of adapters in the batch.

PEFT's own way to mix adapters in a batch (`adapter_names=`) loops over the distinct adapters in
every LoRA layer: an index, two small matmuls and a scatter per adapter per layer, so a decoding
step over eight adapters cost 1.5 times a step over one (docs/benchmarks.md). Here each adapted
linear layer gets, once for the loaded adapters, A = [A_1; ...; A_n] (their ranks summed) and
B = [B_1 ... B_n], and a row computes

    base(x) + (B @ ((A @ x) * m_row)) * s_row

where m_row keeps the rank columns of the row's own adapter (all zero for a base row) and s_row
is that adapter's scaling (alpha / r, or alpha / sqrt(r) for rsLoRA). Masked columns add exact
zeros, so a row gets its own adapter's update, as PEFT computes it, up to floating-point
rounding in the summation order.

The update is added by forward hooks on PEFT's LoRA `Linear` layers (torch's public hook API)
while those layers have no adapter of their own active (PEFT's per-layer `set_adapter`, public
too), so no upstream code is changed. Plain LoRA and rsLoRA on linear layers only: an adapter
with a LoRA variant (DoRA, aLoRA), a bias on B, LoRA on an embedding or convolution, or
`modules_to_save` is reported unsupported, and the caller keeps PEFT's `adapter_names` for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StackedLoraRows"]


class _Rows:
    def __init__(self, owner: "StackedLoraRows", plan: list):
        self.owner, self.plan = owner, plan

    def __enter__(self) -> None:
        self.owner._current = self.plan

    def __exit__(self, *exc) -> None:
        self.owner._current = None


class _Stack:
    """One adapted layer's A and B matrices for the stacked adapters, and each one's columns."""

    def __init__(self, layer, adapters: list[str]):
        import torch

        present = [a for a in adapters if a in layer.lora_A]
        self.a = torch.cat([layer.lora_A[a].weight for a in present])  # (R, in)
        self.b = torch.cat([layer.lora_B[a].weight for a in present], dim=1)  # (out, R)
        # Row k of `columns`: 1 on the rank columns of adapter k of `adapters`; the last row
        # (a base row, or an adapter this layer does not adapt) is all zeros.
        self.columns = torch.zeros((len(adapters) + 1, self.a.shape[0]), dtype=self.a.dtype,
                                   device=self.a.device)
        self.scales = torch.zeros(len(adapters) + 1, dtype=self.a.dtype, device=self.a.device)
        self.spans: dict[str, tuple[int, int]] = {}  # adapter → its rank columns
        start = 0
        for adapter in present:
            rank = layer.lora_A[adapter].weight.shape[0]
            k = adapters.index(adapter)
            self.columns[k, start:start + rank] = 1
            self.scales[k] = float(layer.scaling[adapter])
            self.spans[adapter] = (start, start + rank)
            start += rank

    def one(self, adapter: str, scale) -> tuple | None:
        """Rows that all have `adapter`: its own A and B (views into the stack), no mask."""
        if adapter not in self.spans:
            return None
        start, end = self.spans[adapter]
        return (self.a[start:end], self.b[:, start:end], None, scale)

    def rows(self, slot, adapters: list[str]) -> tuple | None:
        """Rows with adapters `slot` (indices into `adapters`, the stacked ones; their count:
        none). Only the columns from the first to the last of the rows' adapters take part
        (views into the stack), so a batch of a few adapters does not pay for all loaded."""
        spans = [self.spans[adapters[k]] for k in set(slot.tolist()) if k < len(adapters)
                 and adapters[k] in self.spans]
        if not spans:
            return None
        lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
        index = slot.to(self.columns.device)
        return (self.a[lo:hi], self.b[:, lo:hi], self.columns[index][:, None, lo:hi],
                self.scales[index][:, None, None])


class StackedLoraRows:
    """Stacked LoRA rows over one PeftModel. `rows(names)` is the context to run a forward pass
    (or `generate`) in, for rows named by PEFT adapter name ("__base__": the base); a single name
    applies to every row.

    The stack holds every loaded adapter it covers, built at the first use after an adapter was
    loaded or deleted (`forget`): a second copy of those adapters' LoRA weights, whichever of them
    a batch uses, so rows joining and leaving never rebuild it. Its hooks stay on the LoRA layers
    and add nothing outside `rows`.

    `rows` needs the LoRA layers to compute the base alone (`no_adapter`), a state that lasts
    until PEFT's `set_adapter` is called; switching costs a walk over the model's layers, so the
    caller switches only when it moves between stacked rows and PEFT's own adapter path."""

    def __init__(self, peft_model):
        self.model = peft_model
        self._why: dict[str, str | None] = {}  # adapter → why it cannot be stacked (None: it can)
        self._adapters: list[str] = []  # the stacked ones, in stack order
        self._layers: list[tuple[Any, _Stack]] | None = None
        self._handles: list = []
        self._plans: dict[tuple[str, ...], list] = {}
        self._current: list | None = None  # the plan of the rows running now, per stacked layer

    def forget(self) -> None:
        """Drops the stack and its hooks: call after an adapter is loaded or deleted."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._layers, self._current = [], None, None
        self._why.clear()
        self._plans.clear()

    def no_adapter(self) -> None:
        """Switches every LoRA layer to no adapter of its own (PEFT's per-layer `set_adapter`
        with none), so the model computes the base alone and `rows` adds each row's update."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([], inference_mode=True)

    def unsupported(self, names: list[str]) -> str | None:
        """None when rows named `names` can run stacked, else why not."""
        for adapter in dict.fromkeys(names):
            if adapter == "__base__":
                continue
            if adapter not in self._why:
                self._why[adapter] = self._check(adapter)
            if self._why[adapter] is not None:
                return self._why[adapter]
        return None

    def _check(self, adapter: str) -> str | None:
        from peft.tuners.lora import Linear, LoraLayer

        config = self.model.peft_config.get(adapter)
        if config is not None and getattr(config, "modules_to_save", None):
            return f"adapter {adapter} trains whole modules too ({', '.join(config.modules_to_save)})"
        for module in self.model.modules():
            if not isinstance(module, LoraLayer):
                continue
            if adapter not in module.lora_A and adapter not in getattr(module, "lora_embedding_A", {}):
                continue
            if type(module) is not Linear:
                return f"adapter {adapter} has LoRA on a {type(module).__name__} layer"
            if adapter in getattr(module, "lora_variant", {}):
                return f"adapter {adapter} has a LoRA variant ({type(module.lora_variant[adapter]).__name__})"
            if module.lora_B[adapter].bias is not None:
                return f"adapter {adapter} has a bias on B"
            if module.merged:
                return "an adapter is merged into the base"
        return None

    def rows(self, names: list[str]) -> "_Rows":
        """A context (it may be entered again, e.g. once per decoding step) within which the
        model computes row i with adapter `names[i]`; call `no_adapter` first."""
        return _Rows(self, self._plan(tuple(names)))

    def _stack(self) -> list[tuple[Any, _Stack]]:
        if self._layers is None:
            from peft.tuners.lora import Linear

            self._adapters = [a for a in self.model.peft_config if self.unsupported([a]) is None]
            self._layers = [(m, _Stack(m, self._adapters)) for m in self.model.modules()
                            if type(m) is Linear and any(a in m.lora_A for a in self._adapters)]
            self._handles = [m.register_forward_hook(self._hook(i)) for i, (m, _) in enumerate(self._layers)]
            self._plans.clear()
        return self._layers

    def _plan(self, names: tuple[str, ...]) -> list:
        """Per stacked layer, what rows `names` add there: A, B, the (rows, 1, R) column mask and
        the (rows, 1, 1) scales; where every row has the same adapter, just its own A and B."""
        layers = self._stack()
        if len(set(names)) == 1:
            names = names[:1]
        plan = self._plans.get(names)
        if plan is not None:
            return plan
        import torch

        if len(names) == 1 and names[0] != "__base__":
            k = self._adapters.index(names[0])
            plan = [s.one(names[0], s.scales[k]) for _, s in layers]
        else:
            slot = torch.tensor([self._adapters.index(n) if n != "__base__" else len(self._adapters)
                                 for n in names])
            plan = [s.rows(slot, self._adapters) for _, s in layers]
        if len(self._plans) > 256:  # row assignments change as rows join and leave
            self._plans.clear()
        self._plans[names] = plan
        return plan

    def _hook(self, i: int):
        import torch.nn.functional as F

        def add_update(module, args, result):
            if self._current is None or self._current[i] is None:
                return None
            a, b, columns, scales = self._current[i]
            hidden = F.linear(args[0].to(a.dtype), a)
            if columns is not None:
                hidden = hidden * columns
            # Added in the adapter's dtype and rounded once, as PEFT adds it (a bf16 base with
            # fp32 adapter weights gets the sum of both rounded to bf16, not a rounded update).
            return (result + F.linear(hidden, b) * scales).to(result.dtype)

        return add_update
