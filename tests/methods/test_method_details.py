"""Method-specific guarantees the matrix does not cover."""

from __future__ import annotations

import pytest
import torch

from affina.data.tokenize import ensure_chat_template
from affina.errors import ConfigError
from affina.methods import build_method_config, get_method
from affina.models import load_model


@pytest.mark.parametrize("placement", ["sequential", "parallel", "residual"])
def test_adapter_equals_base_at_step_zero(placement, tiny_model_dir):
    base = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = base(ids).logits.clone()
    method = get_method("adapter")
    model = method.apply(base, build_method_config(method, {"placement": placement, "activation": "gelu"}))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
    # ...and the adapters really sit in the forward pass: a non-zero up-projection changes it.
    for name, p in model.named_parameters():
        if "bottleneck_" in name and name.endswith("up.weight"):
            torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, expected)


def test_bitfit_says_clearly_when_the_model_has_no_biases(tiny_model_dir):
    method = get_method("partial")
    cfg = build_method_config(method, {"last_n_blocks": 0, "bitfit": True})
    base = load_model(str(tiny_model_dir), device="cpu").model
    with pytest.raises(ConfigError, match="has no bias parameters"):
        method.apply(base, cfg)


def test_bad_method_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="method.placement"):
        build_method_config(get_method("adapter"), {"placement": "diagonal"})
    with pytest.raises(ConfigError, match="method.bits"):
        build_method_config(get_method("qlora"), {"bits": 3})
    with pytest.raises(ConfigError, match="selects nothing"):
        build_method_config(get_method("partial"), {"last_n_blocks": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        build_method_config(get_method("lora"), {"rank": 4})


def test_qlora_quantises_the_base_and_reports_both_footprints(tiny_model_dir):

    method = get_method("qlora")
    cfg = build_method_config(method, {"r": 2})
    base = load_model(str(tiny_model_dir), device="cpu", dtype="float32", **method.load_options(cfg)).model
    assert type(base.model.layers[0].self_attn.q_proj.weight).__name__ == "Params4bit"
    model = method.apply(base, cfg)
    report = method.report(model, cfg)
    assert report["base_bytes_quantized"] < report["base_bytes_unquantized"]


@pytest.mark.parametrize("device, dtype, expected", [
    ("cuda", "bfloat16", "bfloat16"), ("cpu", "float32", "float32"), ("cpu", "bfloat16", "bfloat16"),
    ("cuda", "float16", "float16"), ("cuda", None, "bfloat16"), (None, None, "float32"),
])
def test_qlora_compute_dtype_auto_is_the_dtype_the_base_loads_in(device, dtype, expected):
    method = get_method("qlora")
    cfg = build_method_config(method, {})
    assert cfg.compute_dtype == "auto"
    assert method.resolve_for_device(cfg, device, "default", dtype).compute_dtype == expected
    kept = build_method_config(method, {"compute_dtype": "float16"})
    assert method.resolve_for_device(kept, device, "default", dtype).compute_dtype == "float16"
    with pytest.raises(ConfigError, match="method.compute_dtype must be auto or one of"):
        build_method_config(method, {"compute_dtype": "int4"})


@pytest.mark.parametrize("dtype, rest", [("bfloat16", torch.bfloat16), ("float16", torch.float32),
                                         ("float32", torch.float32)])
def test_qlora_keeps_a_bf16_base_bf16_and_gives_fp16_layers_fp32(tiny_model_dir, dtype, rest):
    """A bf16 base's unquantised layers stay bf16 (no 2 GB of fp32 embeddings on an 8B base, and
    the recipe's bf16 autocast stays on); fp16 ones go to fp32 as PEFT's preparation makes them.
    Either way only the adapter trains, and its 4-bit layers compute in the base's dtype."""
    method = get_method("qlora")
    cfg = method.resolve_for_device(build_method_config(method, {"r": 2}), "cpu", "default", dtype)
    base = load_model(str(tiny_model_dir), device="cpu", dtype=dtype, **method.load_options(cfg)).model
    model = method.apply(base, cfg)
    inner = model.get_base_model()
    assert inner.get_input_embeddings().weight.dtype == rest
    assert inner.model.norm.weight.dtype == rest
    assert inner.model.layers[0].self_attn.q_proj.base_layer.compute_dtype == getattr(torch, dtype)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n}
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in model.named_parameters() if "lora_B" in n)


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ensure_chat_template(tok)
    return tok


def test_chat_layout_inserts_demonstrations_as_real_turns(tiny_model_dir):
    from affina.methods._chat_text import ChatLayout

    tok = _tokenizer(tiny_model_dir)
    layout = ChatLayout(tok)
    system = [{"role": "system", "content": "Be brief."}]
    prompt = tok.apply_chat_template(system + [{"role": "user", "content": "hello"}], tokenize=False,
                                     add_generation_prompt=True)
    before, user, after = layout.split(prompt)
    assert user == "hello"
    demos = [("q1", "a1"), ("q2", "a2")]
    rebuilt = before + layout.turns(demos) + layout.header + user + after
    expected = tok.apply_chat_template(
        system + [m for q, a in demos for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        + [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True)
    assert rebuilt == expected


def test_fewshot_nearest_picks_similar_examples_and_changes_the_prompt(tiny_model_dir):
    from affina.methods.embedder import TextEmbedder
    from affina.methods.fewshot_model import FewShotModel

    pool = [("What colour is a ripe banana?", "yellow"), ("How many legs does a spider have?", "eight"),
            ("What colour is grass?", "green"), ("How many wheels does a bicycle have?", "two")]
    embedder = TextEmbedder()
    tok = _tokenizer(tiny_model_dir)
    base = load_model(str(tiny_model_dir), device="cpu").model
    model = FewShotModel(base, tok, pool, 2, "nearest", [0, 1], embedder.encode([q for q, _ in pool]), embedder)
    picks = model.choose(["How many legs does an ant have?"])[0]
    assert set(picks) == {1, 3}
    assert picks[-1] == 1  # the closest sits next to the question

    prompt = tok.apply_chat_template([{"role": "user", "content": "How many legs does an ant have?"}],
                                     tokenize=False, add_generation_prompt=True)
    (rewritten,), _ = model._with_demos([prompt])
    assert "spider" in rewritten and "bicycle" in rewritten and "banana" not in rewritten
    # forward with demonstrations in context differs from the bare base model's logits
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(ids).logits.shape == base(ids).logits.shape
        assert not torch.allclose(model(ids).logits[0, -1], base(ids).logits[0, -1])


def test_the_recipe_asks_the_protocol_never_the_method_name():
    import inspect
    import re

    from affina.methods import method_names
    from affina.train import recipe

    source = inspect.getsource(recipe)
    assert not re.search(r"method\.name\s*(==|!=|in\b)", source)
    names = "|".join(method_names())
    assert not re.search(rf"(==|!=|\bin)\s*[\(\[{{]?\s*[\"']({names})[\"']", source)


@pytest.mark.xfail(strict=True, reason="transformers 5 generate() drops the past_key_values peft's "
                   "prefix tuning passes (docs/methods.md, known limitation)")
def test_prefix_tuning_changes_generation(tiny_model_dir):
    base = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    method = get_method("prefix")
    model = method.apply(base, build_method_config(method, {"num_virtual_tokens": 5}))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 3)
        assert not torch.equal(model(input_ids=ids).logits[0, -1], base(ids).logits[0, -1])  # forward uses it
    tuned = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert not torch.equal(tuned, plain)


def test_a_qlora_run_records_the_compute_dtype_it_resolved(tmp_path, tiny_model_dir):
    """Resolved before the base loads (the quantisation options need it): a bf16 base on the CPU
    computes in bf16, and the record says so."""
    from affina.config import load_config
    from affina.record import read_record
    from affina.train import train
    from tests.helpers import method_rows

    data = tmp_path / "train.jsonl"
    data.write_text(method_rows(classify=False))
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train=[{data}]", "model.device=cpu",
                             "model.dtype=bfloat16", "data.val_fraction=0", f"train.output_dir={tmp_path}",
                             "train.run_name=auto", "train.max_steps=2", "train.batch_size=4",
                             "method.name=qlora", "method.r=2", "track.mlflow=false"])
    run_dir = train(cfg, display="quiet").run_dir
    options = read_record(run_dir).method.options
    assert options["compute_dtype"] == "bfloat16" and options["dropout"] == 0.0
