"""Hyperparameter search with optuna: a YAML search space over any RunConfig key, each trial a
tracked training run, weak trials pruned by their intermediate validation loss."""

from .pruning import PruningCallback
from .space import ParamSpec, SearchSpace, load_space
from .sweep import SweepResult, run_sweep

__all__ = ["PruningCallback", "ParamSpec", "SearchSpace", "load_space", "SweepResult", "run_sweep"]
