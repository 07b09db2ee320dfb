"""Export a run as a plain HF model directory (adapter merged into its base), and optionally as
a GGUF file for llama.cpp and its relatives.

The base is loaded unquantised even for qlora runs, so the merge folds the adapter into full
precision weights instead of re-quantising them.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import AffinaError
from .record import read_record

__all__ = ["ExportError", "export_merged", "write_gguf", "GGUF_ARCHITECTURES"]

# HF class → GGUF architecture written by `write_gguf`. Others are refused with a clear message.
GGUF_ARCHITECTURES = {"LlamaForCausalLM": "llama"}


class ExportError(AffinaError):
    """A run that cannot be exported the way asked."""


def export_merged(run_dir: str | Path, out_dir: str | Path, *, gguf: bool = False) -> dict:
    """Write the run's merged model to `out_dir` (and `out_dir/model.gguf` with `gguf`)."""
    from .data.tokenize import ensure_chat_template
    from .models import load_model
    from .runs import is_run_dir, method_of_record

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not is_run_dir(run_dir):
        raise ExportError(f"{run_dir} is not a run directory (no affina.json)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty; pick a new output directory")
    record = read_record(run_dir)
    method, _ = method_of_record(record)
    if not method.can_merge:
        raise ExportError(f"method {method.name} has no merged form (its artifact is not a weight "
                          f"change); serve the run directory itself (affina serve) instead")
    loaded = load_model(record.base_model.spec, device="cpu", dtype="float32")
    model = method.load(loaded.model, record.artifact_dir(run_dir))
    merged = method.merge(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    ensure_chat_template(loaded.tokenizer)
    loaded.tokenizer.save_pretrained(out_dir)
    result = {"merged": str(out_dir), "class": type(merged).__name__, "method": method.name}
    if gguf:
        result["gguf"] = str(write_gguf(out_dir, out_dir / "model.gguf"))
    return result


def write_gguf(model_dir: Path, gguf_path: Path) -> Path:
    """Write the HF model in `model_dir` as an F32 GGUF file (llama architecture)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or ["?"])[0]
    if arch not in GGUF_ARCHITECTURES:
        raise ExportError(f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)}; this model is {arch}, "
                          f"so only the HF directory {model_dir} was written")
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim * heads != config.hidden_size:
        raise ExportError(f"GGUF export: head_dim {head_dim} × {heads} heads != hidden size "
                          f"{config.hidden_size}; llama.cpp's llama layout cannot hold it")

    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    writer.add_name(model_dir.name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, model_dir, config)

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if not config.tie_word_embeddings and "lm_head.weight" in weights:
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            key = f"model.layers.{layer}.{hf_name}.weight"
            if key not in weights:
                raise ExportError(f"GGUF export: {key} missing from {model_dir}")
            tensor = weights[key]
            # llama.cpp stores q/k rows interleaved for its rope (as convert_hf_to_gguf.py does).
            if gguf_name == "attn_q":
                tensor = _llama_permute(tensor, heads)
            elif gguf_name == "attn_k":
                tensor = _llama_permute(tensor, kv_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(tensor))
        for bias in ("self_attn.q_proj.bias", "mlp.down_proj.bias"):
            if f"model.layers.{layer}.{bias}" in weights:
                raise ExportError("GGUF export: this llama variant has bias terms, which the llama "
                                  "GGUF layout written here does not carry")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path


def _add_tokenizer(writer, model_dir: Path, config) -> None:
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"GGUF export needs {path} (a fast BPE tokenizer)")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    if tokenizer["model"]["type"] != "BPE":
        raise ExportError(f"GGUF export writes byte-level BPE tokenizers; this one is "
                          f"{tokenizer['model']['type']}")
    vocab = dict(tokenizer["model"]["vocab"])
    for t in tokenizer.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                            for t in tokens])
    writer.add_token_merges(merges)
    settings = json.loads((model_dir / "tokenizer_config.json").read_text()) \
        if (model_dir / "tokenizer_config.json").is_file() else {}
    for key, add in (("eos_token", writer.add_eos_token_id), ("bos_token", writer.add_bos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        token = settings.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if token in vocab:
            add(vocab[token])
    writer.add_add_bos_token(False)
    template = model_dir / "chat_template.jinja"
    if template.is_file():
        writer.add_chat_template(template.read_text())
    elif settings.get("chat_template"):
        writer.add_chat_template(settings["chat_template"])


def _llama_permute(weights, heads: int):
    # (heads * head_dim, hidden) with each head's rows in halves → pairs, as convert_hf_to_gguf.py
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))
