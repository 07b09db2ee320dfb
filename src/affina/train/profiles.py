"""A run's training profile (train/speed.py's `Profile`) put on the model before training and
taken off after it: what `train.profile`, `train.chunked_loss`, `train.mixed_precision`,
`train.cuda_graphs` and `train.fuse_projections` ask for, checked against the device before the
base loads, applied in the order the parts need (fp8 layers, then fused projections over them,
then compiled blocks over both), and undone for evaluation and saving.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

from ..config import RunConfig
from ..errors import ConfigError
from ..ui import info
from .fp8 import fp8_base_layers, fp8_supported, restore_linear
from .fused import fuse_projections, unfuse_projections
from .speed import Profile, compile_blocks, decoder_blocks, embeddings_from_host, keep_input_dtype, profile_of

__all__ = ["apply_profile", "after_training", "check_device_settings", "fp8_base"]


def apply_profile(model, cfg: RunConfig, device) -> Profile:
    """Turn on what `train.profile`, `train.chunked_loss` and `train.mixed_precision` ask for on
    this device (see train/speed.py)."""
    t = cfg.train
    profile = profile_of(t.profile, device, loss_chunk_tokens=t.loss_chunk_tokens,
                         chunked_loss=t.chunked_loss, mixed_precision=t.mixed_precision,
                         weights_dtype=next(model.parameters()).dtype, cuda_graphs=t.cuda_graphs,
                         fuse_projections=t.fuse_projections)
    kept = keep_input_dtype(model) if profile.keep_input_dtype else 0
    fp8 = fp8_base(model, cfg, device) if profile.fp8_base else 0
    fused = fuse_projections(decoder_blocks(model)) if profile.fuse_projections else 0  # after fp8: fuses its copies
    if profile.fuse_projections and not fused:
        info(f"train.fuse_projections: method {cfg.method.name} leaves no frozen sibling projections "
             "(q/k/v, gate/up) to fuse; the step runs unfused")
        profile = dataclasses.replace(profile, fuse_projections=False)
    compiled = (compile_blocks(model, cuda_graphs=profile.cuda_graphs)  # after fp8 and fusing: compiled with them
                if profile.compile_blocks else 0)
    parts = []
    if profile.chunked_loss:
        parts.append("fused linear + cross-entropy (liger-kernel)" if profile.fused_loss
                     else f"chunked loss ({profile.loss_chunk_tokens} tokens a chunk)")
    if profile.bf16_autocast:
        parts.append("bf16 autocast")
    if fp8:
        parts.append(f"{fp8} frozen linear layers in fp8")
    if kept:
        parts.append(f"{kept} adapter layers keep their input dtype")
    if fused:
        parts.append(f"{fused} groups of sibling projections fused")
    if compiled:
        parts.append(f"{compiled} blocks compiled" + (
            f", replayed as CUDA graphs (batches padded to multiples of {t.pad_to_multiple_of} tokens)"
            if profile.cuda_graphs else ""))
    if profile.checkpointing:
        parts.append("activation checkpointing")
    if profile.offload_activations:
        parts.append("activations offloaded to CPU")
    if parts:
        info(f"profile {profile.name}: " + ", ".join(parts))
    return profile


def check_device_settings(cfg: RunConfig, device) -> None:
    """What the device must offer for train.cuda_graphs and train.mixed_precision=fp8, checked
    before the base loads."""
    if cfg.train.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs needs a CUDA device; this run is on {device.type} "
                          "(set train.cuda_graphs=false)")
    if cfg.train.mixed_precision == "fp8":
        why = fp8_supported(device)
        if why:
            raise ConfigError(f"train.mixed_precision=fp8: {why}; use train.mixed_precision=bf16")


def fp8_base(model, cfg: RunConfig, device) -> int:
    """train.mixed_precision=fp8: the frozen linear layers of the decoder blocks to fp8 (train/fp8.py)."""
    swapped = fp8_base_layers(decoder_blocks(model))
    if not swapped:
        raise ConfigError(f"train.mixed_precision=fp8: method {cfg.method.name} leaves no frozen linear layer "
                          "in the decoder blocks to run in fp8 (it trains them, or quantises them itself); "
                          "use train.mixed_precision=bf16")
    if device.type != "cuda":
        info("fp8 on the CPU runs torch's reference fp8 kernels: the GPU's numbers, not its speed")
    return swapped


def after_training(profile: Profile, model):
    """What evaluation and saving need undone: compiled blocks run eagerly, fused projections are
    separate layers with weights of their own, fp8 layers are plain linear layers again (the same
    parameters), weights waiting in host memory are back on the device."""
    import torch

    if profile.fuse_projections:
        unfuse_projections(model)
    if profile.fp8_base:
        restore_linear(model)
    if profile.host_embeddings:
        embeddings_from_host(model)
    if profile.compile_blocks and hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("force_eager")
    return nullcontext()
