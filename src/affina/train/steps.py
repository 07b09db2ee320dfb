"""The recipe's Trainer: transformers' Trainer with the profile's loss step (train/speed.py) and no
host sync between the steps that log, validate or save.

transformers' Trainer reads two numbers back from the device after every step's backward pass:
whether the loss is finite (`logging_nan_inf_filter`, which also swaps a non-finite loss for the
running mean before it is logged) and how many tokens the batch held
(`include_num_input_tokens_seen`). Each read waits for all the GPU work queued so far, so the host
cannot queue the optimizer step and the next forward pass while the GPU is still busy. The
recipe's Trainer switches both off (`STEP_ARGUMENTS`) and counts the tokens itself
(`TokensSeenMixin`), as "non_padding" counts them (the attention mask's ones; every token of a
batch without one): the count stays on the device and is read where it is looked at, before
each log (training, validation and the end of training) and before each checkpoint is saved,
summed over processes. The figures are the same as transformers' own, logged under the same
names (`num_input_tokens_seen`, `train_tokens_per_second`); a non-finite loss is logged as it is.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import speed_metrics

from .speed import Profile, speed_trainer_class

__all__ = ["STEP_ARGUMENTS", "TokensSeenMixin", "recipe_trainer_class"]

# TrainingArguments that keep the Trainer from reading the device every step.
STEP_ARGUMENTS = {"include_num_input_tokens_seen": "no", "logging_nan_inf_filter": False}


class _ReadTokens(TrainerCallback):
    """Reads the trainer's pending token count before a checkpoint saves the state (a log reads
    it itself). Runs right after transformers' flow callback, which decides whether the step
    saves, on every process (the read sums over them)."""

    def __init__(self):
        self.trainer = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._tokens_at_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.trainer.read_tokens_seen()


class TokensSeenMixin:
    """Mixed into the recipe's Trainer: counts the tokens each training batch holds without
    reading them back from the device every step (see the module docstring)."""

    def __init__(self, *args, callbacks=None, **kwargs):
        reader = _ReadTokens()
        super().__init__(*args, callbacks=[reader, *(callbacks or [])], **kwargs)
        reader.trainer = self
        self._tokens_host = 0  # batches without an attention mask: their size, known on the host
        self._tokens_device = None  # the attention masks' ones, summed on the device
        self._tokens_at_start = 0

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        if mask is None:
            self._tokens_host += inputs["input_ids"].numel()
        else:
            ones = mask.sum()
            self._tokens_device = ones if self._tokens_device is None else self._tokens_device + ones
        return super().training_step(model, inputs, *args, **kwargs)

    def read_tokens_seen(self) -> None:
        """Add the tokens counted since the last read to `state.num_input_tokens_seen`: one read
        from the device, summed over processes (call it on every process)."""
        pending = torch.tensor(self._tokens_host, dtype=torch.int64, device=self.args.device)
        if self._tokens_device is not None:
            pending = pending + self._tokens_device.to(pending.device, torch.int64)
        if self.accelerator.num_processes > 1:
            pending = self.accelerator.gather(pending).sum()
        self.state.num_input_tokens_seen += int(pending.item())
        self._tokens_host, self._tokens_device = 0, None

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._tokens_host or self._tokens_device is not None:  # every process logs here
            self.read_tokens_seen()
        # What transformers' `log` adds when it counts tokens itself.
        logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        if start_time is not None:
            logs.update(speed_metrics("train", start_time,
                                      num_tokens=self.state.num_input_tokens_seen - self._tokens_at_start))
        super().log(logs, start_time)


def recipe_trainer_class(base: type, profile: Profile) -> type:
    """`base` (a transformers Trainer class) with the profile's loss step and the token count
    above; build it with `STEP_ARGUMENTS` in its TrainingArguments."""
    stepped = speed_trainer_class(base, profile)
    return type(f"Counted{stepped.__name__}", (TokensSeenMixin, stepped), {})
