"""Export a run as a plain HF model directory (adapter merged into its base), and optionally as
a GGUF file for llama.cpp and its relatives (`gguf_export`).

The base is loaded unquantised even for qlora runs, so the merge folds the adapter into full
precision weights instead of re-quantising them. The tokenizer written is the one saved with the
run's artifact: the chat template and stop tokens the run was trained with.
"""

from __future__ import annotations

from pathlib import Path

from .gguf_export import (GGUF_ARCHITECTURES, GGUF_TYPES, ExportError, source_pre_tokenizer,
                          write_gguf)
from .record import read_record

__all__ = ["ExportError", "export_merged", "write_gguf", "GGUF_ARCHITECTURES", "GGUF_TYPES"]


def export_merged(run_dir: str | Path, out_dir: str | Path, *, gguf: bool = False,
                  gguf_type: str = "f32") -> dict:
    """Write the run's merged model to `out_dir` (and `out_dir/model.gguf` with `gguf`, its
    weights in `gguf_type`: one of GGUF_TYPES)."""
    from .data.tokenize import ensure_chat_template
    from .models import load_model
    from .runs import is_run_dir, method_of_record, run_tokenizer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if gguf and gguf_type not in GGUF_TYPES:
        raise ExportError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
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
    tokenizer = run_tokenizer(record.artifact_dir(run_dir)) or loaded.tokenizer
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(out_dir)
    result = {"merged": str(out_dir), "class": type(merged).__name__, "method": method.name}
    if gguf:
        written = write_gguf(out_dir, out_dir / "model.gguf", gguf_type=gguf_type,
                             pre=source_pre_tokenizer(loaded.path))
        result.update({"gguf": str(written.path), "gguf type": written.type,
                       "gguf size": f"{written.path.stat().st_size / 2**20:.2f} MiB",
                       "tokenizer.ggml.pre": written.pre})
        for i, warning in enumerate(written.warnings):
            result[f"warning {i + 1}"] = warning
    return result
