"""LoRA training step speed and peak memory: a plain transformers + PEFT loop against affina's
`speed` and `memory` profiles (train/speed.py), one switch at a time, in the same process on the
same model.

    python benchmarks/gpu_train.py                          # H100/H200: Llama-3.2-1B shape, 4 x 2048
    python benchmarks/gpu_train.py --shape llama3-8b --batch 1 --cases peft,speed,memory,qlora
    python benchmarks/gpu_train.py --trace speed --trace-out trace.md   # + a kernel-time breakdown
    python benchmarks/gpu_train.py --device cpu --shape tiny --seq 128 --steps 3   # a CPU smoke run

Rows (each a fresh model from the same seed, random weights of the real shape, random tokens, no
padding, bf16 weights on CUDA with autocast, LoRA r=16 alpha=32 dropout 0 on every linear layer,
AdamW); `--cases` takes their keys:

- `peft`: what a hand-written script does: `model(input_ids, labels=...).loss`, PEFT's defaults
  (fp32 adapter weights, inputs cast to them), torch's default AdamW.
- `input`: + PEFT's input cast off (`keep_input_dtype`).
- `chunked`: + the output projection and cross-entropy 1024 tokens at a time (`chunked_lm_loss`).
- `compiled`: + each decoder block `torch.compile`d (the `speed` profile without liger-kernel).
- `speed`: the `speed` profile with `liger-kernel` installed: liger-kernel's fused linear +
  cross-entropy Triton kernel instead of the chunked PyTorch loss.
- `speed_fused_adamw`: + torch's fused AdamW (`train.optimizer=adamw_torch_fused`).
- `speed_graphs`: + `train.cuda_graphs`: the blocks compiled in inductor's `reduce-overhead`
  mode, so each block's forward and backward replay as CUDA graphs, which takes away the time
  the GPU waits for the CPU to launch kernels.
- `speed_fp8`: the `speed` profile with `train.mixed_precision=fp8`: the frozen base's matmuls
  in fp8 (train/fp8.py), an approximation, so its first loss differs a little from the others;
  the bf16 weights wait in host memory, as in the recipe.
- `speed_graphs_fp8`: both of the rows above.
- `speed_fused`, `speed_graphs_fp8_fused`: + `train.fuse_projections` (train/fused.py): q/k/v
  and gate/up each one base matmul and one adapter down-projection instead of three and two.
- `trainer`: `speed_graphs_fp8_fused` as `affina train` runs it: the recipe's transformers
  Trainer (train/steps.py `recipe_trainer_class`: the profile's loss step, and the tokens seen
  counted on the device, read only before logs and checkpoints), its callbacks (the fp8 layers' bf16 weights
  moved to host memory once training begins), the config's defaults for the optimizer, schedule
  and gradient clipping; `trainer_hf`: the same with transformers' own bookkeeping, which reads
  the loss's finiteness and the token count back from the device every step (two syncs). The
  loop rows above have neither the Trainer's bookkeeping nor those reads.
- `memory`: the `memory` profile on a bf16 base: fused (or chunked) loss, activation
  checkpointing, saved activations offloaded to pinned CPU memory, the input embedding table
  (untied at 8B) in host memory.
- `qlora`: the `memory` profile on a 4-bit NF4 base (bitsandbytes, double quantisation, bf16
  compute), prepared by PEFT's `prepare_model_for_kbit_training`, which makes the layers left
  unquantised (embeddings, norms, output layer) fp32.
- `qlora_bf16`: the same base prepared by the `qlora` method itself (`QloraMethod.apply`), which
  keeps those layers bf16.
- `full`: full fine-tuning with the plain loop (bf16 weights and optimizer state).
- `full_speed`: full fine-tuning under the `speed` profile (compiled blocks, fused loss).

Tokens/s is over the timed steps after the warm-up steps (compilation happens in warm-up); peak
memory is torch's peak allocation over the warm-up and timed steps (after the model is built).
Each row runs in a process of its own (`--same-process` to run them all in one): a compiled row
keeps its model alive in the compiled graphs' references, which counted in the next row's peak.
MFU counts 2 FLOPs per multiply-add of every matmul weight per token for the forward pass, as
much again for the input gradients, and again for the weight gradients only where the weights
train (full), plus causal attention (forward and backward), against the card's dense bf16 peak.
The first-step loss of each row shows the rows compute the same thing. On the CPU (`--device cpu
--shape tiny`) every row but the QLoRA ones runs, in bf16 as on a card, compiled blocks included
(the CUDA-graph rows compile without graphs, which need a card), so the code paths a GPU run takes
are tried before a card is at hand; its speeds mean nothing and it has no peak memory figure.
Prints a markdown table;
`--json FILE` also writes the rows. A row that fails (out of memory, a missing package) prints
why and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from affina.train.fp8 import fp8_base_layers, offload_weights  # noqa: E402
from affina.train.fused import fuse_projections  # noqa: E402
from affina.train.speed import (decoder_blocks, _causal_lm, chunked_lm_loss, compile_blocks, embeddings_to_host,  # noqa: E402
                                fused_loss_available, keep_input_dtype, save_activations_on_cpu)

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

_SPEED = dict(lora=True, keep_dtype=True, chunked=True, compiled=True, fused=True)
_MEMORY = dict(lora=True, keep_dtype=True, chunked=True, fused=True, checkpointing=True, offload=True)
CASES = {
    "peft": ("peft", dict(lora=True)),
    "input": ("+ bf16 adapter input", dict(lora=True, keep_dtype=True)),
    "chunked": ("+ chunked loss", dict(lora=True, keep_dtype=True, chunked=True)),
    "compiled": ("+ compiled blocks (speed, PyTorch loss)", dict(_SPEED, fused=False)),
    "speed": ("speed (liger fused loss)", _SPEED),
    "speed_fused_adamw": ("speed + fused AdamW", dict(_SPEED, fused_adamw=True)),
    "speed_graphs": ("speed + CUDA graphs per block", dict(_SPEED, graphs=True)),
    "speed_fp8": ("speed + fp8 base (mixed_precision=fp8)", dict(_SPEED, fp8=True)),
    "speed_graphs_fp8": ("speed + fp8 base + CUDA graphs", dict(_SPEED, graphs=True, fp8=True)),
    "speed_fused": ("speed + fused projections", dict(_SPEED, fuse=True)),
    "speed_graphs_fp8_fused": ("speed + fp8 base + CUDA graphs + fused projections",
                               dict(_SPEED, graphs=True, fp8=True, fuse=True)),
    "trainer": ("speed + fp8 + CUDA graphs + fused, through the recipe's Trainer",
                dict(_SPEED, graphs=True, fp8=True, fuse=True, trainer=True)),
    "trainer_hf": ("the same Trainer, transformers' per-step reads",
                   dict(_SPEED, graphs=True, fp8=True, fuse=True, trainer=True, hf_reads=True)),
    "memory": ("memory (bf16 base)", _MEMORY),
    "qlora": ("memory + QLoRA 4-bit, PEFT's preparation (rest fp32)",
              dict(_MEMORY, qlora=True, peft_prepare=True)),
    "qlora_bf16": ("memory + QLoRA 4-bit, the qlora method (rest bf16)", dict(_MEMORY, qlora=True)),
    "full": ("full (plain)", dict(lora=False)),
    "full_speed": ("full (speed)", dict(lora=False, chunked=True, compiled=True, fused=True)),
}
DEFAULT_CASES = "peft,speed,memory,qlora,full,full_speed"
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1}  # dense


def _model(shape: str, seq: int, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=max(seq, 2048), attn_implementation="sdpa",
                         **SHAPES[shape])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: an 8B model in fp32 first would need 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model


def _quantize_4bit(model, dtype):
    """Every decoder linear layer replaced by a bitsandbytes NF4 layer (double-quantised, `dtype`
    compute), quantised in place on the model's device, as loading with the qlora method's
    quantisation options leaves it."""
    import bitsandbytes as bnb

    for module in list(model.get_decoder().modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, compress_statistics=True, quant_type="nf4",
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                             compress_statistics=True, quant_type="nf4")
                setattr(module, child_name, q.to(child.weight.device))  # quantised as it moves there
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    return model


def flops_per_token(shape: str, seq: int, *, full: bool) -> float:
    s = SHAPES[shape]
    d, f, L, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = d * s["num_key_value_heads"] // s["num_attention_heads"]
    matmul = L * (2 * d * d + 2 * d * kv + 3 * d * f) + d * v  # q,o + k,v + gate,up,down + head
    attention = 2 * L * d * seq  # QK^T and PV, forward, average causal context seq/2
    return matmul * 2 * (3 if full else 2) + attention * 3


def _run_case(args, key: str, device, dtype, trace: Path | None = None) -> dict:
    from peft import LoraConfig, get_peft_model

    name, opts = CASES[key]
    model = _model(args.shape, args.seq, device, dtype)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    if opts.get("qlora") and opts.get("peft_prepare"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(_quantize_4bit(model, dtype), use_gradient_checkpointing=False)
        model = get_peft_model(model, lora)
    elif opts.get("qlora"):  # the qlora method's own preparation and adapter
        from affina.methods import build_method_config, get_method

        qlora = get_method("qlora")
        cfg = build_method_config(qlora, {"r": 16, "alpha": 32, "dropout": 0.0,
                                          "compute_dtype": str(dtype).removeprefix("torch.")})
        model = qlora.apply(_quantize_4bit(model, dtype), cfg)
    elif opts["lora"]:
        model = get_peft_model(model, lora)
    if opts.get("keep_dtype"):
        keep_input_dtype(model)
    if opts.get("fp8"):
        fp8_base_layers(decoder_blocks(model))
    if opts.get("fuse"):
        fuse_projections(decoder_blocks(model))
    if opts.get("fp8") and not opts.get("trainer"):  # as the recipe does once training begins:
        offload_weights(model)                         # bf16 weights to host memory
    if opts.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if opts.get("compiled"):
        compile_blocks(model, cuda_graphs=bool(opts.get("graphs")))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True if opts.get("fused_adamw") else None)
    g = torch.Generator(device="cpu").manual_seed(1)
    vocab = SHAPES[args.shape]["vocab_size"]
    batches = [torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
               for _ in range(args.warmup + args.steps)]
    causal = _causal_lm(model) if opts.get("chunked") else None
    fused = bool(opts.get("fused")) and device.type == "cuda" and fused_loss_available()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    offload = opts.get("offload") and device.type == "cuda"
    if offload:  # the memory profile's: a frozen, untied input embedding table in host memory
        embeddings_to_host(model)

    def step(ids):
        if opts.get("graphs"):
            torch.compiler.cudagraph_mark_step_begin()
        saving = save_activations_on_cpu() if offload else contextlib.nullcontext()
        with autocast, saving:
            if causal is None:
                loss = model(input_ids=ids, labels=ids).loss
            else:
                hidden = causal.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
                loss = chunked_lm_loss(hidden, causal.get_output_embeddings().weight, ids,
                                       chunk_tokens=args.chunk, fused=fused)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if opts.get("trainer"):
        seconds, first = _trainer_steps(args, model, opts, batches, device, dtype, sync)
    else:
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
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if trace is not None:
        try:  # the row's figures stand whatever the profiler makes of this case
            _trace(step, batches[-2:], trace, f"{name}, {args.shape}, {args.batch} x {args.seq}")
        except Exception as e:  # noqa: BLE001
            print(f"trace of {key} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
    del model, optimizer, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tokens = args.steps * args.batch * args.seq
    return {"case": name, "key": key, "tokens_per_s": tokens / seconds, "step_s": seconds / args.steps,
            "peak_gib": peak, "first_loss": first, "fused_loss": fused}


def _trainer_steps(args, model, opts: dict, batches, device, dtype, sync) -> tuple[float, float]:
    """The warm-up and timed steps through the recipe's Trainer (train/steps.py
    `recipe_trainer_class` with the profile as the recipe resolves it, `profile_of`; the recipe's
    callbacks and config defaults), or under `hf_reads` the profile's Trainer with transformers'
    per-step reads; (seconds of the timed steps, the first step's loss)."""
    import tempfile

    from transformers import Trainer, TrainerCallback, TrainingArguments

    from affina.config import TrainConfig
    from affina.train.callbacks import WeightsToHost
    from affina.train.display import TrainingDisplay
    from affina.train.speed import profile_of, speed_trainer_class
    from affina.train.steps import STEP_ARGUMENTS, recipe_trainer_class

    profile = profile_of("speed", device, loss_chunk_tokens=args.chunk, weights_dtype=dtype,
                         mixed_precision="fp8" if opts.get("fp8") else "bf16",
                         cuda_graphs=bool(opts.get("graphs")), fuse_projections=bool(opts.get("fuse")))
    rows = [{"input_ids": ids[i].cpu(), "attention_mask": torch.ones_like(ids[i].cpu()), "labels": ids[i].cpu()}
            for ids in batches for i in range(len(ids))]
    times: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                sync()
                times["start"] = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs and "first" not in times:
                times["first"] = logs["loss"]

        def on_train_end(self, a, state, control, **kw):
            sync()
            times["end"] = time.perf_counter()

    t = TrainConfig()
    ordered = ({"train_sampling_strategy": "sequential"}  # the loop rows' batches, in their order
               if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__ else {})
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
            learning_rate=1e-5, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
            lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio, optim=t.optimizer,
            logging_steps=t.logging_steps, logging_first_step=True, save_strategy="no", report_to="none",
            use_cpu=device.type == "cpu", bf16=profile.bf16_autocast, remove_unused_columns=False,
            dataloader_num_workers=0, dataloader_pin_memory=device.type == "cuda", disable_tqdm=True,
            **({"include_num_input_tokens_seen": "non_padding"} if opts.get("hf_reads") else STEP_ARGUMENTS),
            **ordered)
        callbacks = [TrainingDisplay("quiet"), Clock()]
        if profile.fp8_base:
            callbacks.append(WeightsToHost(fp8=True, embeddings=False))
        trainer_class = (speed_trainer_class if opts.get("hf_reads") else recipe_trainer_class)(Trainer, profile)
        trainer = trainer_class(model=model, args=targs, train_dataset=rows, callbacks=callbacks)
        trainer.train()
    return times["end"] - times["start"], times["first"]


def _kind(kernel: str) -> str:
    k = kernel.lower()
    if any(s in k for s in ("flash", "fmha", "attention", "_efficient_")):
        return "attention"
    if any(s in k for s in ("gemm", "cutlass", "sm90_xmma", "sm80_xmma", "cublas", "nvjet", "matmul")):
        return "matmul"
    if "liger" in k or "cross_entropy" in k or "_fused_linear" in k:
        return "loss"
    if k.startswith("triton_") or "triton" in k:
        return "compiled elementwise (triton)"
    if "memcpy" in k or "memset" in k:
        return "copies"
    if "adam" in k or "multi_tensor" in k or "foreach" in k:
        return "optimizer"
    return "other elementwise"


def _trace(step, batches, out: Path, title: str) -> None:
    """Kernel time of the last two steps by kind and the 25 costliest kernels, as markdown."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for ids in batches:
            step(ids)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.device_time_total > 0]
    total = sum(e.device_time_total for e in kernels)
    if not total:  # no kernel events of their own in this torch: its own table
        out.write_text(prof.key_averages().table(sort_by="device_time_total", row_limit=40))
        print(out.read_text(), flush=True)
        return
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[_kind(e.key)] = by_kind.get(_kind(e.key), 0.0) + e.device_time_total
    lines = [f"### {title}: kernel time over {len(batches)} steps, {total / 1e3 / len(batches):.1f} ms a step",
             "", "| kind | ms a step | share |", "|---|---|---|"]
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {us / 1e3 / len(batches):.1f} | {us / total:.1%} |")
    lines += ["", "| kernel | calls a step | ms a step | share |", "|---|---|---|---|"]
    for e in sorted(kernels, key=lambda e: -e.device_time_total)[:25]:
        lines.append(f"| `{e.key[:90]}` | {e.count // len(batches)} | "
                     f"{e.device_time_total / 1e3 / len(batches):.2f} | {e.device_time_total / total:.1%} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def _run_apart(key: str) -> dict:
    """One row in a process of its own, so nothing an earlier row left behind (compiled graphs
    that keep their model alive, the allocator's cache) counts in its peak memory or speed."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--cases", key,
                   "--row-out", str(out)]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.stdout:
            print(done.stdout, end="", flush=True)  # the trace table
        if done.returncode != 0 or not out.exists():
            lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "Warning" not in ln]
            raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama3.2-1b")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated keys of {', '.join(CASES)}")
    p.add_argument("--trace", help="also profile two steps of this case's key (CUDA)")
    p.add_argument("--trace-out", type=Path, default=Path("gpu_train_trace.md"))
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--same-process", action="store_true",
                   help="run every row in this process (by default each row gets a process of its own)")
    p.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)  # a row's own process writes here
    args = p.parse_args()
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys + ([args.trace] if args.trace else []) if k not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    if args.trace and CASES[args.trace][1].get("trainer"):
        p.error(f"--trace {args.trace}: a Trainer row is not traced; trace its loop row, speed_graphs_fp8_fused")
    device = torch.device(args.device)
    dtype = torch.bfloat16  # on the CPU too, so a smoke run there takes the GPU's code paths
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in where), None)
    import peft
    import transformers

    if args.row_out:  # one row, in the process its parent started for it
        trace = args.trace_out if args.trace == keys[0] and device.type == "cuda" else None
        args.row_out.write_text(json.dumps(_run_case(args, keys[0], device, dtype, trace)))
        return
    print(f"{args.shape}, {args.batch} x {args.seq} tokens, {where}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}, "
          f"liger-kernel {'yes' if fused_loss_available() else 'no'}", flush=True)
    rows = []
    for key in keys:
        name, opts = CASES[key]
        if device.type == "cpu" and opts.get("qlora"):
            print(f"  {name}: skipped (a CUDA case)", flush=True)
            continue
        trace = args.trace_out if key == args.trace and device.type == "cuda" else None
        try:
            r = _run_case(args, key, device, dtype, trace) if args.same_process else _run_apart(key)
        except Exception as e:  # out of memory, a missing package: the other rows still run
            print(f"  {name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        flops = flops_per_token(args.shape, args.seq, full=not opts["lora"])
        r["mfu"] = r["tokens_per_s"] * flops / (peak_tflops * 1e12) if peak_tflops else None
        rows.append(r)
        memory = f", {r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else ""
        print(f"  {name}: {r['tokens_per_s']:,.0f} tokens/s{memory}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"shape": args.shape, "batch": args.batch, "seq": args.seq,
                                             "device": where, "torch": torch.__version__,
                                             "rows": rows}, indent=1))
    if not rows:
        raise SystemExit("no row ran")
    base = rows[0]
    print(f"\n| case | tokens/s | vs {base['key']} | step s | peak GiB | vs {base['key']} | MFU | first loss |"
          "\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        peak = "n/a | n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} | {r['peak_gib'] / base['peak_gib']:.2f}x"
        print(f"| {r['case']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
              f"{r['step_s']:.3f} | {peak} | {mfu} | "
              f"{r['first_loss']:.4f} |")


if __name__ == "__main__":
    main()
