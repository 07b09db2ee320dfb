"""What a person (or a script) sees while a run trains.

`bar` (the default): one progress bar with the step, the latest training loss, the latest
validation loss, tokens/s and the ETA; nothing else is printed while it runs (the trainer's own
bars and raw metric dicts are switched off). `jsonl`: one JSON object per event on stdout, for
scripts and log collectors. `quiet`: nothing until the summary table.
"""

from __future__ import annotations

import json
import sys
import time

from transformers import TrainerCallback

__all__ = ["TrainingDisplay", "DISPLAY_MODES"]

DISPLAY_MODES = ("bar", "jsonl", "quiet")


class TrainingDisplay(TrainerCallback):
    def __init__(self, mode: str = "bar", stream=None):
        if mode not in DISPLAY_MODES:
            raise ValueError(f"display mode must be one of {DISPLAY_MODES}, got {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self.bar = None
        self.loss = None
        self.val_loss = None
        self._t0 = None
        self._tokens0 = 0
        self._step0 = 0
        self._rate = (None, None)  # (tokens seen, tokens/s) when the count last changed

    # -- events --------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()
        self._tokens0 = state.num_input_tokens_seen or 0
        self._step0 = state.global_step
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training",
                            unit="step", dynamic_ncols=True, file=sys.stderr, leave=True)
        self._emit({"event": "train_begin", "step": state.global_step, "max_steps": state.max_steps})

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix_str(self._postfix(state), refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = logs["loss"]
        if "eval_loss" in logs:
            self.val_loss = logs["eval_loss"]
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(state))
        numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        self._emit({"event": "log", "step": state.global_step, "max_steps": state.max_steps,
                    "epoch": round(state.epoch or 0, 4), "tokens_per_s": self._tokens_per_s(state),
                    "tokens_seen": state.num_input_tokens_seen or 0, **numbers})

    def on_save(self, args, state, control, **kwargs):
        # Called once the checkpoint is on disk; the losses are the latest logged (a validation
        # at the same step is logged before the save).
        import os

        self._emit({"event": "checkpoint", "step": state.global_step,
                    "path": os.path.join(args.output_dir, f"checkpoint-{state.global_step}"),
                    "loss": self.loss, "eval_loss": self.val_loss})

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix_str(self._postfix(state))
            self.bar.close()
            self.bar = None
        self._emit({"event": "train_end", "step": state.global_step,
                    "seconds": round(time.perf_counter() - (self._t0 or time.perf_counter()), 2)})

    # -- helpers -------------------------------------------------------------------------

    def _tokens_per_s(self, state) -> float | None:
        # The recipe's Trainer updates the count at the steps that log, validate or save
        # (train/steps.py): the rate is taken when it changes, not diluted by the steps between.
        if self._t0 is None:
            return None
        seen = state.num_input_tokens_seen or 0
        if seen != self._rate[0]:
            seconds = time.perf_counter() - self._t0
            tokens = seen - self._tokens0
            self._rate = (seen, round(tokens / seconds, 1) if seconds > 0 and tokens > 0 else None)
        return self._rate[1]

    def _postfix(self, state) -> str:
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_loss is not None:
            parts.append(f"val {self.val_loss:.4f}")
        rate = self._tokens_per_s(state)
        if rate:
            parts.append(f"{rate:,.0f} tok/s")
        return " · ".join(parts)

    def _emit(self, event: dict) -> None:
        if self.mode == "jsonl":
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()
