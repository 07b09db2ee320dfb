"""QLoRA: LoRA on a base model quantised to 4-bit NF4 (or 8-bit) by bitsandbytes, via PEFT.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv:2305.14314): the
frozen base is stored in 4-bit NormalFloat with its quantisation constants quantised again
("double quantisation"); matmuls run in `compute_dtype`; only the LoRA weights train, in full
precision. The artifact is a plain PEFT LoRA directory that also loads onto the unquantised base
(which is how `affina export --merged` folds it in without re-quantising).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..ui import info
from ._peft import PeftArtifact, apply_peft
from .base import register
from .lora import LoraMethodConfig, lora_config

__all__ = ["QloraMethodConfig", "QloraMethod", "unquantized_bytes"]

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class QloraMethodConfig(LoraMethodConfig):
    bits: int = field(default=4, metadata={
        "help": "Base weight precision: 4 (NF4/FP4, Dettmers et al. 2023) or 8 (LLM.int8(), "
                "Dettmers et al. 2022)."})
    quant_type: str = field(default="nf4", metadata={
        "help": "4-bit data type: nf4 (NormalFloat, information-theoretically optimal for normal "
                "weights, QLoRA sec. 3) or fp4."})
    double_quant: bool = field(default=True, metadata={
        "help": "Quantise the quantisation constants too (QLoRA sec. 3: ~0.37 bits/param saved)."})
    compute_dtype: str = field(default="auto", metadata={
        "help": "dtype of the matmuls on dequantised weights: float32, bfloat16 or float16, or `auto`: "
                "the dtype the rest of the base loads in (model.dtype; auto there is bfloat16 on a "
                "CUDA device that supports it, else float32). The run record keeps the resolved name."})

    def validate(self) -> None:
        super().validate()
        if self.bits not in (4, 8):
            raise ConfigError(f"method.bits must be 4 or 8, got {self.bits}")
        if self.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"method.quant_type must be nf4 or fp4, got {self.quant_type!r}")
        if self.compute_dtype != "auto" and self.compute_dtype not in _DTYPES:
            raise ConfigError(f"method.compute_dtype must be auto or one of {', '.join(_DTYPES)}, "
                              f"got {self.compute_dtype!r}")

    def for_device(self, device_type: str | None, profile: str = "default", dtype: str | None = None):
        """LoRA's device-dependent values, and `compute_dtype: auto` resolved to `dtype`, the
        dtype the base loads in (None: not known; bfloat16 on CUDA, else float32)."""
        cfg = super().for_device(device_type, profile, dtype)
        if cfg.compute_dtype != "auto":
            return cfg
        if dtype not in _DTYPES:
            dtype = "bfloat16" if device_type == "cuda" else "float32"
        return dataclasses.replace(cfg, compute_dtype=dtype)


def unquantized_bytes(model, dtype_bytes: int = 4) -> int:
    """What the base weights would take unquantised: quantised layers count at full size."""
    total, seen = 0, set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is None or id(weight) in seen:
            continue
        seen.add(id(weight))
        if hasattr(module, "in_features") and type(weight).__module__.startswith("bitsandbytes"):
            total += module.in_features * module.out_features * dtype_bytes
        else:
            total += weight.numel() * dtype_bytes
        bias = getattr(module, "bias", None)
        if bias is not None and hasattr(bias, "numel"):
            total += bias.numel() * dtype_bytes
    return total


class QloraMethod(PeftArtifact):
    name = "qlora"
    shards_with_fsdp = True
    frozen_base = False  # its base is 4-bit already
    description = "LoRA on a 4-bit NF4 (double-quantised) or 8-bit base via bitsandbytes (Dettmers et al. 2023)."
    config_class = QloraMethodConfig

    def load_options(self, cfg: QloraMethodConfig) -> dict:
        try:
            import bitsandbytes  # noqa: F401
            import torch
            from transformers import BitsAndBytesConfig
        except ImportError as e:
            raise ConfigError(f"method qlora needs bitsandbytes ({e}); pip install bitsandbytes") from None
        cfg = cfg.for_device(None)  # the recipe resolves `auto` for its device and dtype first
        if cfg.bits == 8:
            return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
        return {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype))}

    def apply(self, model, cfg: QloraMethodConfig):
        import torch
        from peft import prepare_model_for_kbit_training

        if not getattr(model, "is_quantized", False):
            raise ConfigError("method qlora needs a base loaded with its quantisation options "
                              "(load_model(..., **method.load_options(cfg)))")
        before, after = unquantized_bytes(model), model.get_memory_footprint()
        info(f"qlora: base weights {before / 2**20:.1f} MiB unquantised → {after / 2**20:.1f} MiB "
             f"in {cfg.bits}-bit")
        # The base is frozen. PEFT's prepare_model_for_kbit_training also makes every layer left
        # unquantised (embeddings, norms, output layer) fp32, which fp16 needs for its range; bf16
        # does not, and for an 8B base the fp32 embeddings and output layer would cost 2.1 GB more
        # and turn off the bf16 autocast the recipe picks from the weights' dtype. So a bf16 (or
        # fp32) base is only frozen. Activation checkpointing stays the run's choice.
        if any(p.dtype == torch.float16 for p in model.parameters()):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            model.requires_grad_(False)
        return apply_peft(model, lora_config(cfg))

    def report(self, model, cfg: QloraMethodConfig) -> dict:
        base = model.get_base_model()
        adapters = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        return {"base_bytes_unquantized": unquantized_bytes(base) - adapters,
                "base_bytes_quantized": base.get_memory_footprint() - adapters}


register(QloraMethod())
