"""LoRA training step speed and peak memory: a plain transformers + PEFT loop against affina's
`speed` profile (train/speed.py), one switch at a time, in the same process on the same model.

    python benchmarks/gpu_train.py                          # H100/H200: Llama-3.2-1B shape, 4 x 2048
    python benchmarks/gpu_train.py --shape llama3-8b --batch 1
    python benchmarks/gpu_train.py --device cpu --shape tiny --seq 128 --steps 3   # a CPU smoke run

Rows (each a fresh model from the same seed, random weights of the real shape, random tokens, no
padding, bf16 weights on CUDA with autocast, LoRA r=16 alpha=32 on every linear layer, AdamW):

- `peft`: what a hand-written script does: `model(input_ids, labels=...).loss`, PEFT's defaults
  (fp32 adapter weights, inputs cast to them).
- `+ bf16 adapter input`: PEFT's input cast off (`keep_input_dtype`).
- `+ chunked loss`: the output projection and cross-entropy 1024 tokens at a time (`chunked_lm_loss`).
- `+ compiled blocks` (= the `speed` profile without liger-kernel): each decoder block `torch.compile`d.
- `speed, liger fused loss` (= the `speed` profile with `liger-kernel` installed): the chunked
  loss replaced by liger-kernel's fused linear + cross-entropy Triton kernel.
- `full (plain)`: full fine-tuning with the plain loop, for reference.

Tokens/s is over the timed steps after the warm-up steps (compilation happens in warm-up); peak
memory is torch's peak allocation over the whole case. The first-step loss of each row shows the
rows compute the same thing. Prints a markdown table; `--json FILE` also writes the rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from affina.train.speed import (_causal_lm, chunked_lm_loss, compile_blocks, fused_loss_available,  # noqa: E402
                                keep_input_dtype)

SHAPES = {
    # Llama-3.2-1B and Llama-3-8B (Meta's published configs), tiny for a CPU smoke run.
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                        tie_word_embeddings=True, rope_theta=500000.0),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      tie_word_embeddings=False, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True),
}

CASES = [
    ("peft", dict(lora=True)),
    ("+ bf16 adapter input", dict(lora=True, keep_dtype=True)),
    ("+ chunked loss", dict(lora=True, keep_dtype=True, chunked=True)),
    ("+ compiled blocks (speed)", dict(lora=True, keep_dtype=True, chunked=True, compiled=True)),
    ("speed, liger fused loss", dict(lora=True, keep_dtype=True, chunked=True, compiled=True, fused=True)),
    ("full (plain)", dict(lora=False)),
]


def _model(shape: str, seq: int, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=max(seq, 2048), attn_implementation="sdpa",
                         **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def _run_case(args, name: str, opts: dict, device, dtype) -> dict:
    from peft import LoraConfig, get_peft_model

    model = _model(args.shape, args.seq, device, dtype)
    if opts["lora"]:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear"))
    if opts.get("keep_dtype"):
        keep_input_dtype(model)
    if opts.get("compiled"):
        compile_blocks(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator(device="cpu").manual_seed(1)
    vocab = SHAPES[args.shape]["vocab_size"]
    batches = [torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
               for _ in range(args.warmup + args.steps)]
    causal = _causal_lm(model) if opts.get("chunked") else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(ids):
        with autocast:
            if causal is None:
                loss = model(input_ids=ids, labels=ids).loss
            else:
                hidden = causal.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
                loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, ids,
                                       chunk_tokens=args.chunk, fused=opts.get("fused", False))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = None
    for ids in batches[: args.warmup]:
        loss = step(ids)
        first = loss.item() if first is None else first
    sync()
    start = time.perf_counter()
    for ids in batches[args.warmup:]:
        step(ids)
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del model, optimizer, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tokens = args.steps * args.batch * args.seq
    return {"case": name, "tokens_per_s": tokens / seconds, "step_s": seconds / args.steps,
            "peak_gib": peak, "first_loss": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama3.2-1b")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", help="comma-separated row numbers to run (default: all)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases = CASES if not args.cases else [CASES[int(i)] for i in args.cases.split(",")]
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    import peft
    import transformers

    print(f"{args.shape}, {args.batch} x {args.seq} tokens, {where}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}", flush=True)
    rows = []
    for name, opts in cases:
        if opts.get("compiled") and device.type == "cpu":
            continue  # compiled blocks are a CUDA switch of the profile
        if opts.get("fused") and not fused_loss_available():
            print(f"  {name}: skipped (liger-kernel is not installed)", flush=True)
            continue
        rows.append(_run_case(args, name, opts, device, dtype))
        r = rows[-1]
        print(f"  {name}: {r['tokens_per_s']:,.0f} tokens/s, {r['peak_gib']:.1f} GiB", flush=True)
    base = rows[0]["tokens_per_s"]
    print("\n| case | tokens/s | vs peft | step s | peak GiB | first loss |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | "
              f"{r['step_s']:.3f} | {r['peak_gib']:.1f} | {r['first_loss']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "batch": args.batch, "seq": args.seq,
                                         "device": where, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
