"""One decoding step over rows of several LoRA adapters: PEFT's ways against stacked rows.

    python benchmarks/lora_rows.py                 # CPU, the embedded default model (SmolLM2-135M)
    python benchmarks/lora_rows.py --model tiny    # the 2-layer test model
    python benchmarks/lora_rows.py --device cuda --rows 32

Eight LoRA adapters (r=8 on q/k/v/o, random weights) are loaded into one PeftModel, as
`affina serve` holds them. For rows whose adapters are one adapter, the base and two adapters, or
eight adapters, it times a greedy decoding step (one new token per row over a prompt of
--prompt tokens already in the KV cache) three ways, in the same run:
- PEFT, one adapter active (`set_adapter`): possible only when every row has the same adapter;
- PEFT's per-row `adapter_names=`: a loop over the distinct adapters in every LoRA layer;
- stacked rows (`affina.serve.lora_rows.StackedLoraRows`, what the server runs): the loaded
  adapters' matrices stacked, two matmuls per layer.
Prints a markdown table of milliseconds per step: the median over --rounds rounds of --steps
steps, the rounds interleaving every case and way so that all meet the same machine load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from affina.models import resolve_model_path  # noqa: E402
from affina.serve.continuous import cache_argument  # noqa: E402
from affina.serve.lora_rows import StackedLoraRows  # noqa: E402

ADAPTERS = [f"adapter{i}" for i in range(1, 9)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=60, help="tokens already in each row's cache")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per way, per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every case and way")
    parser.add_argument("--threads", type=int, help="torch threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.model == "tiny":
        from tests.helpers import make_tiny_model

        base_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", seed=3, initializer_range=0.3)
    else:
        base_dir = resolve_model_path("default")
    model = AutoModelForCausalLM.from_pretrained(base_dir).to(args.device)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    peft = None
    for seed, name in enumerate(ADAPTERS):
        torch.manual_seed(seed)
        if peft is None:
            peft = get_peft_model(model, config, adapter_name=name)
        else:
            peft.add_adapter(name, config)
    peft.eval().to(args.device)
    stacked = StackedLoraRows(peft)
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (args.rows, args.prompt), device=args.device)
    cache_arg = cache_argument(model)

    def step_times(names: list[str], how: str) -> list[float]:
        kwargs, context = {}, nullcontext
        if how == "one":
            peft.set_adapter(names[0])
        elif how == "adapter_names":
            kwargs = {"adapter_names": names}
        else:
            stacked.no_adapter()
            context = lambda: stacked.rows(names)  # noqa: E731
        times = []
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            mask = torch.ones_like(ids)
            with context():
                out = peft(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1,
                           **{cache_arg: cache}, **kwargs)
            last = out.logits[:, -1].argmax(-1)
            for _ in range(args.steps):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                started = time.perf_counter()
                with context():
                    out = peft(input_ids=last[:, None], attention_mask=mask, use_cache=True,
                               logits_to_keep=1, **{cache_arg: cache}, **kwargs)
                last = out.logits[:, -1].argmax(-1)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - started) * 1000)
        return times

    cases = [("one adapter", [ADAPTERS[0]] * args.rows),
             ("base and two adapters", (["__base__", ADAPTERS[0], ADAPTERS[1]] * args.rows)[:args.rows]),
             ("eight adapters", (ADAPTERS * args.rows)[:args.rows])]
    ways = ("one", "adapter_names", "stacked")
    times: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up; rounds interleave cases and ways
        for label, names in cases:
            for how in ways:
                if how != "one" or len(set(names)) == 1:
                    measured = step_times(names, how)
                    if round_:
                        times.setdefault((label, how), []).extend(measured)
    rows = [[label] + [f"{statistics.median(times[(label, how)]):.1f}" if (label, how) in times else "n/a"
                       for how in ways] for label, _ in cases]

    threads = torch.get_num_threads()
    print(f"\nModel: {args.model}, device {args.device}, torch threads {threads}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}); {args.rows} rows, {args.prompt} tokens cached, "
          f"8 adapters loaded (r=8, q/k/v/o); median ms per decoding step, {args.rounds} rounds of "
          f"{args.steps} steps\n")
    header = ["rows' adapters", "PEFT, one adapter active", "PEFT adapter_names", "stacked (affina)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
