"""Training on a CUDA device: bf16 LoRA through the recipe, and QLoRA on a 4-bit base.

Marked `gpu`: tests/conftest.py skips them where torch sees no CUDA device, so the suite stays
green on CPU-only machines; on a GPU machine a plain `pytest` runs them (pyproject's addopts no
longer deselects the marker).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


def _data(tmp_path: Path, n: int = 32) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"say the number {i}"},
                          {"role": "assistant", "content": f"number {i}"}]} for i in range(n)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(tmp_path, model_dir, name, *overrides):
    from affina.config import load_config
    from affina.train import train

    cfg = load_config(None, [
        f"model.spec={model_dir}", "model.device=cuda", f"data.train={_data(tmp_path)}",
        "data.val_fraction=0.25", f"train.output_dir={tmp_path / 'runs'}",
        f"train.run_name={name}", "train.max_steps=12", "train.save_steps=12",
        "train.eval_steps=12", "train.batch_size=8", "train.lr=1e-2", "track.mlflow=false",
        *overrides])
    return train(cfg).run_dir


def _losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "history.json").read_text())
    return [h["loss"] for h in history if "loss" in h]


def _check_losses(run_dir: Path) -> None:
    losses = _losses(run_dir)
    assert len(losses) >= 2, losses
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses


def _reloads_with_plain_peft(run_dir: Path, model_dir: Path, **load) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if load:  # quantised: placed on the device while loading
        base = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda")
    x = torch.tensor([[5, 6, 7, 8]], device="cuda")
    with torch.no_grad():
        plain = base(x).logits.float()
        tuned = PeftModel.from_pretrained(base, run_dir / "adapter")(x).logits.float()
    assert torch.isfinite(tuned).all()
    assert not torch.allclose(plain, tuned)


def test_bf16_lora_trains_on_cuda_and_the_adapter_reloads(tmp_path, tiny_model_dir):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bfloat16")
    run = _train(tmp_path, tiny_model_dir, "bf16-lora", "model.dtype=bfloat16", "method.name=lora",
                 "method.r=4")
    _check_losses(run)
    record = json.loads((run / "affina.json").read_text())
    assert record["method"]["name"] == "lora"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    _reloads_with_plain_peft(run, tiny_model_dir)


def _bitsandbytes_cuda() -> str | None:
    """None if bitsandbytes can quantise on this CUDA device, else why not."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit
    except Exception as e:  # ImportError, or a library that fails to find its CUDA binary
        return f"bitsandbytes unavailable ({e})"
    try:
        w = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        q, state = quantize_4bit(w, quant_type="nf4")
        back = dequantize_4bit(q, state)
        assert back.shape == w.shape and torch.isfinite(back).all()
    except Exception as e:
        return f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot quantise on CUDA ({e})"
    return None


def test_qlora_4bit_trains_on_cuda(tmp_path, tiny_model_dir):
    reason = _bitsandbytes_cuda()
    if reason:
        pytest.skip(reason)
    run = _train(tmp_path, tiny_model_dir, "qlora-4bit", "method.name=qlora", "method.r=4", "method.bits=4")
    _check_losses(run)
    # compute_dtype auto follows the bf16 base, whose unquantised layers stay bf16, so the
    # recipe's bf16 autocast is on (fp32 embeddings would have turned it off).
    from affina.record import read_record

    record = read_record(run)
    assert record.method.options["compute_dtype"] == "bfloat16"
    assert record.train.mixed_precision == "bf16"
    # The artifact is a plain LoRA adapter: it loads onto the 4-bit base with plain peft too.
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16)
    _reloads_with_plain_peft(run, tiny_model_dir, quantization_config=quant, device_map="cuda")
