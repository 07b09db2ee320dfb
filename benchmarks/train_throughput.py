"""LoRA training throughput and peak memory on the default model, packing on and off.

    python benchmarks/train_throughput.py                      # CPU, the real default model
    python benchmarks/train_throughput.py --model random       # SmolLM2-135M shape, random weights
    python benchmarks/train_throughput.py --device cuda --model random   # GPU rows (bf16)

Tokens/s counts real tokens only (padding excluded), so packed and unpacked rows compare
fairly. Peak memory is the process's peak RSS on CPU and torch's peak allocation on CUDA.
Prints a markdown table; docs/benchmarks.md keeps the measured figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from affina.data.loading import load_records  # noqa: E402
from affina.data.packing import BatchCollator, pack_examples  # noqa: E402
from affina.data.tokenize import tokenize_records  # noqa: E402
from affina.methods import build_method_config, get_method  # noqa: E402

# SmolLM2-135M-Instruct's shape, for --model random (runs where the weights are not at hand).
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2)


def load(model_kind: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if model_kind == "default":
        from affina.models import load_model

        loaded = load_model("default", device=device, dtype=dtype, for_training=True)
        return loaded.model, loaded.tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(device=device, dtype=dtype)
    model.config.use_cache = False
    # The tiny test tokenizer has the same special tokens and chat template; only lengths differ.
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "assets" / "tiny-tokenizer")
    return model, tokenizer


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_case(model, batches, device, steps: int, warmup: int) -> tuple[float, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    tokens, elapsed = 0, 0.0
    for i in range(warmup + steps):
        cpu_batch, real = batches[i % len(batches)]
        batch = {k: v.to(device) for k, v in cpu_batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            elapsed += time.perf_counter() - t0
            tokens += real
    return tokens / elapsed, elapsed / steps


def make_batches(examples, tokenizer, seq_len: int, batch_size: int, packing: bool):
    """(batch, real token count) pairs; padding is not counted as work done."""
    collator = BatchCollator(tokenizer.pad_token_id)
    items = pack_examples(examples, seq_len) if packing else examples
    batches = []
    for i in range(0, len(items) - batch_size + 1, batch_size):
        chunk = items[i:i + batch_size]
        batches.append((collator(chunk), sum(len(x.input_ids) for x in chunk)))
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["default", "random"], default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--data", default=str(ROOT / "examples" / "product_json" / "train.jsonl"))
    ap.add_argument("--only", help=argparse.SUPPRESS)  # SEQ:on|off, one case in this process
    args = ap.parse_args()
    if args.only is None:
        return run_all_cases(args)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    records = load_records([args.data]).records
    seq_len, packing = int(args.only.split(":")[0]), args.only.endswith(":on")
    model, tokenizer = load(args.model, device, dtype)
    lora = get_method("lora")
    model = lora.apply(model, build_method_config(lora, {"r": 16, "alpha": 32}))
    examples, stats = tokenize_records(records, tokenizer, seq_len)
    batches = make_batches(examples, tokenizer, seq_len, args.batch_size, packing)
    if device.type == "cuda":
        run_case(model, batches, device, 1, args.warmup)  # kernel selection on a fresh GPU
        torch.cuda.reset_peak_memory_stats(device)
    tps, sec = run_case(model, batches, device, args.steps, args.warmup)
    print(json.dumps({"row": [seq_len, "on" if packing else "off",
                              f"{sum(stats.lengths) / len(stats.lengths):.0f}", f"{tps:,.0f}",
                              f"{sec:.2f}", f"{peak_memory_mb(device):,.0f}"],
                      "dtype": str(dtype).split(".")[-1], "device": device.type}))


def run_all_cases(args) -> None:
    """Each case in its own process, so peak memory is that case's alone."""
    rows, info = [], {}
    for seq_len in args.seq_lens:
        for packing in ("off", "on"):
            cmd = [sys.executable, __file__, "--only", f"{seq_len}:{packing}", "--model", args.model,
                   "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--batch-size", str(args.batch_size), "--data", args.data]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            info = json.loads(out.strip().splitlines()[-1])
            rows.append(info["row"])
            print(f"  seq {seq_len} packing {packing}: {info['row'][3]} tokens/s", file=sys.stderr)
    device = torch.device(info["device"])
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"\nLoRA r=16 all-linear, {args.model} model (SmolLM2-135M shape), {info['dtype']}, "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up; {where}\n")
    print("| seq len | packing | mean example tokens | tokens/s | s/step | peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
