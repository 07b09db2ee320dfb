"""The first three losses of every training method, pinned (as torchtune pins its recipes').

Each method trains three AdamW steps on the fixed eight-example batch of the method matrix, on
the tiny Llama, seed 0, CPU. The losses must match the table to rel 1e-4 / abs 1e-5: a change in
how a method builds its model, its data or its initialisation shows up here even when "loss
falls" still holds.

The values were produced by running this test against torch, transformers and peft as pinned in
the run's `versions`. When an upgrade of torch, transformers or peft moves them, find out why
(a changed initialisation, a changed default, a changed loss reduction) before pasting new
numbers: the table is a contract, not a snapshot to refresh blindly. Pinned with torch 2.13
(CPU), transformers 5.24, peft 0.21. The bfloat16 row depends on the CPU's bf16 matmul kernels
too; a different CPU family may need its own look before its own row.
"""

from __future__ import annotations

import pytest
import torch

from .cases import CASES
from .matrix import batch, setup, train_steps

# case id → the first three losses, per dtype
PINNED: dict[str, dict[str, list[float]]] = {
    "full": {"float32": [8.264132, 6.816704, 5.205705]},
    "partial-last-block": {"float32": [8.264132, 5.861758, 4.530264]},
    "partial-pattern-embeddings": {"float32": [8.264132, 7.583024, 6.782004]},
    "partial-norm": {"float32": [8.264132, 6.886066, 6.235329]},
    "partial-bitfit": {"float32": [8.212875, 6.655029, 5.879354]},
    "lora": {"float32": [8.264132, 6.355349, 5.068216],
             "bfloat16": [8.269995, 6.349802, 5.085827]},
    "lora-qv": {"float32": [8.264132, 7.675237, 6.984951]},
    "dora": {"float32": [8.264132, 6.303063, 5.021622]},
    "rslora": {"float32": [8.264132, 6.091578, 4.533951]},
    "qlora-nf4": {"float32": [8.164462, 6.129823, 5.098619]},
    "qlora-8bit": {"float32": [8.260364, 6.314815, 5.122173]},
    "ia3": {"float32": [8.264132, 7.119280, 6.385710]},
    "prefix": {"float32": [8.291871, 8.139597, 7.984454]},
    "prompt": {"float32": [8.369985, 7.951489, 7.609100]},
    "adapter-sequential": {"float32": [8.264132, 7.936555, 7.418166]},
    "adapter-parallel": {"float32": [8.264132, 8.011250, 7.257692]},
    "adapter-residual": {"float32": [8.264132, 8.076118, 7.417506]},
    "head": {"float32": [0.865004, 0.646944, 0.439646]},
    "head-lora": {"float32": [0.824825, 0.416427, 0.172695]},
}

TRAINING = [c for c in CASES if c.method != "fewshot"]


@pytest.mark.parametrize("case", TRAINING, ids=[c.id for c in TRAINING])
def test_first_three_losses_match_the_pinned_table(case, model_dirs):
    torch.manual_seed(0)
    _, _, model, tokenizer = setup(case, model_dirs)
    losses = train_steps(model, batch(case, tokenizer), 3, case.lr)
    assert case.id in PINNED, f"no pinned losses for {case.id}: {losses}"
    assert losses == pytest.approx(PINNED[case.id]["float32"], rel=1e-4, abs=1e-5), losses


def test_lora_bfloat16_losses_on_cpu(model_dirs):
    """A bf16 base (the GPU default), pinned for LoRA on the CPU."""
    from affina.methods import build_method_config, get_method
    from affina.models import load_model

    from .matrix import chat_records

    case = next(c for c in CASES if c.id == "lora")
    method = get_method("lora")
    cfg = build_method_config(method, dict(case.options))
    loaded = load_model(str(model_dirs["tiny"]), device="cpu", dtype="bfloat16", for_training=True)
    torch.manual_seed(0)
    model = method.apply(loaded.model, cfg)
    # The frozen base is bf16; peft keeps the LoRA weights themselves in float32.
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    losses = train_steps(model, batch(case, loaded.tokenizer), 3, case.lr)
    assert losses == pytest.approx(PINNED["lora"]["bfloat16"], rel=1e-4, abs=1e-5), losses


def test_every_training_method_in_the_registry_has_pinned_losses():
    from affina.methods import Method, get_method, method_names

    # Methods with a trainer of their own (preference tuning) do not train on this SFT batch;
    # their first losses are pinned in closed form in test_preference.py.
    training = {n for n in method_names() if get_method(n).trains
                and type(get_method(n)).build_trainer is Method.build_trainer}
    pinned = {c.method for c in TRAINING if c.id in PINNED}
    assert training <= pinned, f"methods without pinned losses: {sorted(training - pinned)}"
