"""Write an HF llama model directory as a GGUF file that llama.cpp, transformers and affina all
read back as the same chat model: weights (F32, F16 or Q8_0), and the tokenizer with everything
generation depends on -- special token ids, `add_bos_token`, the chat template and the stop set.

Tensor names and the q/k row order follow llama.cpp's `convert_hf_to_gguf.py`, so the file is
what that converter would have written for the same directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AffinaError
from .models.convert import STOP_IDS_KEY

__all__ = ["ExportError", "GGUF_ARCHITECTURES", "GGUF_TYPES", "GgufWritten", "write_gguf",
           "source_pre_tokenizer", "gguf_file_type"]

# HF class → GGUF architecture written here. Others are refused with a clear message.
GGUF_ARCHITECTURES = {"LlamaForCausalLM": "llama"}
# --gguf-type → (llama.cpp file type, what it means). Only 2-D weights take the type: norms stay
# F32, as llama.cpp's converter keeps them (they are tiny, and rounding them costs accuracy).
GGUF_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


class ExportError(AffinaError):
    """A run or model that cannot be exported the way asked."""


@dataclass
class GgufWritten:
    path: Path
    type: str
    pre: str
    warnings: list[str] = field(default_factory=list)


def write_gguf(model_dir: Path, gguf_path: Path, *, gguf_type: str = "f32",
               pre: str | None = None) -> GgufWritten:
    """Write the HF model in `model_dir` to `gguf_path`. `pre`: llama.cpp's pre-tokenizer name
    (`tokenizer.ggml.pre`) when the source model is known to have one; else inferred."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or ["?"])[0]
    if arch not in GGUF_ARCHITECTURES:
        raise ExportError(f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)}; this model is "
                              f"{arch}, so only the HF directory {model_dir} was written")
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
    writer.add_file_type(getattr(gguf.LlamaFileType, GGUF_TYPES[gguf_type]))
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
    written = GgufWritten(gguf_path, gguf_type, "")
    _add_tokenizer(writer, model_dir, pre, written)

    def add(name: str, tensor) -> None:
        _add_typed_tensor(writer, name, np.ascontiguousarray(tensor, dtype=np.float32), gguf_type)

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    add("output_norm.weight", weights["model.norm.weight"])
    if not config.tie_word_embeddings and "lm_head.weight" in weights:
        add("output.weight", weights["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for bias in ("self_attn.q_proj.bias", "mlp.down_proj.bias"):
            if f"model.layers.{layer}.{bias}" in weights:
                raise ExportError("GGUF export: this llama variant has bias terms, which the "
                                      "llama GGUF layout written here does not carry")
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
            add(f"blk.{layer}.{gguf_name}.weight", tensor)
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def _add_typed_tensor(writer, name: str, tensor, gguf_type: str) -> None:
    import gguf
    import numpy as np

    if tensor.ndim < 2 or gguf_type == "f32":
        writer.add_tensor(name, tensor)
    elif gguf_type == "f16":
        writer.add_tensor(name, tensor.astype(np.float16))
    else:
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if tensor.shape[-1] % block:  # Q8_0 quantises rows in blocks of 32; llama.cpp falls back too
            writer.add_tensor(name, tensor.astype(np.float16))
            return
        quantised = gguf.quants.quantize(tensor, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def _add_tokenizer(writer, model_dir: Path, pre: str | None, written: GgufWritten) -> None:
    import gguf
    from transformers import AutoTokenizer

    from .data.tokenize import stop_token_ids

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"GGUF export needs {path} (a fast BPE tokenizer)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec["model"]["type"] != "BPE":
        raise ExportError(f"GGUF export writes byte-level BPE tokenizers; this one is "
                              f"{spec['model']['type']}")
    # The tokenizer transformers builds from the directory: the object whose chat template and
    # special tokens the run recorded, so the GGUF says exactly what it says.
    hf = AutoTokenizer.from_pretrained(model_dir)
    vocab = dict(spec["model"]["vocab"])
    for t in spec.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ExportError("GGUF export: the vocabulary has gaps in its ids; GGUF stores tokens "
                              "by position")
    added = {t["content"]: t for t in spec.get("added_tokens", [])}

    def token_type(token: str):
        if token not in added:
            return gguf.TokenType.NORMAL
        return gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED

    if pre is None:
        pre = _infer_pre(spec, written.warnings)
    written.pre = pre
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([token_type(t) for t in tokens])
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_token_merges(merges)

    for token_id, add in ((hf.bos_token_id, writer.add_bos_token_id),
                          (hf.eos_token_id, writer.add_eos_token_id),
                          (hf.unk_token_id, writer.add_unk_token_id),
                          (hf.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    # What the tokenizer really does, not what a config flag claims: llama.cpp prepends BOS
    # exactly when this says so.
    probe = hf("a")["input_ids"]
    writer.add_add_bos_token(hf.bos_token_id is not None and probe[:1] == [hf.bos_token_id])
    writer.add_add_eos_token(hf.eos_token_id is not None and probe[-1:] == [hf.eos_token_id]
                             and len(probe) > 1)
    if getattr(hf, "chat_template", None):
        writer.add_chat_template(hf.chat_template)
    generation_config = _generation_config(model_dir)
    stops = stop_token_ids(hf, generation_config)
    turn_end = [i for i in stops if i != hf.eos_token_id]
    if turn_end:  # llama.cpp's end-of-turn id: its chat loop stops there as well as at eos
        writer.add_eot_token_id(turn_end[0])
    if stops:  # GGUF has one eos and one eot id; a model may stop on more
        writer.add_array(STOP_IDS_KEY, stops)


def _generation_config(model_dir: Path):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: the tokenizer's eos is the whole rule
        return None


# tokenizer.json pre-tokenizer shape → llama.cpp pre-tokenizer with the same split. llama.cpp's
# converter picks the name by hashing how a known text tokenises; for a vocabulary it has never
# seen that fails, so we match the split itself: a plain byte-level GPT-2 split is "gpt-2", and
# single digits first then the GPT-2 split is the StarCoder/SmolLM split ("smollm").
def _infer_pre(spec: dict, warnings: list[str]) -> str:
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps and steps[-1].get("type") == "ByteLevel" and steps[-1].get("use_regex", True)
    if byte_level and kinds == ["ByteLevel"]:
        return "gpt-2"
    if byte_level and kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    warnings.append(f"pre-tokenizer {kinds or 'none'} has no llama.cpp equivalent known here; wrote "
                    f"'default', so llama.cpp may split text differently than transformers")
    return "default"


def source_pre_tokenizer(model_path: Path) -> str | None:
    """`tokenizer.ggml.pre` of the GGUF a model directory was converted from (affina's default
    model is one), or None when it did not come from a GGUF that is still there."""
    from .models.convert import MARKER_NAME

    marker = Path(model_path) / MARKER_NAME
    if not marker.is_file():
        return None
    source = Path(json.loads(marker.read_text()).get("source", ""))
    if not source.is_file():
        return None
    return _string_field(source, "tokenizer.ggml.pre")


def gguf_file_type(gguf_path: Path) -> str | None:
    """The --gguf-type name of a GGUF file (from general.file_type), or None if not one of ours."""
    import gguf

    from_reader = _field_value(Path(gguf_path), "general.file_type")
    for name, file_type in GGUF_TYPES.items():
        if from_reader == int(getattr(gguf.LlamaFileType, file_type)):
            return name
    return None


def _string_field(path: Path, key: str) -> str | None:
    value = _field_value(path, key)
    return value if isinstance(value, str) else None


def _field_value(path: Path, key: str):
    import gguf

    field_ = gguf.GGUFReader(str(path)).get_field(key)
    return None if field_ is None else field_.contents()


def _llama_permute(weights, heads: int):
    # (heads * head_dim, hidden) with each head's rows in halves → pairs, as convert_hf_to_gguf.py
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))
