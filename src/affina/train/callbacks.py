"""Trainer callbacks: keep the loss history for the learning curve and send it to MLflow."""

from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["HistoryCallback"]


class HistoryCallback(TrainerCallback):
    """Collects every logged train/validation loss (also after a resume) and forwards it."""

    def __init__(self, tracker=None):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.tracker is None:
            return
        metrics = {("train_" + k if not k.startswith(("eval_", "train_")) else k): v
                   for k, v in logs.items() if isinstance(v, (int, float))}
        self.tracker.log_metrics(metrics, step=state.global_step)
