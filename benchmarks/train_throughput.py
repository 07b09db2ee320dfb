"""LoRA training throughput and peak memory on the default model, packing on and off.

    python benchmarks/train_throughput.py                      # CPU, the real default model
    python benchmarks/train_throughput.py --model random       # SmolLM2-135M shape, random weights
    python benchmarks/train_throughput.py --device cuda --model random   # GPU rows (bf16)

Tokens/s counts real tokens only (padding excluded), so packed and unpacked rows compare
fairly. Peak memory is the process's peak RSS on CPU and torch's peak allocation on CUDA.
Prints a markdown table; docs/benchmarks.md keeps the measured figures.

Side by side with a plain TRL script (`--vs-trl`): `affina train` (the real recipe, its CPU
defaults, plus any `--variant LABEL=key=value,...` of it) against a plain TRL SFTTrainer script
with peft's LoraConfig, on the same rows, steps, batch, rank, target modules, learning rate and
seed. Each case runs in its own process (its own peak RSS), the cases interleaved round by round
so a busy machine's load falls on all of them alike:

    python benchmarks/train_throughput.py --vs-trl --steps 12
    python benchmarks/train_throughput.py --vs-trl --data examples/product_category/train.jsonl
    python benchmarks/train_throughput.py --vs-trl --variant full-logits=train.chunked_loss=false \
        --variant bf16=train.mixed_precision=bf16 --variant dropout0.05=method.dropout=0.05

s/step is the mean over the timed steps (the first step is warm-up), tokens/s counts the
non-padding input tokens of those steps, peak RSS is the process's (model load included), and
the losses of every step are printed so the curves can be compared.

bf16 autocast against fp32 on the CPU (`--autocast-curve`): two copies of the LoRA model, same
initialisation and batches, trained step by step in turn (fp32 step, bf16 step, ...) so the
machine's load falls on both alike; prints each one's mean s/step, its loss curve and the
largest relative difference between the curves:

    python benchmarks/train_throughput.py --autocast-curve --steps 30
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
    ap.add_argument("--vs-trl", action="store_true", help="affina train vs a plain TRL SFTTrainer script")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE,...",
                    help="with --vs-trl: another affina row with these config overrides")
    ap.add_argument("--autocast-curve", action="store_true", help="fp32 vs bf16 autocast, step by step")
    ap.add_argument("--no-trl", action="store_true", help="with --vs-trl: affina rows only")
    ap.add_argument("--rounds", type=int, default=1, help="with --vs-trl: times each case runs")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.0, help="with --vs-trl: LoRA dropout of both sides")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--side", help=argparse.SUPPRESS)  # affina|trl: one --vs-trl case in this process
    ap.add_argument("--overrides", default="", help=argparse.SUPPRESS)
    ap.add_argument("--chat-data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side == "affina":
        return side_affina(args)
    if args.side == "trl":
        return side_trl(args)
    if args.vs_trl:
        return run_vs_trl(args)
    if args.autocast_curve:
        return run_autocast_curve(args)
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


def run_autocast_curve(args) -> None:
    """fp32 vs bf16 autocast on the CPU, the steps interleaved; the chunked loss in both (the
    CPU default), gradients outside autocast as the Trainer's autocast does."""
    import os

    from affina.train.speed import _causal_lm, chunked_lm_loss

    device = torch.device("cpu")
    records = load_records([args.data]).records
    load_before = os.getloadavg()
    lora = get_method("lora")
    models = {}
    for name in ("fp32", "bf16"):
        base, tokenizer = load(args.model, device, torch.float32)
        torch.manual_seed(args.seed)
        models[name] = lora.apply(base, build_method_config(lora, {"r": args.r, "alpha": 2 * args.r,
                                                                   "dropout": 0.0}))
    examples, _ = tokenize_records(records, tokenizer, args.seq_lens[0])
    batches = make_batches(examples, tokenizer, args.seq_lens[0], args.batch_size, False)
    opts = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=args.lr)
            for n, m in models.items()}
    seconds = {n: [] for n in models}
    losses = {n: [] for n in models}
    for i in range(args.steps + 1):
        batch = dict(batches[i % len(batches)][0])
        labels = batch.pop("labels")
        for name, model in models.items():
            causal = _causal_lm(model)
            model.train()
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                hidden = causal.get_decoder()(**batch, use_cache=False).last_hidden_state
                loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            seconds[name].append(time.perf_counter() - t0)
            losses[name].append(loss.item())
        print(f"  step {i}: " + ", ".join(f"{n} {losses[n][-1]:.4f} ({seconds[n][-1]:.1f} s)" for n in models),
              file=sys.stderr)
    load_after = os.getloadavg()
    diff = [abs(b - a) / a for a, b in zip(losses["fp32"], losses["bf16"])]
    print(f"\nLoRA r={args.r} all-linear, {args.model} model, {Path(args.data).parent.name}/{Path(args.data).name}, max length "
          f"{args.seq_lens[0]}, batch {args.batch_size}, lr {args.lr} constant, {args.steps} timed steps "
          f"after 1 warm-up, fp32 and bf16-autocast steps interleaved; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"bf16 instructions: {_cpu_bf16()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print("| autocast | s/step | loss, first → last | largest relative loss difference to fp32 |")
    print("|---|---|---|---|")
    for name in models:
        timed = seconds[name][1:]
        print(f"| {name} | {sum(timed) / len(timed):.2f} | {losses[name][0]:.3f} → {losses[name][-1]:.3f} "
              f"| {max(diff) if name == 'bf16' else 0:.2%} |")
    for name in models:
        print(f"  {name} losses: " + " ".join(f"{x:.3f}" for x in losses[name]))


def _cpu_bf16() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(found) or "none"


# ---- affina train vs a plain TRL SFTTrainer script ------------------------------------------

def _step_timer():
    """A TrainerCallback timing each optimiser step and counting its non-padding input tokens."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.tokens, self._t0, self._seen = [], [], 0.0, 0

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            # The trainer counts a batch's tokens when it fetches it: step i's are the counter's
            # growth from the end of step i-1 to the end of step i.
            self.seconds.append(time.perf_counter() - self._t0)
            self.tokens.append(state.num_input_tokens_seen - self._seen)
            self._seen = state.num_input_tokens_seen

    return StepTimer()


def _report(timer, history, started: float) -> None:
    timed_s, timed_tokens = timer.seconds[1:], timer.tokens[1:]  # step 1 is warm-up
    print(json.dumps({"s_per_step": sum(timed_s) / len(timed_s),
                      "tokens_per_s": sum(timed_tokens) / sum(timed_s),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "losses": [h["loss"] for h in history if "loss" in h],
                      "wall_s": time.time() - started, "threads": torch.get_num_threads()}))


def side_affina(args) -> None:
    """`affina train` as a user runs it (the recipe, its defaults), timed by a callback."""
    import tempfile

    from affina.config import load_config
    from affina.train import train

    started = time.time()
    timer = _step_timer()
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            "model.spec=default", "model.device=cpu", f"data.train=[{args.chat_data}]",
            "data.val_fraction=0", f"data.max_length={args.seq_lens[0]}", "method.name=lora",
            f"method.r={args.r}", f"method.alpha={2 * args.r}", f"method.dropout={args.dropout}",
            "method.target_modules=[all-linear]", f"train.max_steps={args.steps + 1}",
            f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", "train.warmup_ratio=0.05",
            "train.scheduler=cosine", "train.eval_steps=0", "train.save_steps=100000",
            "train.logging_steps=1", f"train.seed={args.seed}", "track.mlflow=false",
            f"train.output_dir={out}", "train.run_name=bench",
            *[o for o in args.overrides.split(",") if o]]
        result = train(load_config(None, overrides), callbacks=(timer,), display="quiet")
        history = json.loads((result.run_dir / "history.json").read_text())
    _report(timer, history, started)


def side_trl(args) -> None:
    """A plain TRL script: SFTTrainer + peft LoraConfig on the same rows (prompt-completion
    conversations, loss on the completion), TRL's own loss and collator."""
    import tempfile

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from affina.models.resolve import resolve_model_path

    started = time.time()
    path = resolve_model_path("default")  # the same weights affina trains
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = load_dataset("json", data_files=args.chat_data, split="train")
    rows = rows.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                    remove_columns=["messages"])
    timer = _step_timer()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, max_steps=args.steps + 1, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.05, seed=args.seed,
            data_seed=args.seed, max_length=args.seq_lens[0], logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, dataloader_num_workers=0,
            # SFTConfig turns these on by default; affina's CPU run has neither (same work per step)
            gradient_checkpointing=False, bf16=False,
            include_num_input_tokens_seen="non_padding", disable_tqdm=True)
        lora = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=args.dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                             peft_config=lora, callbacks=[timer])
        trainer.train()
        history = trainer.state.log_history
    _report(timer, history, started)


def _chat_file(data: str, directory: Path) -> Path:
    """The rows of `data` as chat conversations (both sides read this file): instruction data as
    affina renders it, text + label rows as user text → assistant label."""
    records = load_records([data]).records
    out = directory / "chat.jsonl"
    with out.open("w") as f:
        for r in records:
            messages = r.messages or [{"role": "user", "content": r.text},
                                      {"role": "assistant", "content": str(r.label)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return out


def run_vs_trl(args) -> None:
    import os
    import tempfile

    cases = [("affina", "affina", "")]
    for v in args.variant:
        label, _, overrides = v.partition("=")
        cases.append((f"affina {label}", "affina", overrides))
    if not args.no_trl:
        cases.append(("plain TRL", "trl", ""))
    results: dict[str, list[dict]] = {label: [] for label, _, _ in cases}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        chat = _chat_file(args.data, Path(tmp))
        for round_ in range(args.rounds):
            for label, side, overrides in cases:
                cmd = [sys.executable, __file__, "--side", side, "--overrides", overrides,
                       "--chat-data", str(chat), "--steps", str(args.steps), "--batch-size",
                       str(args.batch_size), "--seq-lens", str(args.seq_lens[0]), "--r", str(args.r),
                       "--dropout", str(args.dropout), "--lr", str(args.lr), "--seed", str(args.seed)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{label} failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["load"] = os.getloadavg()[0]
                results[label].append(result)
                print(f"  round {round_ + 1} {label}: {result['s_per_step']:.2f} s/step, "
                      f"{result['peak_rss_mb']:,.0f} MB peak RSS, load {result['load']:.2f}, {result['threads']} threads", file=sys.stderr)
    load_after = os.getloadavg()
    print(f"\nLoRA r={args.r} all-linear, dropout {args.dropout}, default model (SmolLM2-135M-Instruct), "
          f"fp32, {Path(args.data).parent.name}/{Path(args.data).name}, max length {args.seq_lens[0]}, batch {args.batch_size}, "
          f"{args.steps} timed steps after 1 warm-up, {args.rounds} round(s) interleaved; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after\n")
    print("| case | s/step | tokens/s | peak RSS (MB) | loss, first → last timed step |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        sps = [r["s_per_step"] for r in runs]
        tps = [r["tokens_per_s"] for r in runs]
        rss = [r["peak_rss_mb"] for r in runs]
        losses = runs[-1]["losses"]
        print(f"| {label} | {' / '.join(f'{x:.2f}' for x in sps)} | {' / '.join(f'{x:,.0f}' for x in tps)} "
              f"| {' / '.join(f'{x:,.0f}' for x in rss)} | {losses[1]:.3f} → {losses[-1]:.3f} |")
    print("\nper-step losses (last round):")
    for label, runs in results.items():
        print(f"  {label}: " + " ".join(f"{x:.3f}" for x in runs[-1]["losses"]))


if __name__ == "__main__":
    main()
