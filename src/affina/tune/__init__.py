"""Hyperparameter search with optuna: a YAML search space over any RunConfig key, each trial a
tracked training run, weak trials pruned by their intermediate validation loss.

Names load on first use, so importing `tune.commands` (for `affina --help`) imports no
transformers.
"""

__all__ = ["PruningCallback", "ParamSpec", "SearchSpace", "load_space", "SweepResult", "run_sweep"]

_HOMES = {"PruningCallback": "pruning", "ParamSpec": "space", "SearchSpace": "space",
          "load_space": "space", "SweepResult": "sweep", "run_sweep": "sweep"}


def __getattr__(name):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
