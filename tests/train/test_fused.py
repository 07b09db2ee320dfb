"""Sibling projections computed together (train/fused.py), on the CPU: a fused LoRA step gives
the unfused step's loss and gradients (with adapter dropout too, and with siblings that have no
adapter), without a second copy of any weight and with state dicts unchanged; adapters disabled
or merged still give the right outputs; compiled fused blocks have no graph break; in fp8 the
fused matmul is the unfused one's within e4m3 rounding; unfusing gives each weight its own
storage back."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from affina.train.fp8 import fp8_base_layers, fp8_linear, fp8_supported
from affina.train.fused import fuse_projections, fused_groups, unfuse_projections
from affina.train.speed import compile_blocks, decoder_blocks, keep_input_dtype

from .test_speed import _CountMatmuls, _batch, _grads, _lora, _lora_of_four_blocks


def _step(model, seed=None):
    ids, mask, labels = _batch(model.config.vocab_size)
    model.zero_grad(set_to_none=True)
    if seed is not None:
        torch.manual_seed(seed)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), _grads(model)


def _matmuls(model) -> int:
    """How many matmuls one forward pass runs."""
    ids, mask, _ = _batch(model.config.vocab_size)
    with torch.no_grad(), _CountMatmuls() as counter:
        model(input_ids=ids, attention_mask=mask)
    return counter.count


def _assert_same(a, b, rtol=1e-5, atol=1e-7):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_b, loss_a, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=rtol, atol=atol)


def test_fused_lora_step_equals_the_unfused_one_without_copies(tiny_model_dir):
    model = _lora(tiny_model_dir)
    keep_input_dtype(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _step(model)
    blocks = decoder_blocks(model)
    unfused_matmuls = _matmuls(model)
    assert fuse_projections(blocks) == 2 * len(blocks)  # q/k/v and gate/up in each block
    # Per block: 5 base and 5 down-projection matmuls become 2 and 2.
    assert _matmuls(model) == unfused_matmuls - 6 * len(blocks)
    attention = blocks[0].self_attn
    assert isinstance(attention.q_proj, LoraLinear) and type(attention.q_proj) is not LoraLinear
    # The siblings' base weights are slices of one tensor, not copies.
    q, k, v = (getattr(attention, n).base_layer.weight for n in ("q_proj", "k_proj", "v_proj"))
    group = attention.q_proj.fused_group
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == group.weight.untyped_storage().data_ptr()
    assert torch.equal(torch.cat([q, k, v]), group.weight)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

    _assert_same(expected, _step(model))
    assert all(g.input is None for g in fused_groups(model))  # nothing held between steps

    assert unfuse_projections(model) == 2 * len(blocks)
    assert type(attention.q_proj) is LoraLinear and not hasattr(attention.q_proj, "fused_group")
    assert q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()
    assert torch.equal(q, before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
    _assert_same(expected, _step(model))


def test_siblings_without_an_adapter_and_with_dropout_fuse_to_the_same_step(tiny_model_dir):
    """LoRA on q, v and up only (k and gate are plain frozen layers in the groups), with adapter
    dropout: each sibling keeps its own dropout mask, drawn in the unfused order."""
    model = _lora(tiny_model_dir, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.3)
    model.train()
    expected = _step(model, seed=5)
    assert fuse_projections(decoder_blocks(model)) == 2 * model.config.num_hidden_layers
    assert type(decoder_blocks(model)[0].self_attn.k_proj).__name__ == "FusedLinear"
    _assert_same(expected, _step(model, seed=5))
    assert _step(model, seed=6)[0] != expected[0]  # the dropout did run


def test_disabled_merged_and_called_alone_fall_back(tiny_model_dir):
    model = _lora(tiny_model_dir)
    ids, mask, _ = _batch(model.config.vocab_size)
    model.eval()
    with torch.no_grad():
        with_adapter = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            base_only = model(input_ids=ids, attention_mask=mask).logits
        fuse_projections(decoder_blocks(model))
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, with_adapter)
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, base_only)
        # A sibling called on its own, with another input, computes its own output.
        attention = decoder_blocks(model)[0].self_attn
        x = torch.randn(2, 3, model.config.hidden_size)
        attention.q_proj(x)
        y = torch.randn(2, 3, model.config.hidden_size)
        v = attention.v_proj.base_layer(y) + attention.v_proj.lora_B["default"](
            attention.v_proj.lora_A["default"](y)) * attention.v_proj.scaling["default"]
        torch.testing.assert_close(attention.v_proj(y), v)
        model.merge_adapter()  # merges into the fused weight's slices
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, with_adapter,
                                   rtol=1e-4, atol=1e-5)
        model.unmerge_adapter()
    unfuse_projections(model)
    merged = model.merge_and_unload()  # each weight in its own storage again: saves and loads plainly
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, with_adapter,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fp8", [False, True])
def test_compiled_fused_blocks_have_no_graph_break(tiny_model_dir, fp8):
    """The hand-over between siblings is traced into each block's graph (aot_eager backend), and
    the blocks still share their graphs: four blocks, each with groups of its own, compile twice
    (the first block, and all the others), not once a block; in fp8 too (under bf16 autocast)."""
    if fp8 and fp8_supported(torch.device("cpu")):
        pytest.skip(fp8_supported(torch.device("cpu")))
    from torch._dynamo.utils import counters

    model = _lora_of_four_blocks(tiny_model_dir)
    if fp8:
        fp8_base_layers(decoder_blocks(model))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=fp8)
    assert fuse_projections(decoder_blocks(model)) == 8
    with autocast:
        expected = _step(model)
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_blocks(model, backend="aot_eager")
        for _ in range(2):
            with autocast:
                got = _step(model)
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 2
        _assert_same(expected, got, **(dict(rtol=2e-2, atol=1e-4) if fp8 else {}))
        assert all(g.input is None for g in fused_groups(model))
    finally:
        torch._dynamo.reset()


@pytest.mark.skipif(fp8_supported(torch.device("cpu")) is not None, reason="no fp8 matmul on this CPU build")
def test_fp8_siblings_fuse_to_the_unfused_fp8_step(tiny_model_dir):
    """In fp8 the forward is the unfused one's (each token quantised once over the same input,
    each sibling's rows scaled by its own scale); the input gradient is quantised per token over
    all siblings' outputs together, so it differs from the unfused one within e4m3 rounding."""
    model = _lora(tiny_model_dir)
    keep_input_dtype(model)
    reference = _step(model)  # float32
    fp8_base_layers(decoder_blocks(model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unfused = _step(model)
    fuse_projections(decoder_blocks(model))
    group = decoder_blocks(model)[0].self_attn.q_proj.fused_group
    assert group.fp8 and group.weight.dtype == torch.float8_e4m3fn
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _step(model)
    torch.testing.assert_close(fused[0], unfused[0], rtol=2e-3, atol=0)
    for name, g in reference[1].items():
        error = lambda got: ((got[name] - g).norm() / g.norm()).item()  # noqa: E731
        assert error(fused[1]) < max(0.1, 1.5 * error(unfused[1])), name
    # A sibling called on its own multiplies with its slices of the group's copies, the transposed
    # one a block of columns of a wider matrix: the same input gradient as from copies of its own.
    v = decoder_blocks(model)[0].self_attn.v_proj.base_layer
    assert not v.fp8_weight_t.is_contiguous()
    x = torch.randn(5, model.config.hidden_size, requires_grad=True)
    own = x.detach().clone().requires_grad_()
    v(x).float().pow(2).sum().backward()
    fp8_linear(own, v.fp8_weight.clone(), v.fp8_weight_t.contiguous(), v.fp8_scale,
               v.fp8_ones).float().pow(2).sum().backward()
    assert torch.equal(x.grad, own.grad) and x.grad.abs().sum() > 0


def test_fuse_projections_is_asked_for_and_refused_under_fsdp(tiny_model_dir):
    from affina.config import load_config
    from affina.errors import ConfigError
    from affina.train.speed import profile_of

    cpu = torch.device("cpu")
    assert not profile_of("speed", cpu).fuse_projections  # off unless asked for
    assert profile_of("default", cpu, fuse_projections=True).fuse_projections
    base = [f"model.spec={tiny_model_dir}"]
    assert load_config(None, [*base, "train.fuse_projections=true"]).train.fuse_projections is True
    with pytest.raises(ConfigError, match="train.fuse_projections"):
        load_config(None, [*base, "train.fuse_projections=always"])
    with pytest.raises(ConfigError, match="train.fuse_projections lays .* FSDP"):
        load_config(None, [*base, "train.fuse_projections=true", "distributed.strategy=fsdp"])


def test_a_whole_model_checkpoint_saves_fused_weights_as_separate_tensors(tmp_path, tiny_model_dir):
    """Partial fine-tuning of the last block saves the whole model at each checkpoint: the frozen
    first block's fused q/k/v and gate/up weights (slices of one tensor during training) are
    written as the base's own tensors, and the run's artifact too."""
    from safetensors.torch import load_file

    from affina.config import load_config
    from affina.train import train

    from .test_speed import _rows

    overrides = [f"model.spec={tiny_model_dir}", f"data.train={_rows(tmp_path / 'train.jsonl')}",
                 "data.val_fraction=0.25", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=partial",
                 "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2", "train.batch_size=4",
                 "track.mlflow=false", "model.device=cpu", "method.name=partial", "method.last_n_blocks=1",
                 "train.fuse_projections=true"]
    result = train(load_config(None, overrides), display="quiet")
    assert result.record.train.fused_projections
    base = load_file(tiny_model_dir / "model.safetensors")
    names = [f"model.layers.0.{n}.weight" for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                     "mlp.gate_proj", "mlp.up_proj")]
    for saved in (result.run_dir / "checkpoints" / "checkpoint-2" / "model.safetensors",
                  result.run_dir / "adapter" / "model.safetensors"):
        tensors = load_file(saved)
        for name in names:
            assert torch.equal(tensors[name], base[name]), (saved, name)
