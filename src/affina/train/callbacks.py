"""Trainer callbacks: keep the loss history for the learning curve and send it to MLflow; move
frozen weights a GPU step does not read to host memory once training begins."""

from __future__ import annotations

from transformers import TrainerCallback

from ..ui import info
from .fp8 import offload_weights
from .speed import embeddings_to_host

__all__ = ["HistoryCallback", "WeightsToHost"]


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


class WeightsToHost(TrainerCallback):
    """Frozen weights that a GPU training step does not read, moved to host memory at the start
    of training, after the trainer has placed the model and wrapped it for data parallelism:
    under train.mixed_precision=fp8 the bf16 weights of the fp8 layers (train/fp8.py
    `offload_weights`; the fp8 copies compute), under the memory profile the input embedding
    table (train/speed.py `embeddings_to_host`; the lookup runs on the host). The recipe brings
    them back after training (`restore_linear`, `embeddings_from_host`)."""

    def __init__(self, fp8: bool, embeddings: bool):
        self.fp8, self.embeddings = fp8, embeddings

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        moved = []
        if self.fp8 and (size := offload_weights(model)):
            moved.append(f"{size / 2**30:.1f} GiB of the fp8 layers' full-precision weights")
        if self.embeddings and (size := embeddings_to_host(model)):
            moved.append(f"the {size / 2**30:.1f} GiB input embedding table")
        if moved:
            info(f"host memory holds {' and '.join(moved)} while training")
