"""Trainer callbacks: keep the loss history for the learning curve and send it to MLflow; move
the weights fp8 layers do not compute with off the GPU once training begins."""

from __future__ import annotations

from transformers import TrainerCallback

from ..ui import info
from .fp8 import offload_weights

__all__ = ["HistoryCallback", "OffloadFp8Weights"]


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


class OffloadFp8Weights(TrainerCallback):
    """train.mixed_precision=fp8 on a GPU: the frozen base's bf16 weights wait in host memory
    while the fp8 copies compute (train/fp8.py `offload_weights`). At the start of training, after
    the trainer has placed the model and wrapped it for data parallelism; `restore_linear` brings
    them back after training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        moved = offload_weights(model)
        if moved:
            info(f"fp8: {moved / 2**30:.1f} GiB of the frozen base's weights wait in host memory while "
                 "training computes with their fp8 copies")
