"""Every adaptation method on the embedded default model (CPU), under one fixed small budget.

    python benchmarks/methods.py [--steps 8] [--batch-size 4] [--val-rows 20] [--methods lora,full]

Per method: trainable parameters, peak resident memory of the training process, seconds per
optimiser step, and validation loss after the budget on examples/product_json (the first
`--val-rows` rows of test.jsonl). `head` learns the product's category from the same inputs (a
text+label view of the data) and reports accuracy in place of a comparable loss; `fewshot` does
not train and is measured with its demonstrations in context. Each method runs in its own
process so peak memory is its own. This is a benchmark, not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "product_json"
METHODS = ["full", "partial", "lora", "dora", "rslora", "qlora", "ia3", "prefix", "prompt",
           "adapter", "head", "fewshot"]
# Learning rates in each method's usual range for this budget.
LR = {"full": 5e-5, "partial": 1e-4, "prefix": 1e-2, "prompt": 3e-2, "ia3": 1e-2, "head": 1e-3,
      "adapter": 1e-3}


def _classification_view(src: Path, dst: Path, rows: int | None = None) -> Path:
    """text = the product description, label = its category: a text+label task from the sample."""
    lines = src.read_text().splitlines()[:rows]
    out = [json.dumps({"text": json.loads(line)["input"], "label": json.loads(json.loads(line)["output"])["category"]})
           for line in lines]
    dst.write_text("\n".join(out) + "\n")
    return dst


def run_one(method: str, steps: int, batch_size: int, val_rows: int, work: Path) -> dict:
    """One `affina train` (the CLI entry point, in this process) and what its run recorded."""
    import resource

    from affina.cli import main as affina

    val = work / "val.jsonl"
    val.write_text("\n".join((DATA / "test.jsonl").read_text().splitlines()[:val_rows]) + "\n")
    train_file = DATA / "train.jsonl"
    if method == "head":
        train_file = _classification_view(train_file, work / "train_cls.jsonl")
        val = _classification_view(DATA / "test.jsonl", work / "val_cls.jsonl", val_rows)
    args = ["train", f"method.name={method}", f"data.train={train_file}", f"data.validation={val}",
            "data.max_length=256", f"train.max_steps={steps}", f"train.batch_size={batch_size}",
            f"train.lr={LR.get(method, 1e-3)}", "train.eval_steps=0", f"train.save_steps={steps * 10}",
            "train.logging_steps=1", f"train.output_dir={work / 'runs'}", f"train.run_name={method}",
            "track.mlflow=false", "eval.data=[]"]
    started = time.time()
    if affina(args) != 0:
        raise SystemExit(f"affina train failed for {method}")
    run_dir = work / "runs" / method
    m = json.loads((run_dir / "affina.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    runtime = next((h["train_runtime"] for h in history if "train_runtime" in h), None)
    accuracy = next((h["eval_accuracy"] for h in history if "eval_accuracy" in h), None)
    return {"method": method, "trainable": m["method"]["trainable_params"],
            "percent": m["method"]["trainable_percent"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "s_per_step": runtime / m["train"]["global_step"] if runtime and m["train"]["global_step"] else None,
            "val_loss": m["metrics"]["validation_loss"], "accuracy": accuracy,
            "wall_s": time.time() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--val-rows", type=int, default=20)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.steps, args.batch_size, args.val_rows, Path(args.work))))
        return

    from affina.ui import print_table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            work = Path(tmp) / method
            work.mkdir()
            proc = subprocess.run([sys.executable, __file__, "--one", method, "--work", str(work),
                                   "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                   "--val-rows", str(args.val_rows)], capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{method}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
                continue
            r = json.loads(line[7:])
            print(f"{method}: {r}", file=sys.stderr, flush=True)
            rows.append([method, f"{r['trainable']:,}", f"{r['percent']:.3f}%", f"{r['peak_rss_mib']:.0f}",
                         "-" if r["s_per_step"] is None else f"{r['s_per_step']:.2f}",
                         "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}",
                         "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}", f"{r['wall_s']:.0f}"])
    print_table(f"methods on the default model, CPU, {args.steps} steps × batch {args.batch_size}, "
                f"validation = first {args.val_rows} rows of test.jsonl",
                ["method", "trainable", "% of total", "peak RSS MiB", "s/step", "val loss",
                 "accuracy", "wall s"], rows)


if __name__ == "__main__":
    main()
