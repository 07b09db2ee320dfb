"""Training profiles: what the `speed` and `memory` profiles change in a training step, and why.

`train.profile`:

- `default`: the transformers Trainer's own step, with only the chunked loss below on the CPU.
- `speed`: (1) PEFT layers keep their bf16 input instead of copying it to the fp32 adapter
  weights' dtype (autocast still runs the adapter's matmuls in bf16 from fp32 master weights, so
  the copy bought nothing); (2) chunked linear + cross-entropy: the output projection and the loss
  are computed `train.loss_chunk_tokens` tokens at a time, each chunk's gradients with its loss
  (`_LinearCrossEntropy`: nothing is recomputed in the backward pass), so the [tokens x
  vocabulary] logits are never held, in fp32 or at all, and positions whose label is masked are
  never projected (on CUDA with the `liger-kernel` package installed, its fused
  linear + cross-entropy Triton kernel does this step; without it, the chunked PyTorch code
  below, which gives the same loss); (3) regional compilation: each decoder block is compiled with
  `torch.compile` (the blocks share their graphs: it compiles twice, for the first block, whose
  input needs no gradient, and once for all the others, not once per layer),
  with inductor's cache under `$AFFINA_HOME/cache/inductor`, on CUDA only; with
  `train.cuda_graphs` in inductor's `reduce-overhead` mode, each block replayed as CUDA graphs.
- `memory`: chunked linear + cross-entropy, activation checkpointing, and on CUDA the saved
  activations offloaded to pinned CPU memory (`save_activations_on_cpu`: torch's `save_on_cpu`
  that leaves parameters on the GPU) and a frozen, untied input embedding table kept in host
  memory while training (`embeddings_to_host`: the lookup runs there, the looked-up rows travel).
  Pair it with the `qlora` method for a 4-bit base.

`train.fuse_projections` (any profile, off by default) computes sibling projections together:
q/k/v and gate/up each one base matmul and one adapter down-projection (train/fused.py).

`train.chunked_loss` (auto, true, false) turns the chunked loss on or off under any profile;
`auto` is on under `speed` and `memory` and on the CPU under every profile: there the fp32
logits (tokens x 49,152 for the default model, plus their gradient and softmax) were most of the
peak memory, and chunking them costs no time (docs/training.md has the measurement).
`train.mixed_precision` (auto, bf16, fp8, none) is the Trainer's autocast: `auto` is bf16 on CUDA
when the weights are bf16, and none on the CPU (measured: see `mixed_precision_of`); fp8 is bf16
autocast with the frozen base's matmuls in fp8 (train/fp8.py), under any profile.

On the CPU (float32) every profile computes the same loss and gradients as `default`, to float
rounding: the chunked loss is the same sum, and the input cast and compilation change nothing
there. Tests check this; `benchmarks/gpu_train.py` measures the gains against a plain
transformers + PEFT loop.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PROFILES
from ..models.lm_loss import causal_lm_of as _causal_lm
from ..models.lm_loss import chunk_cross_entropy, counted_positions
from ..paths import affina_home

__all__ = ["fused_loss_available", "PROFILES", "Profile", "decoder_blocks", "chunked_lm_loss", "chunked_loss_parts", "keep_input_dtype",
           "compile_blocks", "save_activations_on_cpu", "embeddings_to_host", "embeddings_from_host", "profile_of", "chunked_loss_of", "mixed_precision_of", "SpeedTrainerMixin", "speed_trainer_class"]


@dataclass(frozen=True)
class Profile:
    """What a profile turns on, resolved for one device."""

    name: str = "default"
    chunked_loss: bool = False
    loss_chunk_tokens: int = 1024
    keep_input_dtype: bool = False
    compile_blocks: bool = False
    fused_loss: bool = False  # liger-kernel's fused linear + cross-entropy (CUDA, when installed)
    checkpointing: bool = False
    offload_activations: bool = False
    host_embeddings: bool = False  # the frozen input embedding table in host memory while training
    bf16_autocast: bool = False  # the Trainer's bf16 mixed precision (train.mixed_precision)
    fp8_base: bool = False  # the frozen base's matmuls in fp8 (train.mixed_precision=fp8, train/fp8.py)
    cuda_graphs: bool = False  # compiled blocks replayed as CUDA graphs (train.cuda_graphs)
    fuse_projections: bool = False  # sibling projections computed together (train.fuse_projections, train/fused.py)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def mixed_precision(self) -> str:
        """train.mixed_precision as resolved: fp8, bf16 or none."""
        return "fp8" if self.fp8_base else "bf16" if self.bf16_autocast else "none"


def profile_of(name: str, device: torch.device, *, loss_chunk_tokens: int = 1024,
               chunked_loss: str = "auto", mixed_precision: str = "auto",
               weights_dtype: torch.dtype = torch.float32, cuda_graphs: bool = False,
               fuse_projections: bool = False) -> Profile:
    """The switches of profile `name` on `device` (compilation, CUDA graphs and offload are
    CUDA-only), with `train.chunked_loss` and `train.mixed_precision` resolved for that device."""
    cuda = device.type == "cuda"
    fused = cuda and fused_loss_available()
    chunked = chunked_loss_of(chunked_loss, name, device)
    bf16 = mixed_precision_of(mixed_precision, device, weights_dtype)
    common = dict(chunked_loss=chunked, loss_chunk_tokens=loss_chunk_tokens, bf16_autocast=bf16,
                  fp8_base=mixed_precision == "fp8", fuse_projections=fuse_projections)
    if name == "speed":
        return Profile(name, keep_input_dtype=True, compile_blocks=cuda, fused_loss=fused and chunked,
                       cuda_graphs=cuda and cuda_graphs, **common)
    if name == "memory":
        return Profile(name, keep_input_dtype=True, checkpointing=True, offload_activations=cuda,
                       host_embeddings=cuda, fused_loss=fused and chunked, **common)
    return Profile(name, **common)


def chunked_loss_of(setting: str, profile: str, device: torch.device) -> bool:
    """`train.chunked_loss` resolved: auto is on under the speed and memory profiles, and on the
    CPU under every profile (same loss, a fraction of the peak memory, no slower there)."""
    if setting in ("true", "false"):
        return setting == "true"
    return profile in ("speed", "memory") or device.type == "cpu"


def mixed_precision_of(setting: str, device: torch.device, weights_dtype: torch.dtype) -> bool:
    """Whether the Trainer autocasts to bf16. auto: on CUDA when the weights are bf16 (the
    loaded default there); not on the CPU: on a CPU with avx512_bf16 it made the default model's
    LoRA steps 1.36x faster, but single steps' losses strayed from fp32's by up to 11.5% in the
    first ten, where the bar for a default is 2% (docs/training.md), so it is asked for with
    `bf16`. fp8 autocasts to bf16 too (what is not an fp8 matmul runs in bf16)."""
    if setting in ("bf16", "fp8", "none"):
        return setting != "none"
    return device.type == "cuda" and weights_dtype == torch.bfloat16


# ---- chunked linear + cross-entropy ---------------------------------------------------------

def fused_loss_available() -> bool:
    """Whether liger-kernel's fused linear + cross-entropy can be imported (it needs Triton)."""
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return False
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # noqa: F401
    except Exception:  # a broken or Triton-less install: the PyTorch path instead
        return False
    return True


class _LinearCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of `h @ weight^T` against `y`, `chunk_tokens` rows at a time, with
    its gradients computed in the forward pass, chunk by chunk, while each chunk's logits are at
    hand: the softmax minus the one-hot target is the logits' gradient, so the input's gradient
    is that times the weight (and the weight's, when it trains, its transpose times the chunk's
    input). Only those gradients are kept for the backward pass, which scales them; the logits
    are neither kept nor computed a second time, as recomputing them in the backward pass would.
    The matmuls run as `F.linear` would under the caller's autocast, the softmax in fp32."""

    @staticmethod
    def forward(ctx, h, weight, y, chunk_tokens):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        for start in range(0, h.shape[0], chunk_tokens):
            hc, yc = h[start:start + chunk_tokens], y[start:start + chunk_tokens]
            projected = F.linear(hc, weight)
            dtype, logits = projected.dtype, projected.float()
            del projected  # a bf16 projection is not needed once its fp32 copy exists
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
            if not (need_h or need_w):
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # the softmax, in the logits' memory
            grad[torch.arange(yc.shape[0], device=yc.device), yc] -= 1.0
            grad = grad.to(dtype)
            if need_h:
                grad_h[start:start + chunk_tokens] = grad @ weight
            if need_w:
                grad_w += grad.t() @ hc
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_total.to(grad_h.dtype),
                None if grad_w is None else grad_w * grad_total.to(grad_w.dtype), None, None)


def chunked_loss_parts(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                       chunk_tokens: int = 1024, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropy, number of counted tokens) of a causal LM, from its final
    hidden states [batch, seq, hidden], its output projection weight [vocab, hidden] and labels
    [batch, seq] (-100 = not counted). Labels are shifted as transformers' causal-LM loss does.
    Only counted positions are projected, `chunk_tokens` at a time; with gradients wanted, each
    chunk's gradients are computed with its loss (`_LinearCrossEntropy`), so no logits are kept
    or recomputed."""
    keep, y = counted_positions(labels)
    h = hidden[keep]  # [counted, hidden]
    count = keep.sum()
    if h.shape[0] == 0:
        return hidden.sum() * 0.0, count
    if fused and h.is_cuda:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return liger_fused_linear_cross_entropy(h, weight, y, reduction="sum"), count
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, y, chunk_tokens), count
    total = None
    for start in range(0, h.shape[0], chunk_tokens):
        part = chunk_cross_entropy(h[start:start + chunk_tokens], weight, y[start:start + chunk_tokens])
        total = part if total is None else total + part
    return total, count


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                    chunk_tokens: int = 1024, num_items_in_batch=None, fused: bool = False) -> torch.Tensor:
    """The causal-LM loss as transformers computes it (mean over counted tokens, or the sum over
    `num_items_in_batch` when the trainer passes the accumulated batch's token count), chunked."""
    total, count = chunked_loss_parts(hidden, weight, labels, chunk_tokens=chunk_tokens, fused=fused)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    return total / count.clamp(min=1)


# ---- PEFT input dtype ----------------------------------------------------------------------

def keep_input_dtype(model) -> int:
    """Turn off PEFT's per-layer cast of the input to the adapter weights' dtype (the documented
    `cast_input_dtype_enabled` switch of PEFT's layers, the one `peft.helpers.
    disable_input_dtype_casting` flips). Returns how many layers it changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", False) is True:
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


# ---- regional compilation ------------------------------------------------------------------

def decoder_blocks(model) -> list[torch.nn.Module]:
    """The repeated decoder blocks: the longest ModuleList of identical block types."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best = list(module)
    return best


def compile_blocks(model, backend: str = "inductor", *, cuda_graphs: bool = False) -> int:
    """Compile each decoder block in place (`Module.compile`); returns how many. Inductor's cache
    goes under $AFFINA_HOME/cache/inductor unless TORCHINDUCTOR_CACHE_DIR is set. `backend`
    other than inductor is for tests (aot_eager: the same graphs, run by eager kernels).
    `cuda_graphs`: inductor's `reduce-overhead` mode, each block's forward and backward recorded
    once per input shape as CUDA graphs and replayed (cudagraph trees); the caller marks each
    step's start with `torch.compiler.cudagraph_mark_step_begin()`."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(affina_home() / "cache" / "inductor"))
    blocks = decoder_blocks(model)
    for block in blocks:
        if cuda_graphs:
            block.compile(dynamic=None, backend=backend, mode="reduce-overhead")
        else:
            block.compile(dynamic=None, backend=backend)
    return len(blocks)


# ---- activation offload --------------------------------------------------------------------

class save_activations_on_cpu(torch.autograd.graph.saved_tensors_hooks):
    """torch's `save_on_cpu(pin_memory=True)`, except that parameters stay where they are. Under
    activation checkpointing the tensors saved outside the checkpointed blocks are few: the
    blocks' inputs, and what the layers outside them save, which can be parameters: a plain
    output projection (the loss when it is not chunked, as under DDP) saves the output layer's
    weight (an 8B model's is 1 GB in bf16). A parameter is on the GPU for the whole step anyway,
    so copying it to pinned host memory and back each step would cost transfer time and host
    memory for nothing. `device_type`: whose pinned memory to use (a host without it copies unpinned)."""

    def __init__(self, device_type: str = "cuda"):
        module = getattr(torch, device_type)

        def pack(tensor: torch.Tensor):
            if isinstance(tensor, torch.nn.Parameter):
                return None, tensor
            pinned = module.is_available() and not tensor.is_sparse
            packed = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=pinned)
            packed.copy_(tensor, non_blocking=pinned)
            return tensor.device, packed

        def unpack(packed) -> torch.Tensor:
            device, tensor = packed
            return tensor if device is None else tensor.to(device, non_blocking=True)

        super().__init__(pack, unpack)


# ---- the input embedding table in host memory ----------------------------------------------

def _embeddings(model, which: str) -> torch.nn.Module | None:
    """`model`'s input or output embedding layer (`which`: "input", "output") when it names one."""
    try:
        return getattr(model, f"get_{which}_embeddings")()
    except (AttributeError, NotImplementedError):
        return None


def embeddings_to_host(model) -> int:
    """Under the memory profile on a GPU: move the input embedding table to host memory, where the
    lookup then runs (a forward pre-hook moves the token ids there, a forward hook moves the
    looked-up rows back to the device). A step reads a few thousand of its rows, so this costs one
    small copy each way and frees the whole table from the GPU (1 GiB for Llama-3-8B's 128,256 x
    4,096 in bf16). Only a table that takes no gradient and is not also the output layer's weight
    (tied embeddings compute the loss on the GPU) moves; call it after the Trainer has placed and
    wrapped the model (DDP checks that every parameter is on one kind of device), and
    `embeddings_from_host` before evaluation. Returns how many bytes moved."""
    table = _embeddings(model, "input")
    if table is None or getattr(table, "host_lookup", None) is not None:
        return 0
    weight = getattr(table, "weight", None)
    output = _embeddings(model, "output")
    if (weight is None or weight.requires_grad or weight.device.type == "cpu"
            or getattr(output, "weight", None) is weight):
        return 0
    device = weight.device
    with torch.no_grad():
        weight.data = weight.data.to("cpu")
    ids_to_host = table.register_forward_pre_hook(lambda module, args: (args[0].to("cpu"), *args[1:]))
    rows_to_device = table.register_forward_hook(lambda module, args, rows: rows.to(device))
    table.host_lookup = (device, (ids_to_host, rows_to_device))
    return weight.numel() * weight.element_size()


def embeddings_from_host(model) -> int:
    """Undo `embeddings_to_host`: the table back on its device, the hooks removed. Returns how
    many bytes moved."""
    table = _embeddings(model, "input")
    if table is None or getattr(table, "host_lookup", None) is None:
        return 0
    device, handles = table.host_lookup
    for handle in handles:
        handle.remove()
    del table.host_lookup
    with torch.no_grad():
        table.weight.data = table.weight.data.to(device)
    return table.weight.numel() * table.weight.element_size()


# ---- the trainer side ----------------------------------------------------------------------

class SpeedTrainerMixin:
    """Mixed into the recipe's Trainer: computes the causal-LM loss chunked (when the model
    allows it), offloads saved activations under the memory profile, and marks each training
    and validation step's start for CUDA graphs."""

    affina_profile: Profile = Profile()

    def training_step(self, *args, **kwargs):
        if self.affina_profile.cuda_graphs:  # the last step's graph outputs may be reused now
            torch.compiler.cudagraph_mark_step_begin()
        return super().training_step(*args, **kwargs)

    def prediction_step(self, *args, **kwargs):
        if self.affina_profile.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return super().prediction_step(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        profile = self.affina_profile
        offload = (save_activations_on_cpu()
                   if profile.offload_activations and model.training else contextlib.nullcontext())
        # DDP and FSDP do their gradient work in the wrapped model's own forward, which the
        # chunked loss would bypass (it calls the decoder directly): those runs keep the plain loss.
        unwrapped = self.accelerator.unwrap_model(model)
        wrapped = unwrapped is not model or getattr(self, "is_fsdp_enabled", False)
        causal = _causal_lm(unwrapped) if profile.chunked_loss and not wrapped else None
        # Validation asks for the outputs too, but keeps only the loss when there are no metrics
        # to compute from logits (Trainer.evaluate's prediction_loss_only): chunked there as well.
        loss_only = not return_outputs or (not model.training and self.compute_metrics is None)
        if causal is None or not loss_only or "labels" not in inputs:
            with offload:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None
        # The decoder is called directly, not through the forward accelerate wrapped in autocast.
        with offload, self.accelerator.autocast():
            hidden = causal.get_decoder()(**inputs, use_cache=False).last_hidden_state
            loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, labels,
                                   chunk_tokens=profile.loss_chunk_tokens,
                                   num_items_in_batch=num_items_in_batch, fused=profile.fused_loss)
        if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                and num_items_in_batch is not None):
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss scales it
        return (loss, {"loss": loss}) if return_outputs else loss


def speed_trainer_class(base: type, profile: Profile) -> type:
    """`base` (a transformers Trainer class) with the profile's loss step, or `base` itself under
    the default profile."""
    if not (profile.chunked_loss or profile.offload_activations or profile.cuda_graphs):
        return base
    return type(f"Profiled{base.__name__}", (SpeedTrainerMixin, base), {"affina_profile": profile})
