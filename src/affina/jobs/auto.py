"""The "auto" hyperparameter policy of fine-tuning jobs: epochs, batch size and learning rate
chosen from the data set's size and token lengths and from the method.

Each value a job leaves as "auto" (or omits) is chosen here; a number the job gives is kept.

- **batch size**: as many examples as fit a budget of `TOKENS_PER_BATCH` tokens at the data's
  90th-percentile length, rounded down to a power of two, between 1 and `MAX_BATCH`; and at most
  a quarter of the training rows, so that even a tiny set takes several optimiser steps an epoch.
- **epochs**: `DEFAULT_EPOCHS`, raised for small sets so that the model sees at least
  `MIN_EXAMPLES_SEEN` examples (at most `MAX_EPOCHS`), lowered for large sets so that it sees at
  most `MAX_EXAMPLES_SEEN`; then capped so the whole job stays within `MAX_TOTAL_STEPS`
  optimiser steps (never below one epoch).
- **learning rate** = the method's base rate × `learning_rate_multiplier`. The base rate depends
  on what trains: `FULL_WEIGHTS_LR` when the method changes the model's own weights (its
  artifact is a whole model), `ADAPTER_LR` for adapters (LoRA, DoRA, IA3, prompts, heads, ...);
  preference data (DPO/ORPO/KTO) takes `PREFERENCE_FACTOR` of it, since those objectives move
  the policy further per step. An "auto" multiplier scales with the square root of the batch
  size relative to `REFERENCE_BATCH` (the usual square-root rule for Adam), within [0.5, 2].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DataShape", "data_shape", "resolve_hyperparameters", "base_learning_rate",
           "TOKENS_PER_BATCH", "MAX_BATCH", "DEFAULT_EPOCHS", "MIN_EXAMPLES_SEEN",
           "MAX_EXAMPLES_SEEN", "MAX_EPOCHS", "MAX_TOTAL_STEPS", "FULL_WEIGHTS_LR", "ADAPTER_LR",
           "PREFERENCE_FACTOR", "REFERENCE_BATCH"]

TOKENS_PER_BATCH = 2048
MAX_BATCH = 16
DEFAULT_EPOCHS = 3
MIN_EXAMPLES_SEEN = 300
MAX_EXAMPLES_SEEN = 25_000
MAX_EPOCHS = 10
MAX_TOTAL_STEPS = 1000
FULL_WEIGHTS_LR = 2e-5
ADAPTER_LR = 2e-4
PREFERENCE_FACTOR = 0.25
REFERENCE_BATCH = 8


@dataclass(frozen=True)
class DataShape:
    """What the policy needs to know about a training set."""

    rows: int  # training examples (after the validation share is held out)
    p90_tokens: int  # 90th percentile of the examples' token lengths (after truncation)
    mean_tokens: float
    preference: bool = False  # prompt/chosen/rejected rows

    @property
    def tokens(self) -> int:
        return int(self.rows * self.mean_tokens)


def data_shape(records, tokenizer, max_length: int, *, val_fraction: float = 0.0) -> DataShape:
    """Token lengths of `records` under the base model's tokenizer and chat template. With
    `val_fraction`, the rows the run will hold out for validation are not counted."""
    from ..data.tokenize import ensure_chat_template, tokenize_record

    ensure_chat_template(tokenizer)
    lengths = []
    for record in records:
        if record.kind == "preference":
            text = " ".join(m["content"] for m in (record.prompt or [])) + " " + (record.chosen or "")
            lengths.append(min(max_length, len(tokenizer(text)["input_ids"]) + 8))
        else:
            lengths.append(len(tokenize_record(record, tokenizer, max_length).input_ids))
    lengths.sort()
    rows = len(records) - (int(len(records) * val_fraction) if val_fraction else 0)
    p90 = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))] if lengths else 1
    mean = sum(lengths) / len(lengths) if lengths else 1.0
    preference = any(r.kind == "preference" for r in records)
    return DataShape(max(rows, 1), max(p90, 1), mean, preference)


def base_learning_rate(method, preference: bool) -> float:
    """The method's base rate: whole-model methods train the weights themselves, adapters train
    a few new parameters from zero and take a rate ten times higher."""
    rate = FULL_WEIGHTS_LR if method.artifact_kind == "model" else ADAPTER_LR
    return rate * (PREFERENCE_FACTOR if preference else 1.0)


def _power_of_two_floor(n: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(n, 1)))))


def _is_auto(value) -> bool:
    return value is None or value == "auto"


def resolve_hyperparameters(requested: dict, shape: DataShape, method, processes: int = 1) -> dict:
    """{n_epochs, batch_size, learning_rate_multiplier, learning_rate, total_steps, base_lr}:
    each requested number kept, each "auto" chosen by the policy above. `processes`: how many
    train the job data-parallel, each on `batch_size` examples a step (fewer steps)."""
    batch = requested.get("batch_size")
    if _is_auto(batch):
        batch = _power_of_two_floor(TOKENS_PER_BATCH / shape.p90_tokens)
        batch = max(1, min(batch, MAX_BATCH, _power_of_two_floor(max(1, shape.rows // 4))))
    batch = int(batch)
    steps_per_epoch = math.ceil(shape.rows / (batch * max(1, processes)))

    epochs = requested.get("n_epochs")
    if _is_auto(epochs):
        epochs = DEFAULT_EPOCHS
        if shape.rows * epochs < MIN_EXAMPLES_SEEN:
            epochs = min(MAX_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / shape.rows))
        elif shape.rows * epochs > MAX_EXAMPLES_SEEN:
            epochs = max(1, MAX_EXAMPLES_SEEN // shape.rows)
        epochs = max(1, min(epochs, MAX_TOTAL_STEPS // max(steps_per_epoch, 1)))
    epochs = int(epochs)

    multiplier = requested.get("learning_rate_multiplier")
    if _is_auto(multiplier):
        multiplier = round(min(2.0, max(0.5, math.sqrt(batch / REFERENCE_BATCH))), 4)
    multiplier = float(multiplier)
    base = base_learning_rate(method, shape.preference)
    return {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": multiplier,
            "base_learning_rate": base, "learning_rate": base * multiplier,
            "total_steps": steps_per_epoch * epochs}
