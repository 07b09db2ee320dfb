"""Which device and dtype a model runs on, chosen from what the machine has."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from affina.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = ["pick_device", "pick_dtype"]


def pick_device() -> "torch.device":
    """`$AFFINA_DEVICE` if set (any name torch knows: cpu, cuda, cuda:1, mps, ...), else the
    first CUDA device if there is one, else the CPU."""
    import torch

    requested = os.environ.get("AFFINA_DEVICE", "").strip()
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as e:
            raise ModelError(f"AFFINA_DEVICE={requested!r} is not a device torch knows ({e})") from e
        # Fail here with the variable's name rather than deep inside the first .to(device).
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"AFFINA_DEVICE={requested!r} but no CUDA device is available; "
                             "unset it or set AFFINA_DEVICE=cpu")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: "torch.device | str") -> "torch.dtype":
    """bfloat16 on a CUDA device that supports it (half the memory, float32's range), else
    float32: CPU bf16 matmuls are slow on most machines, and fp16 needs loss scaling."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(device):
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
    return torch.float32
