"""Report each trial's validation loss to optuna while it trains, and stop it when the pruner
says it is weaker than the trials before it at the same step."""

from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["PruningCallback"]


class PruningCallback(TrainerCallback):
    """Trainer callback for one optuna trial.

    The intermediate value is the validation loss, negated when the study maximises (a study
    ranked by a generation metric), so the pruner always compares in the study's own direction.
    A pruned trial stops training cleanly: the run still gets its artifact and manifest.
    """

    def __init__(self, trial, metric: str = "eval_loss", maximise: bool = False):
        self.trial = trial
        self.metric = metric
        self.sign = -1.0 if maximise else 1.0
        self.pruned_at: int | None = None
        self._reported: set[int] = set()

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        step = state.global_step
        # The recipe validates once more after training, at a step already reported.
        if value is None or self.pruned or step in self._reported:
            return
        self._reported.add(step)
        self.trial.report(self.sign * float(value), step=step)
        if self.trial.should_prune():
            self.pruned_at = step
            control.should_training_stop = True
