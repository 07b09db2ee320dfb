"""fp8 matmuls for the frozen base (train/fp8.py), on torch's CPU fp8 kernels: the quantisation
round trip, the fp8 matmul and its input gradient against the same sums computed from the
dequantised values (what the GPU's kernels compute too) and against full precision within e4m3's
error, the layer swap keeping parameters and state dicts, compiled blocks with no graph break,
and `train.mixed_precision=fp8` end to end: the run trains close to bf16, saves a plain adapter
and evaluates on plain layers; what it cannot run on fails with a config error."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from affina.config import load_config
from affina.errors import ConfigError
from affina.record import read_record
from affina.train.fp8 import (E4M3, Fp8Linear, fp8_base_layers, fp8_matmul, fp8_supported, quantize_rows,
                              quantize_tensor, restore_linear)
from affina.train.profiles import fp8_base
from affina.train.speed import compile_blocks, decoder_blocks, keep_input_dtype, profile_of

from .test_speed import _batch, _grads, _lora, _losses, _run

pytestmark = pytest.mark.skipif(fp8_supported(torch.device("cpu")) is not None,
                                reason=f"no fp8 matmul on this CPU build: {fp8_supported(torch.device('cpu'))}")


def _relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_rows_round_trip_is_within_e4m3_rounding():
    torch.manual_seed(0)
    x = torch.randn(6, 32) * torch.tensor([1e-3, 1.0, 50.0, 1.0, 1.0, 1.0])[:, None]  # rows of any scale
    x[3] = 0.0  # an all-zero row stays zero
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (6, 1)
    assert q.float().abs().amax(dim=-1)[[0, 1, 2, 4, 5]].eq(448).all()  # each row's largest is e4m3's largest
    back = q.float() * scale
    assert back[3].eq(0).all()
    # e4m3 keeps 3 mantissa bits: a normal number is within 2^-4 of itself; smaller ones within
    # e4m3's subnormal step times the row's scale.
    bound = torch.maximum(x.abs() * 2 ** -4, scale * 2 ** -9)
    assert ((back - x).abs() <= bound + 1e-12).all()
    w = torch.randn(16, 32)
    wq, wscale = quantize_tensor(w)
    assert wscale.shape == () and wq.float().abs().max() == 448


def test_fp8_matmul_is_the_dequantised_product_and_close_to_full_precision():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 64, requires_grad=True)
    w = torch.randn(48, 64) * 0.05
    wq, ws = quantize_tensor(w)
    y = fp8_matmul(x, wq, ws)
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16
    xq, xs = quantize_rows(x.detach().reshape(-1, 64))
    exact = ((xq.float() * xs) @ (wq.float() * ws).t()).reshape(2, 5, 48)
    torch.testing.assert_close(y.float(), exact, rtol=8e-3, atol=1e-3)  # bf16 output rounding only
    reference = x.detach() @ w.t()
    assert 0 < _relative(y, reference) < 0.06  # fp8 did run, within e4m3's error
    grad = torch.randn(2, 5, 48)
    y.backward(grad)
    gq, gs = quantize_rows(grad.to(torch.bfloat16).reshape(-1, 48))
    exact_gx = ((gq.float() * gs) @ (wq.float() * ws)).reshape(2, 5, 64)
    torch.testing.assert_close(x.grad.float(), exact_gx, rtol=8e-3, atol=1e-3)
    assert 0 < _relative(x.grad, grad @ w) < 0.06


class _FreshFp8(TorchDispatchMode):
    """Records the shape of every fp8 tensor an operation writes (views write nothing)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == E4M3 and not func.is_view:
            self.shapes.append(tuple(out.shape))
        return out


def test_the_input_gradient_reads_the_kept_transposed_copy():
    """An fp8 layer keeps its weight's fp8 values twice, as they are and transposed: the backward
    pass quantises the output gradient and writes no copy of the weight."""
    torch.manual_seed(0)
    layer = Fp8Linear.of(torch.nn.Linear(64, 48, bias=False).requires_grad_(False))
    assert layer.fp8_weight_t.is_contiguous() and layer.fp8_weight_t.shape == (64, 48)
    assert torch.equal(layer.fp8_weight_t.float(), layer.fp8_weight.t().float())
    x = torch.randn(5, 64, requires_grad=True)
    y = layer(x)
    with _FreshFp8() as written:
        y.float().pow(2).sum().backward()
    assert written.shapes == [(5, 48)]  # the quantised output gradient, and nothing else
    exact = x.detach().clone().requires_grad_()
    fp8_matmul(exact, layer.fp8_weight, layer.fp8_scale.reshape(-1)[0]).float().pow(2).sum().backward()
    assert torch.equal(x.grad, exact.grad)


def test_swap_keeps_parameters_and_state_dict_and_restores_plain_layers(tiny_model_dir):
    model = _lora(tiny_model_dir)
    keys, trainable = model.state_dict().keys(), [n for n, p in model.named_parameters() if p.requires_grad]
    weights = {n: p for n, p in model.named_parameters()}
    layers = model.config.num_hidden_layers * 7  # q, k, v, o, gate, up, down per block
    assert fp8_base_layers(decoder_blocks(model)) == layers
    swapped = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert len(swapped) == layers and all(not m.weight.requires_grad for m in swapped)
    assert not any(isinstance(m.lora_A["default"], Fp8Linear) for m in model.modules() if hasattr(m, "lora_A"))
    assert model.state_dict().keys() == keys  # the fp8 copies are not state
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    assert all(p is weights[n] for n, p in model.named_parameters())  # the same parameters
    assert fp8_base_layers(decoder_blocks(model)) == 0  # nothing left to swap
    assert restore_linear(model) == layers
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())
    assert all(p is weights[n] for n, p in model.named_parameters())


def test_adapter_gradients_under_fp8_are_close_to_bf16(tiny_model_dir):
    """LoRA's gradients through fp8 base layers stay within a few percent of bf16 autocast's."""
    model = _lora(tiny_model_dir)
    keep_input_dtype(model)
    ids, mask, labels = _batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    bf16 = _grads(model)
    model.zero_grad(set_to_none=True)
    fp8_base_layers(decoder_blocks(model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    got.backward()
    fp8 = _grads(model)
    assert got.item() == pytest.approx(expected.item(), rel=1e-2)
    assert fp8.keys() == bf16.keys() and len(bf16) > 0
    assert all(_relative(fp8[n], bf16[n]) < 0.1 for n in bf16), max(_relative(fp8[n], bf16[n]) for n in bf16)


def test_compiled_fp8_blocks_have_no_graph_break_and_equal_eager(tiny_model_dir):
    from torch._dynamo.utils import counters

    model = _lora(tiny_model_dir)
    keep_input_dtype(model)
    fp8_base_layers(decoder_blocks(model))
    ids, mask, labels = _batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    eager = _grads(model)
    torch._dynamo.reset()
    counters.clear()
    compile_blocks(model, backend="aot_eager")
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got.backward()
    assert dict(counters["graph_break"]) == {}
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    compiled = _grads(model)
    assert compiled.keys() == eager.keys() and len(eager) > 0
    # the same fp8 values and scales (no autocast rounding of the fp32 scales to bf16 in either)
    assert all(_relative(compiled[n], eager[n]) < 1e-6 for n in eager), max(_relative(compiled[n], eager[n]) for n in eager)
    torch._dynamo.reset()


def test_fp8_resolves_to_bf16_autocast_with_the_fp8_base():
    for device in (torch.device("cpu"), torch.device("cuda")):
        profile = profile_of("speed", device, mixed_precision="fp8")
        assert profile.fp8_base and profile.bf16_autocast and profile.mixed_precision == "fp8"
    assert profile_of("default", torch.device("cpu"), mixed_precision="bf16").mixed_precision == "bf16"
    assert profile_of("default", torch.device("cpu")).mixed_precision == "none"


def test_fp8_run_trains_close_to_bf16_and_saves_a_plain_adapter(tmp_path, tiny_model_dir):
    bf16 = _run(tmp_path, tiny_model_dir, "bf16", **{"train.mixed_precision": "bf16"})
    fp8 = _run(tmp_path, tiny_model_dir, "fp8", **{"train.mixed_precision": "fp8", "train.profile": "speed"})
    assert read_record(fp8).train.mixed_precision == "fp8"
    a, b = _losses(bf16, "loss"), _losses(fp8, "loss")
    assert a != b  # the fp8 base did run
    assert b == pytest.approx(a, rel=1e-2)
    assert _losses(fp8, "eval_loss") == pytest.approx(_losses(bf16, "eval_loss"), rel=1e-2)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, fp8 / "adapter")  # plain peft, plain layers
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_fp8_for_a_method_without_a_frozen_base_stops_before_anything_runs(tmp_path, tiny_model_dir, method):
    from affina.train.recipe import validate_run_config

    train_file = tmp_path / "t.jsonl"
    train_file.write_text('{"prompt": "a", "completion": "b"}\n')
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train={train_file}",
                             "train.mixed_precision=fp8", f"method.name={method}"])
    with pytest.raises(ConfigError, match=f"method {method} has none.*train.mixed_precision=bf16"):
        validate_run_config(cfg)


def test_fp8_with_every_linear_layer_training_is_a_config_error(tiny_model_dir):
    """The check on the model itself, for what the method's class cannot tell (partial
    fine-tuning that trains every block): nothing to swap."""
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", "train.mixed_precision=fp8", "method.name=partial"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match="method partial leaves no frozen linear layer.*mixed_precision=bf16"):
        fp8_base(model, cfg, torch.device("cpu"))


def test_fp8_under_fsdp_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="fp8.*distributed.strategy=ddp"):
        load_config(None, [f"model.spec={tiny_model_dir}", "train.mixed_precision=fp8", "distributed.strategy=fsdp"])
