"""`affina advise`: argument parsing only; the work is in advise.py."""

from __future__ import annotations

from pathlib import Path

__all__ = ["register"]


def _fractions(value: str) -> list[float]:
    from ..errors import ConfigError

    try:
        return [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--ladder {value!r}: give fractions like 0.1,0.25,0.5,1") from None


def _cmd_advise(args) -> int:
    from .advise import advise

    advise(args.train, args.eval, docs=args.docs, model=args.model, budget_minutes=args.budget_minutes,
           fractions=_fractions(args.ladder), metric=args.metric, config=args.config,
           overrides=args.overrides, shots=args.shots, rag_k=args.k, epochs=args.epochs,
           max_new_tokens=args.max_new_tokens, limit=args.limit, out_dir=args.out, seed=args.seed,
           chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
    return 0


def register(sub) -> None:
    a = sub.add_parser(
        "advise", help="should you fine-tune? zero-shot, few-shot, RAG and a fine-tuning data ladder compared",
        description="On your evaluation set: the base model zero-shot, few-shot (method fewshot), "
                    "retrieval over --docs, LoRA fine-tuning on growing shares of the training rows "
                    "(as many rungs as fit --budget-minutes) and fine-tuning + retrieval. Prints a "
                    "table, draws advice.png (quality against training rows, cost beside it) and "
                    "ends with a verdict. Writes advice.json, inputs.json and the runs into --out.")
    a.add_argument("--train", nargs="+", required=True, metavar="FILE", help="training data")
    a.add_argument("--eval", nargs="+", required=True, metavar="FILE", help="evaluation data (prompt/reply)")
    a.add_argument("--docs", nargs="+", metavar="DIR", help="documents for retrieval (files or directories)")
    a.add_argument("--model", default="default", help="base model spec (default: default)")
    a.add_argument("--budget-minutes", type=float, default=30.0,
                   help="stop adding ladder rungs when the next would end past this (default 30)")
    a.add_argument("--ladder", default="0.1,0.25,0.5,1", help="shares of the training rows (default 0.1,0.25,0.5,1)")
    a.add_argument("--metric", help="the measure the verdict uses (default token_f1 for free text)")
    a.add_argument("--shots", type=int, default=4, help="few-shot examples per prompt (default 4)")
    a.add_argument("-k", type=int, default=4, help="retrieved chunks per question (default 4)")
    a.add_argument("--chunk-size", type=int, default=200, help="--docs chunk length in tokens (default 200)")
    a.add_argument("--chunk-overlap", type=int, default=40, help="--docs chunk overlap in tokens (default 40)")
    a.add_argument("--epochs", type=float, default=3.0, help="fine-tuning epochs on every rung (default 3)")
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.add_argument("--limit", type=int, help="score only the first N evaluation rows")
    a.add_argument("--seed", type=int, default=0, help="seed of the ladder's row order and training")
    a.add_argument("-c", "--config", help="run config YAML for the fine-tuning rungs (default: LoRA defaults)")
    a.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides for the fine-tuning rungs")
    a.add_argument("--out", type=Path, metavar="DIR", help="advice directory (default advice/advise-<time>)")
    a.set_defaults(func=_cmd_advise)
