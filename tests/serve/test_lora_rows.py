"""Stacked LoRA rows (`serve/lora_rows.py`): a forward pass over rows of different adapters and
the base gives each row what its adapter gives it alone, for adapters of different ranks, target
layers and scalings; adapters stacking cannot cover are named, and the server then keeps PEFT's
`adapter_names` for them."""

from __future__ import annotations

import pytest
import torch

from affina.serve.lora_rows import StackedLoraRows
from tests.helpers import make_tiny_model

ADAPTERS = {  # name → LoraConfig options: ranks, targets and scalings all differ
    "small": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    "wide": dict(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"]),
    "rs": dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["k_proj", "down_proj"]),
}


@pytest.fixture(scope="module")
def peft_model(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = make_tiny_model(tmp_path_factory.mktemp("lora-rows") / "base", seed=5, initializer_range=0.3)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = None
    for seed, (name, options) in enumerate(ADAPTERS.items()):
        torch.manual_seed(seed)
        config = LoraConfig(init_lora_weights=False, **options)  # random B: every adapter changes the output
        if peft is None:
            peft = get_peft_model(model, config, adapter_name=name)
        else:
            peft.add_adapter(name, config)
    return peft.eval()


@pytest.fixture
def stacked(peft_model):
    stacked = StackedLoraRows(peft_model)
    yield stacked
    stacked.forget()  # its hooks leave the shared model


def _logits(model, ids, **kwargs):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits


def _stacked(stacked, ids, names):
    stacked.no_adapter()  # the LoRA layers compute the base alone; the rows add their updates
    with stacked.rows(names):
        return _logits(stacked.model, ids)


def _alone(peft, ids, name):
    if name == "__base__":
        with peft.disable_adapter():
            return _logits(peft, ids)
    peft.set_adapter(name)
    return _logits(peft, ids)


def test_each_row_gets_its_own_adapter(peft_model, stacked):
    names = ["wide", "__base__", "small", "rs", "wide", "small", "__base__"]
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (len(names), 9))
    assert stacked.unsupported(names) is None
    together = _stacked(stacked, ids, names)
    alone = torch.cat([_alone(peft_model, ids[i:i + 1], name) for i, name in enumerate(names)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    # ... and PEFT's own per-row mixing agrees.
    torch.testing.assert_close(together, _logits(peft_model, ids, adapter_names=names), rtol=1e-4, atol=1e-4)
    # The rows really differ by adapter: the same prompt under each of them gives four answers.
    four = _stacked(stacked, ids[:1].repeat(4, 1), ["small", "wide", "rs", "__base__"])[:, -1]
    assert all(not torch.allclose(four[i], four[j], atol=1e-4) for i in range(4) for j in range(i))


def test_one_name_applies_to_every_row_and_nothing_is_added_outside_rows(peft_model, stacked):
    ids = torch.randint(3, 200, (3, 5))
    torch.testing.assert_close(_stacked(stacked, ids, ["rs"]), _alone(peft_model, ids, "rs"), rtol=1e-4, atol=1e-4)
    # A rows context may be entered again (the engine enters one per decoding step).
    stacked.no_adapter()
    rows = stacked.rows(["small", "wide", "__base__"])
    with rows:
        first = _logits(peft_model, ids)
    with rows:
        torch.testing.assert_close(_logits(peft_model, ids), first, rtol=0, atol=0)
    # Outside `rows` the hooks add nothing: PEFT's own path gives what it gives without them.
    stacked.no_adapter()
    base = _logits(peft_model, ids)
    torch.testing.assert_close(base, _alone(peft_model, ids, "__base__"), rtol=0, atol=0)
    peft_model.set_adapter("wide")
    with_hooks = _logits(peft_model, ids)
    stacked.forget()
    assert not any(m._forward_hooks for m in peft_model.modules())
    torch.testing.assert_close(_logits(peft_model, ids), with_hooks, rtol=0, atol=0)


def test_a_new_adapter_is_stacked_after_forget(peft_model):
    from peft import LoraConfig

    stacked = StackedLoraRows(peft_model)
    ids = torch.randint(3, 200, (2, 6))
    _stacked(stacked, ids, ["small", "wide"])
    torch.manual_seed(9)
    peft_model.add_adapter("late", LoraConfig(r=2, init_lora_weights=False, target_modules=["o_proj"]))
    stacked.forget()
    together = _stacked(stacked, ids, ["late", "small"])
    alone = torch.cat([_alone(peft_model, ids[:1], "late"), _alone(peft_model, ids[1:], "small")])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    peft_model.delete_adapter("late")
    stacked.forget()


@pytest.mark.parametrize("options, reason", [
    (dict(lora_bias=True), "a bias on B"),
    (dict(use_dora=True), "LoRA variant"),
    (dict(target_modules=["q_proj", "embed_tokens"]), "Embedding layer"),
])
def test_adapters_it_cannot_stack_are_named(tmp_path, options, reason):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "base", seed=5))
    config = {"r": 2, "target_modules": ["q_proj"], **options}
    peft = get_peft_model(model, LoraConfig(**config), adapter_name="odd")
    peft.add_adapter("plain", LoraConfig(r=2, target_modules=["q_proj"]))
    stacked = StackedLoraRows(peft)
    assert stacked.unsupported(["plain", "__base__"]) is None
    assert reason in stacked.unsupported(["plain", "odd"])


def test_the_server_falls_back_to_peft_for_them(serve_store, tmp_path):
    """A batch with an adapter stacking cannot cover runs with PEFT's `adapter_names`, and each
    row still answers as it does alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from affina.serve.engine import GenerationParams
    from affina.serve.server import ServeOptions, build_engine
    from tests.serve.conftest import make_lora_run

    base, _ = serve_store
    store = tmp_path / "runs"
    store.mkdir()
    make_lora_run(store, "plain", base, seed=11)
    odd = make_lora_run(store, "odd", base, seed=12)
    # Rewrite "odd" as an adapter with a bias on B (PEFT's lora_bias).
    torch.manual_seed(12)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=2, lora_bias=True, init_lora_weights=False, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(odd / "adapter")

    engine = build_engine(ServeOptions(store=store, base=str(base), threads=1, max_queue=64))
    runs = [engine.resolve(m).run for m in ("plain", "odd")]
    active, names, _ = engine.models.activate_mixed(runs + [None])
    assert active.kwargs == {"adapter_names": names}
    active, names, _ = engine.models.activate_mixed([runs[0], None])
    assert active.kwargs == {}

    params = GenerationParams(max_tokens=8, temperature=0)
    ids = [engine.chat_prompt_ids([{"role": "user", "content": p}]) for p in ("hi", "count to five", "zz")]
    engine.start()
    try:
        together = [engine.submit(engine.resolve(m), i, params) for i in ids for m in ("plain", "odd", "base")]
        together = [j.future.result(timeout=120).text for j in together]
        alone = [engine.submit(engine.resolve(m), i, params).future.result(timeout=120).text
                 for i in ids for m in ("plain", "odd", "base")]
    finally:
        engine.stop()
    assert together == alone and max(engine.batch_models) >= 2


def test_a_bf16_base_with_fp32_adapter_weights(tmp_path):
    """`affina serve --dtype bf16`: PEFT keeps adapter weights in fp32 over a bf16 base; the
    stacked update is computed in fp32 and added as PEFT adds it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = make_tiny_model(tmp_path / "base", seed=5, initializer_range=0.3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    peft = None
    for seed, (name, options) in enumerate(ADAPTERS.items()):
        torch.manual_seed(seed)
        config = LoraConfig(init_lora_weights=False, **options)
        peft = get_peft_model(model, config, adapter_name=name) if peft is None else peft
        if name not in peft.peft_config:
            peft.add_adapter(name, config)
    peft.eval()
    layer = peft.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A["small"].weight.dtype == torch.float32
    stacked = StackedLoraRows(peft)
    names = ["small", "__base__", "wide", "rs"]
    ids = torch.randint(3, 200, (len(names), 7))
    together = _stacked(stacked, ids, names)
    alone = torch.cat([_alone(peft, ids[i:i + 1], name) for i, name in enumerate(names)])
    assert together.dtype == torch.bfloat16
    torch.testing.assert_close(together.float(), alone.float(), rtol=2e-2, atol=2e-2)
    stacked.forget()
