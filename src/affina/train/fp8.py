"""fp8 matmuls for the frozen base (`train.mixed_precision: fp8`).

Under an adapter method most of a training step's arithmetic is the frozen base's matmuls: the
forward pass and the input gradients (the base weights take no gradient). On GPUs with fp8
tensor cores (compute capability 9.0: H100, H200) those run at twice the bf16 rate, so this
module runs them in fp8 and leaves everything that trains in bf16 autocast with fp32 master
weights:

- every frozen `nn.Linear` in the decoder blocks (a LoRA layer's `base_layer`, the frozen layers
  of partial fine-tuning, the backbone under prefix/prompt tuning) gets an fp8 (e4m3) copy of its
  weight, scaled by one number for the whole tensor (its largest magnitude maps to e4m3's 448),
  and the same values transposed, laid out the way the input gradient's matmul reads them;
- each call scales its input per row (per token) to e4m3 and multiplies with
  `torch._scaled_mm`, which accumulates in fp32 and writes bf16; the backward pass does the same
  with the output gradient per row and the transposed fp8 weight (e4m3 throughout: the row-wise
  scaling keeps the gradients' range);
- the layer keeps the original weight and bias parameters, so state dicts, PEFT's adapter files
  and merges see the same model. While a GPU trains, those weights wait in host memory
  (`offload_weights`): the two fp8 copies take the room of one bf16 weight. After training
  `restore_linear` puts plain `nn.Linear` layers back, with their weights on the device, and
  evaluation, saving and serving use the bf16 (or fp32) weights as before.

This is a numerical approximation, like QLoRA's 4-bit base and unlike the profiles in
train/speed.py: e4m3 keeps 3 mantissa bits, so each product is within about 6% and a layer's
outputs within a few percent of the bf16 ones (tests/train/test_fp8.py bounds it). The adapter
learns against that base and is saved as a standard adapter for the full-precision one.

The same code runs on the CPU, where torch has reference fp8 kernels: there it gives the same
numbers as the GPU's kernels (both accumulate the same fp8 products in fp32), for checking, not
for speed.
"""

from __future__ import annotations

import torch

__all__ = ["E4M3", "quantize_rows", "quantize_tensor", "scale_vectors", "fp8_linear", "fp8_matmul", "mark_static", "Fp8Linear", "fp8_base_layers",
           "offload_weights", "restore_linear", "fp8_supported"]

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
_TINY = 1e-12  # the scale of an all-zero row: any positive number keeps it zero


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, cols] as (e4m3 values [rows, cols], fp32 scales [rows, 1]) with x ~ values * scales:
    each row's largest magnitude maps to e4m3's largest finite number."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp(min=_TINY) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def quantize_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w as (e4m3 values, one fp32 scale) with w ~ values * scale."""
    scale = w.detach().abs().amax().float().clamp(min=_TINY) / E4M3_MAX
    return (w.detach().float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


class _Fp8Matmul(torch.autograd.Function):
    """y = x @ (W * s)^T with W frozen in fp8 and `s` one scale per output row: the input (forward)
    and the output gradient (backward) quantised per row, products accumulated in fp32, results
    in bf16. No gradient for W, and no activation saved (the input gradient needs only W)."""

    @staticmethod
    def forward(ctx, x, weight, weight_t, scale, ones):
        # x [M, K]; weight e4m3 [N, K] and the same values transposed, weight_t [K, N] (each
        # row-major); scale [1, N]: each output row's weight scale; ones [1, K].
        xq, xs = quantize_rows(x)
        ctx.save_for_backward(weight_t, scale, ones)
        with _no_autocast(x):  # autocast would round the fp32 scales to bf16
            return torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=scale, out_dtype=torch.bfloat16,
                                    use_fast_accum=True)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        weight_t, scale, ones = ctx.saved_tensors
        # dX = dY @ (W * s) = (dY * s) @ W: the weight scales vary along the sum, so they go into
        # the gradient before it is quantised per row (for one scale per tensor this is the same
        # product). The second operand must be column-major [N, K], that is W^T laid out
        # row-major: the transposed copy, made once rather than on every backward pass.
        gq, gs = quantize_rows(grad.float() * scale)
        with _no_autocast(grad):
            gx = torch._scaled_mm(gq, weight_t.t(), scale_a=gs, scale_b=ones, out_dtype=torch.bfloat16)
        return gx, None, None, None, None


def scale_vectors(scale: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight's one scale as the row-wise scaled matmul takes it: repeated over its N output
    rows [1, N], and the ones [1, K] of the input gradient's other side."""
    n, k = shape
    return scale.reshape(1, 1).expand(1, n).contiguous(), torch.ones(1, k, device=scale.device)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor, scale: torch.Tensor,
               ones: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ (weight * scale)^T in bf16, for an e4m3 `weight` [N, K], the same values
    transposed `weight_t` [K, N] (for the input gradient), its output rows' fp32 scales `scale`
    [1, N] and `ones` [1, K] (see `scale_vectors`)."""
    n, k = weight.shape
    return _Fp8Matmul.apply(x.reshape(-1, k), weight, weight_t, scale, ones).reshape(*x.shape[:-1], n)


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ (weight * scale)^T for an e4m3 `weight` [N, K] and its one fp32 `scale`, in bf16."""
    return fp8_linear(x, weight, weight.t().contiguous(), *scale_vectors(scale, weight.shape))


def mark_static(*tensors: torch.Tensor) -> None:
    """Compiled with CUDA graphs, inputs not marked static are copied into the graph's own buffers
    before each replay; parameters and buffers are static already, tensors held as plain
    attributes (fp8 copies, fused weights) are not."""
    for tensor in tensors:
        torch._dynamo.mark_static_address(tensor)


def _linear_sharing(cls: type, linear: torch.nn.Linear) -> torch.nn.Linear:
    """A `cls` layer (nn.Linear or a subclass) holding `linear`'s weight and bias parameters."""
    layer = cls.__new__(cls)
    torch.nn.Module.__init__(layer)
    layer.in_features, layer.out_features = linear.in_features, linear.out_features
    layer.weight, layer.bias = linear.weight, linear.bias
    layer.train(linear.training)
    return layer


class Fp8Linear(torch.nn.Linear):
    """A frozen `nn.Linear` whose matmul runs in fp8. It holds the original's weight and bias
    parameters (so its state dict is the original's), and an fp8 copy of the weight with its scale
    as plain attributes: not buffers, so state dicts, `.to()` and DDP's buffer broadcast leave
    them alone (convert after the model is on its device)."""

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> "Fp8Linear":
        layer = _linear_sharing(cls, linear)
        layer.fp8_weight, scale = quantize_tensor(linear.weight)
        layer.fp8_weight_t = layer.fp8_weight.t().contiguous()
        layer.fp8_scale, layer.fp8_ones = scale_vectors(scale, linear.weight.shape)  # once, not per call
        mark_static(layer.fp8_weight, layer.fp8_weight_t, layer.fp8_scale, layer.fp8_ones)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = fp8_linear(x, self.fp8_weight, self.fp8_weight_t, self.fp8_scale, self.fp8_ones)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def plain(self) -> torch.nn.Linear:
        """An `nn.Linear` with this layer's parameters, its weight back on the fp8 copy's device
        (see `offload_weights`)."""
        if self.weight.device != self.fp8_weight.device:
            with torch.no_grad():
                self.weight.data = self.weight.data.to(self.fp8_weight.device)
        return _linear_sharing(torch.nn.Linear, self)


def _fits(module: torch.nn.Module) -> bool:
    """A plain frozen linear layer whose shape fp8 kernels take (both sides multiples of 16)."""
    return (type(module) is torch.nn.Linear and not module.weight.requires_grad
            and module.weight.is_floating_point() and module.in_features % 16 == 0
            and module.out_features % 16 == 0)


def fp8_base_layers(blocks: list[torch.nn.Module]) -> int:
    """Replace every frozen `nn.Linear` inside `blocks` (the decoder blocks) with an `Fp8Linear`
    holding the same parameters; returns how many. Layers that train are left as they are."""
    swapped = 0
    for block in blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if _fits(child):
                    setattr(parent, name, Fp8Linear.of(child))
                    swapped += 1
    return swapped


def offload_weights(model: torch.nn.Module) -> int:
    """Move the weights of `model`'s fp8 layers that sit on an accelerator to host memory, where
    they wait until `restore_linear` brings them back: a training step computes with the fp8
    copies only (the forward and the transposed ones, together the size of a bf16 weight), so
    this leaves the accelerator holding the frozen base once, not one and a half times. The
    parameters stay the same objects, with their data elsewhere. Call it once the model is
    wrapped for data parallelism (DDP checks that every parameter is on one kind of device).
    Returns how many bytes moved."""
    moved = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Fp8Linear) and module.weight.device.type != "cpu":
                moved += module.weight.numel() * module.weight.element_size()
                module.weight.data = module.weight.data.to("cpu")
    return moved


def restore_linear(model: torch.nn.Module) -> int:
    """Put plain `nn.Linear` layers back where `fp8_base_layers` put fp8 ones; returns how many."""
    restored = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Fp8Linear):
                setattr(parent, name, child.plain())
                restored += 1
    return restored


def fp8_supported(device: torch.device) -> str | None:
    """None when fp8 row-scaled matmuls run on `device`, else why not, in a sentence."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (9, 0):
            return (f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; fp8 "
                    "row-scaled matmuls need 9.0 or later (H100, H200)")
    try:
        x = torch.ones(3, 16, device=device)
        fp8_matmul(x, *quantize_tensor(torch.ones(16, 16, device=device)))
    except (RuntimeError, NotImplementedError, AttributeError, TypeError) as e:  # TypeError: an older signature
        return f"torch {torch.__version__} has no fp8 scaled matmul on {device.type}: {str(e).splitlines()[0]}"
    return None
