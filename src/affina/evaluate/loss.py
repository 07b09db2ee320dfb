"""Loss-based evaluation: mean loss and perplexity over the tokens that carry loss."""

from __future__ import annotations

import math

import torch

from ..models.lm_loss import causal_lm_of, row_loss_sums

__all__ = ["evaluate_loss", "per_example_losses", "per_token_loss_sums", "sequence_logprobs"]


@torch.no_grad()
def per_token_loss_sums(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and loss-token count per row of a collated batch. A plain causal LM
    (or LoRA-style PEFT model) projects only the counted positions, a chunk at a time
    (models/lm_loss.py), instead of holding the whole batch's fp32 logits; prompt learning,
    heads and other wrappers go through their own forward."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    causal = causal_lm_of(model)
    if causal is not None:
        return row_loss_sums(causal, batch)
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits.float()  # (B, T, V)
    # Prompt tuning prepends virtual tokens to the logits: keep the positions of the real ones.
    logits = logits[:, -labels.shape[1]:]
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=-100, reduction="none").view(shift_labels.shape)  # (B, T-1)
    return loss.sum(-1), (shift_labels != -100).sum(-1)


def sequence_logprobs(model, examples: list, pad_token_id: int, batch_size: int = 16,
                      progress: str | None = None) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of the tokens that carry a label in each example.

    Examples are batched by length (similar lengths together, so little padding) and the
    results come back in the order given. `progress`: a bar description, or None for none."""
    from tqdm.auto import tqdm

    from ..data.packing import BatchCollator
    from ..ui import progress_bars

    collator = BatchCollator(pad_token_id)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=progress, leave=False,
                      disable=not (progress and progress_bars())):
        chunk = order[start:start + batch_size]
        sums, counts = per_token_loss_sums(model, collator([examples[i] for i in chunk]))
        for i, s, c in zip(chunk, sums.tolist(), counts.tolist()):
            out[i] = (-s, int(c))
    return out


def evaluate_loss(model, examples: list, collator, batch_size: int = 8,
                  progress: bool = False) -> dict[str, float]:
    from tqdm.auto import tqdm

    from ..ui import progress_bars

    model.eval()
    total, count = 0.0, 0
    for start in tqdm(range(0, len(examples), batch_size), desc="validation loss",
                      disable=not (progress and progress_bars()), leave=False):
        sums, counts = per_token_loss_sums(model, collator(examples[start:start + batch_size]))
        total += sums.sum().item()
        count += counts.sum().item()
    loss = total / max(1, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def per_example_losses(model, examples: list, collator) -> list[float]:
    """Mean loss of each example on its own (used to check packing equivalence)."""
    out = []
    for ex in examples:
        s, c = per_token_loss_sums(model, collator([ex]))
        out.append((s / c).item())
    return out
