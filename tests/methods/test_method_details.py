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
