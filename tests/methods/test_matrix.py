"""Every method through the same checks (`pytest -k <method>` selects one):

- a training step changes exactly the parameters the method claims, and no others;
- loss falls when memorising eight examples;
- save → load onto a fresh base → identical logits;
- merge (where defined) → the same logits, and the merged model loads with plain transformers;
- trainable parameters equal their closed form.
"""

from __future__ import annotations

import pytest
import torch

from affina.errors import ConfigError
from affina.methods import trainable_report

from .cases import CASES
from .matrix import batch, fresh_base, logits, probe, setup, train_steps

IDS = [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_trainable_count_is_closed_form(case, model_dirs):
    _, _, model, tokenizer = setup(case, model_dirs)
    assert trainable_report(model).trainable == case.count(len(tokenizer))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_step_changes_exactly_what_the_method_claims(case, model_dirs):
    method, _, model, tokenizer = setup(case, model_dirs)
    names = [n for n, _ in model.named_parameters()]
    claimed = {n for n in names if case.claims(n)}
    assert claimed == {n for n, p in model.named_parameters() if p.requires_grad}
    if not method.trains:
        assert not claimed
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Two steps: zero-initialised halves (LoRA B, adapter up-projections) get a gradient only
    # after the first step has moved their partner.
    train_steps(model, batch(case, tokenizer), 2, case.lr)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == claimed


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loss_falls_memorising_eight_examples(case, model_dirs):
    method, _, model, tokenizer = setup(case, model_dirs)
    if not method.trains:
        pytest.skip("fewshot does not train")
    losses = train_steps(model, batch(case, tokenizer), 30, case.lr)
    assert losses[-1] < 0.7 * losses[0], losses[::5]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_then_load_onto_fresh_base_gives_identical_logits(case, model_dirs, tmp_path):
    method, cfg, model, tokenizer = setup(case, model_dirs)
    if method.trains:
        train_steps(model, batch(case, tokenizer), 2, case.lr)
    method.save(model, tmp_path / "artifact")
    tokenizer.save_pretrained(tmp_path / "artifact")  # as the recipe does
    inputs = probe(case, tokenizer)
    expected = logits(model, inputs)
    loaded = method.load(fresh_base(case, model_dirs, method, cfg).model, tmp_path / "artifact")
    assert torch.allclose(logits(loaded, inputs), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_keeps_logits_and_loads_with_plain_transformers(case, model_dirs, tmp_path):
    method, cfg, model, tokenizer = setup(case, model_dirs)
    if method.trains:
        train_steps(model, batch(case, tokenizer), 3, case.lr)
    method.save(model, tmp_path / "artifact")
    tokenizer.save_pretrained(tmp_path / "artifact")
    # As `affina export` does: the artifact onto an unquantised base, then merged.
    loaded = method.load(fresh_base(case, model_dirs, method, cfg, quantized=False).model,
                         tmp_path / "artifact")
    if not method.can_merge:
        with pytest.raises(ConfigError, match="cannot be merged|no weights to merge"):
            method.merge(loaded)
        return
    inputs = probe(case, tokenizer)
    expected = logits(loaded, inputs)
    merged = method.merge(loaded)
    assert "lora" not in " ".join(n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged, inputs), expected, atol=1e-4)
    merged.save_pretrained(tmp_path / "merged")

    import transformers

    cls = (transformers.AutoModelForSequenceClassification if case.method == "head"
           else transformers.AutoModelForCausalLM)
    plain = cls.from_pretrained(tmp_path / "merged")
    assert torch.allclose(logits(plain, inputs), expected, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp8_base_trains_every_method_with_a_frozen_base(case, model_dirs):
    """train.mixed_precision=fp8 (train/fp8.py) under every method whose base stays frozen: the
    frozen linear layers run in fp8 under bf16 autocast, the loss still falls memorising eight
    examples, only the claimed parameters move, and plain layers come back afterwards."""
    from affina.train.fp8 import Fp8Linear, fp8_base_layers, fp8_supported, restore_linear
    from affina.train.speed import decoder_blocks

    method, _, model, tokenizer = setup(case, model_dirs)
    if not (method.trains and method.frozen_base):
        pytest.skip(f"{case.id}: fp8 is refused for it (nothing frozen, a 4-bit base, or nothing trains)")
    if fp8_supported(torch.device("cpu")):
        pytest.skip(fp8_supported(torch.device("cpu")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    swapped = fp8_base_layers(decoder_blocks(model))
    assert swapped > 0
    losses = train_steps(model, batch(case, tokenizer), 30, case.lr, autocast=torch.bfloat16)
    assert losses[-1] < 0.7 * losses[0], losses[::5]
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {n for n, _ in model.named_parameters() if case.claims(n)}
    assert restore_linear(model) == swapped
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_projections_train_every_method_as_unfused(case, model_dirs):
    """train.fuse_projections (train/fused.py) under every method: the sibling projections it can
    fuse (frozen plain linear layers and plain LoRA layers; not DoRA, a 4-bit base or weights that
    train) give the same three training steps as unfused ones, parameter for parameter, and come
    apart again afterwards."""
    from affina.train.fused import fuse_projections, fused_groups, unfuse_projections
    from affina.train.speed import decoder_blocks

    method, _, plain, tokenizer = setup(case, model_dirs)
    if not method.trains:
        pytest.skip(f"{case.id} does not train")
    _, _, fused, _ = setup(case, model_dirs)
    groups = fuse_projections(decoder_blocks(fused))
    fusable = method.frozen_base and case.method != "dora"
    assert (groups > 0) == fusable, groups
    inputs = batch(case, tokenizer)
    torch.manual_seed(3)
    expected = train_steps(plain, inputs, 3, case.lr)
    torch.manual_seed(3)
    got = train_steps(fused, inputs, 3, case.lr)
    assert got == pytest.approx(expected, rel=1e-5)
    assert unfuse_projections(fused) == groups and not fused_groups(fused)
    params = dict(plain.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p, params[name], rtol=1e-4, atol=1e-6)
