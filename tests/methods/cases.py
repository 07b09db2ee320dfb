"""The method test table: one row per (method, settings, tiny model), with what the method claims
to train and its trainable-parameter count in closed form.

Tiny Llama (tests/helpers.make_tiny_model): L=2 blocks, d=64 hidden, i=128 intermediate,
4 heads / 2 KV heads of 16 → kv=32, tied embeddings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

L, D, I, KV = 2, 64, 128, 32
# (d_in, d_out) of every linear layer in a block, the layers `all-linear` adapts
LINEARS = {"q_proj": (D, D), "k_proj": (D, KV), "v_proj": (D, KV), "o_proj": (D, D),
           "gate_proj": (D, I), "up_proj": (D, I), "down_proj": (I, D)}
BLOCK = D * D * 2 + D * KV * 2 + 3 * D * I + 2 * D  # all weights of one block (2 RMSNorms)


def lora_count(r: int) -> int:
    return L * sum(r * (d_in + d_out) for d_in, d_out in LINEARS.values())


def adapter_count(b: int, per_block: int) -> int:
    return L * per_block * (2 * D * b + b + D)


@dataclass
class Case:
    id: str
    method: str
    options: dict
    claims: Callable[[str], bool]  # parameter name → the method says it trains it
    count: Callable[[int], int]  # vocab size → trainable parameters in closed form
    model: str = "tiny"  # "tiny" or "tiny_bias" (attention and MLP biases, for BitFit)
    lr: float = 1e-2
    extra: dict = field(default_factory=dict)


def _has(*parts: str) -> Callable[[str], bool]:
    return lambda name: any(p in name for p in parts)


def _regex(pattern: str) -> Callable[[str], bool]:
    return lambda name: re.search(pattern, name) is not None


CASES = [
    Case("full", "full", {}, lambda n: True, lambda v: v * D + L * BLOCK + D, lr=3e-3),
    Case("partial-last-block", "partial", {"last_n_blocks": 1}, _regex(r"layers\.1\."), lambda v: BLOCK),
    Case("partial-pattern-embeddings", "partial",
         {"last_n_blocks": 0, "patterns": [r"o_proj"], "embeddings": True},
         _has("o_proj", "embed_tokens"), lambda v: L * D * D + v * D, lr=3e-3),
    Case("partial-norm", "partial", {"last_n_blocks": 0, "norm": True}, _has("norm"),
         lambda v: L * 2 * D + D, lr=0.15),
    Case("partial-bitfit", "partial", {"last_n_blocks": 0, "bitfit": True}, _has(".bias"),
         lambda v: L * (D + KV + KV + D + I + I + D), model="tiny_bias", lr=0.15),
    Case("lora", "lora", {"r": 4, "dropout": 0.0}, _has("lora_"), lambda v: lora_count(4)),
    Case("lora-qv", "lora", {"r": 2, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
         _has("lora_"), lambda v: L * 2 * ((D + D) + (D + KV))),
    Case("dora", "dora", {"r": 4, "dropout": 0.0}, _has("lora_"),
         lambda v: lora_count(4) + L * sum(o for _, o in LINEARS.values())),
    Case("rslora", "rslora", {"r": 4, "dropout": 0.0}, _has("lora_"), lambda v: lora_count(4)),
    Case("qlora-nf4", "qlora", {"r": 4, "dropout": 0.0}, _has("lora_"), lambda v: lora_count(4)),
    Case("qlora-8bit", "qlora", {"r": 4, "dropout": 0.0, "bits": 8}, _has("lora_"), lambda v: lora_count(4)),
    Case("ia3", "ia3", {}, _has("ia3_"), lambda v: L * (KV + KV + I), lr=0.15),
    Case("prefix", "prefix", {"num_virtual_tokens": 5}, _has("prompt_encoder"),
         lambda v: 5 * L * 2 * KV, lr=0.15),
    Case("prompt", "prompt", {"num_virtual_tokens": 5}, _has("prompt_encoder"), lambda v: 5 * D, lr=0.15),
    Case("adapter-sequential", "adapter", {"placement": "sequential", "bottleneck_size": 8},
         _has("bottleneck_"), lambda v: adapter_count(8, 2)),
    Case("adapter-parallel", "adapter", {"placement": "parallel", "reduction_factor": 8, "scaling": 2.0},
         _has("bottleneck_"), lambda v: adapter_count(D // 8, 1), lr=3e-2),
    Case("adapter-residual", "adapter", {"placement": "residual", "bottleneck_size": 8, "layers": [-1]},
         _has("bottleneck_"), lambda v: adapter_count(8, 1) // L, lr=3e-2),
    Case("head", "head", {"labels": ["neg", "pos"]}, _has("score"), lambda v: D * 2, lr=3e-2),
    Case("head-lora", "head", {"labels": ["neg", "pos"], "lora": True, "r": 2, "dropout": 0.0},
         _has("score", "lora_"), lambda v: D * 2 + lora_count(2)),
    Case("fewshot", "fewshot", {"k": 2, "selection": "random"}, lambda n: False, lambda v: 0),
]
