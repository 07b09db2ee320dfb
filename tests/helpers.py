"""Tiny models for unit tests: random Llama weights + the tiny tokenizer, saved as HF dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny-tokenizer"


# Options that keep each method's run on the tiny model to a few seconds.
SMALL_METHOD_OPTIONS = {"lora": ["method.r=2"], "dora": ["method.r=2"], "rslora": ["method.r=2"],
                        "qlora": ["method.r=2"], "prefix": ["method.num_virtual_tokens=4"],
                        "prompt": ["method.num_virtual_tokens=4"], "fewshot": ["method.k=2"],
                        "partial": ["method.last_n_blocks=1"]}


def method_rows(classify: bool) -> str:
    """16 JSONL rows to train a method on: text+label rows for a classifier, else chat rows
    ("say the number i" → "number i")."""
    import json

    if classify:
        rows = [{"text": f"this is {'great' if i % 2 else 'awful'} number {i}",
                 "label": "pos" if i % 2 else "neg"} for i in range(16)]
    else:
        rows = [{"messages": [{"role": "user", "content": f"say the number {i}"},
                              {"role": "assistant", "content": f"number {i}"}]} for i in range(16)]
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_tiny_model(path: Path | str, seed: int = 0, **config_overrides) -> Path:
    """Save a random-initialised LlamaForCausalLM with the tiny tokenizer into `path`.

    2 layers, hidden 64, 4 heads / 2 KV heads, tied embeddings: the default model's shape in
    miniature, ~70k parameters. `config_overrides` go to LlamaConfig.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.save_pretrained(path)
    for asset in TINY_TOKENIZER_DIR.iterdir():
        shutil.copy2(asset, path / asset.name)
    return path


def write_tiny_gguf(model_dir: Path, gguf_path: Path) -> Path:
    """Write the tiny model in `model_dir` as an F32 llama GGUF, the way llama.cpp would.

    Lets the GGUF conversion be tested in seconds instead of on the 98 MB default model.
    """
    import gguf
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if not config.tie_word_embeddings:
        raise ValueError("write_tiny_gguf writes tied-embedding models only")
    from safetensors.numpy import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    eos = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|im_end|>")

    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                            for t in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos)
    writer.add_add_bos_token(False)
    chat_template = model_dir / "chat_template.jinja"
    if chat_template.is_file():
        writer.add_chat_template(chat_template.read_text())

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            tensor = weights[f"model.layers.{layer}.{hf_name}.weight"]
            # llama.cpp stores q/k rows interleaved for its rope; transformers undoes this on load.
            if gguf_name == "attn_q":
                tensor = _llama_permute(tensor, heads)
            elif gguf_name == "attn_k":
                tensor = _llama_permute(tensor, kv_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path


def _llama_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    # (heads * head_dim, hidden) with each head's rows in halves → pairs, as convert_hf_to_gguf.py
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))
