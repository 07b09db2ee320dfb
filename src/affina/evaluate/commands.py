"""`affina eval` and `affina select`: argument parsing only; the work is in compare.py and
tune/select.py. Registered `NAME@VERSION` references are resolved (and verified) here."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _metric_list(value: str) -> list[str]:
    return [m for m in value.replace(",", " ").split() if m]


def _add_generation_args(p: argparse.ArgumentParser, limit_default: int | None) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="held-out data file(s)")
    p.add_argument("--metrics", type=_metric_list, metavar="M1,M2",
                   help="metrics (exact_match, token_f1, rouge_l, chrf, bleu, json_valid, json_fields, "
                        "accuracy, macro_f1, or package.module:function); default: chosen from the data")
    p.add_argument("--limit", type=int, default=limit_default, help="score only the first N examples")
    p.add_argument("--max-new-tokens", type=int, help="generation budget per example (default: a "
                   "run's own eval.max_new_tokens; 128 for a model spec)")
    p.add_argument("--max-length", type=int, help="token limit per scored example (default: a run's "
                   "own data.max_length; 1024 for a model spec)")
    p.add_argument("--batch-size", type=int, help="(default: a run's own eval.batch_size; 16)")
    p.add_argument("--out", type=Path, metavar="DIR", help="report directory (default reports/<command>-<time>)")


def _cmd_eval(args) -> int:
    from ..govern.registry import resolve_model_ref
    from .compare import compare_models, ref_label

    compare_models([resolve_model_ref(r) for r in args.refs], args.data,
                   labels=[ref_label(r) for r in args.refs], metrics=args.metrics, out_dir=args.out, fewshot=args.fewshot,
                   shots_file=args.shots, limit=args.limit, max_length=args.max_length,
                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                   track=not args.no_track)
    return 0


def _cmd_select(args) -> int:
    from ..tune.select import select_base_model

    select_base_model(args.candidates, args.data, metrics=args.metrics, fewshot=args.fewshot,
                      limit=args.limit, max_length=args.max_length or 1024,
                      max_new_tokens=args.max_new_tokens or 128, batch_size=args.batch_size or 16,
                      probe_steps=args.probe_steps,
                      probe_train=args.train, probe_config=args.config, out_dir=args.out)
    return 0


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "eval", help="evaluate models and runs side by side on held-out data",
        description="Evaluate each REF (a run directory, or a model spec: default, a directory, a "
                    ".gguf file) on the same data: validation loss and perplexity on the reply "
                    "tokens, and greedy-generation metrics. Writes report.json, report.md and "
                    "predictions.jsonl, and logs the scores to each run's tracking record.")
    e.add_argument("refs", nargs="+", metavar="REF", help="run directory or model spec")
    _add_generation_args(e, None)
    e.add_argument("--fewshot", type=int, default=0, metavar="K",
                   help="also score every REF with K solved examples in the prompt")
    e.add_argument("--shots", nargs="+", metavar="FILE",
                   help="take the few-shot examples from these files (default: the first K rows of "
                        "--data, which are then not scored)")
    e.add_argument("--no-track", action="store_true", help="do not log to the runs' MLflow records")
    e.set_defaults(func=_cmd_eval)

    s = subparsers.add_parser(
        "select", help="compare candidate base models on your data",
        description="Profile each CANDIDATE model spec: architecture, parameters, context length, "
                    "memory (bf16 and 4-bit estimates, measured load), zero-shot and few-shot "
                    "quality on --data, generation speed here, and optionally a short probe "
                    "fine-tune. Prints a ranked table and writes select.json.")
    s.add_argument("candidates", nargs="+", metavar="CANDIDATE", help="model spec: default, a directory, a .gguf file")
    _add_generation_args(s, 50)
    s.add_argument("--fewshot", type=int, default=3, metavar="K", help="examples in the few-shot prompt (0: skip)")
    s.add_argument("--probe-steps", type=int, default=0, metavar="N",
                   help="also fine-tune each candidate (LoRA) for N steps on --train and score it")
    s.add_argument("--train", nargs="+", metavar="FILE", help="training data for the probe fine-tune")
    s.add_argument("-c", "--config", help="run config YAML the probe fine-tune starts from")
    s.set_defaults(func=_cmd_select)
