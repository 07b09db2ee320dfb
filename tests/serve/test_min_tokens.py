"""`min_tokens` (vLLM's request extension): no stop token before that many tokens, the same in a
running batch, a static batch and through the API; more than max_tokens is a 400."""

from __future__ import annotations

import openai
import pytest

from affina.serve.engine import GenerationParams
from affina.serve.server import ServeOptions, build_engine
from tests.helpers import make_tiny_model
from tests.serve.conftest import make_lora_run, start_server

PROMPTS = ["hi", "what is the number seven", "zz", "one two three", "a", "tell me about cats"]


@pytest.fixture(scope="module")
def talkative(tmp_path_factory):
    """A tiny base whose end token's output row is scaled up, so its greedy answers end early
    (at the first step where the hidden state points that way), and one LoRA run on it."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("min-tokens")
    path = make_tiny_model(root / "base", seed=3, initializer_range=0.3, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(path)
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos] *= 6
    model.save_pretrained(path)
    store = root / "runs"
    store.mkdir()
    make_lora_run(store, "a1", path, seed=41)
    return path, store


def _answers(engine, min_tokens: int):
    params = GenerationParams(max_tokens=16, temperature=0, min_tokens=min_tokens)
    jobs = [engine.submit(engine.resolve(m), engine.chat_prompt_ids([{"role": "user", "content": p}]), params)
            for p in PROMPTS for m in ("base", "a1")]
    return [(r.text, r.completion_tokens, r.finish_reason) for r in (j.future.result(timeout=120) for j in jobs)]


def test_min_tokens_holds_the_end_back_in_both_batching_modes(talkative):
    base, store = talkative
    results = {}
    for mode in ("continuous", "static"):
        engine = build_engine(ServeOptions(store=store, base=str(base), threads=1, batching=mode))
        engine.models.activate(engine.resolve("a1").run)  # base and adapter rows batch together
        engine.start()
        try:
            results[mode] = (_answers(engine, 0), _answers(engine, 12))
        finally:
            engine.stop()
    assert results["continuous"] == results["static"]
    free, held = results["continuous"]
    ended_early = [i for i, (_, n, reason) in enumerate(free) if reason == "stop" and n < 12]
    assert len(ended_early) >= len(free) // 2, free  # the model does end its answers early
    for i, (text, n, reason) in enumerate(held):
        assert n >= 12, held[i]
        # Up to where it ended, the held-back answer is the free one: only the end moved.
        assert text.startswith(free[i][0]) or i not in ended_early, (free[i], held[i])


def test_min_tokens_through_the_api(talkative, tmp_path):
    base, store = talkative
    thread, engine, _ = start_server(tmp_path, base, store)
    with thread:
        client = openai.OpenAI(base_url=thread.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "hi"}]
        free = client.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=10)
        held = client.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=10,
                                              extra_body={"min_tokens": 10})
        assert free.choices[0].finish_reason == "stop" and free.usage.completion_tokens < 10
        assert held.choices[0].finish_reason == "length" and held.usage.completion_tokens == 10
        done = client.completions.create(model="a1", prompt="hello", temperature=0, max_tokens=6,
                                         extra_body={"min_tokens": 6})
        assert done.usage.completion_tokens == 6
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="base", messages=messages, max_tokens=4,
                                           extra_body={"min_tokens": 5})
        assert e.value.body["param"] == "min_tokens" and "more than max_tokens" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="base", messages=messages, extra_body={"min_tokens": -1})
        assert e.value.body["param"] == "min_tokens"
    engine.stop()
