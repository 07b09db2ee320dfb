"""`affina sweep`: argument parsing only; the work is in sweep.py."""

from __future__ import annotations

from pathlib import Path

__all__ = ["register"]


def _cmd_sweep(args) -> int:
    from .sweep import run_sweep

    run_sweep(args.space, config=args.config, overrides=args.overrides, n_trials=args.trials,
              timeout=args.timeout, storage=args.storage, study_name=args.study, out_dir=args.out)
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "sweep", help="hyperparameter search over run config keys (optuna)",
        description="Search the keys in SPACE.yaml, each trial a tracked training run pruned by "
                    "its intermediate validation loss. Prints a ranked table and writes search.png, "
                    "sweep.json and best.yaml (a ready-to-run config) into --out. Workers on several "
                    "machines share one study through an RDB --storage URL and the same --study.")
    s.add_argument("space", metavar="SPACE.yaml", help="search space (see docs/evaluation.md)")
    s.add_argument("-c", "--config", help="base run config YAML")
    s.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override base config keys (right after SPACE.yaml)")
    s.add_argument("--trials", type=int, help="trials in the study in all (complete + pruned)")
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long")
    s.add_argument("--storage", help="optuna storage URL (default sqlite:///<out>/study.db; "
                                     "e.g. postgresql://user@host/db for many workers)")
    s.add_argument("--study", help="study name (default: the space file's name)")
    s.add_argument("--out", type=Path, metavar="DIR", help="results directory (default sweeps/<study>)")
    s.set_defaults(func=_cmd_sweep)
