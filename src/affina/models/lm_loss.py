"""The next-token loss of a causal LM from its final hidden states, a chunk of counted positions
at a time, so the [tokens x vocabulary] logits are never held whole: the training profiles'
chunked loss (train/speed.py) and the evaluator's per-example losses (evaluate/loss.py) share it.
For the default model's 49,152-word vocabulary a batch of 20 rows of 256 tokens would otherwise
hold 1 GB of fp32 logits, and as much again for their softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # labels not counted: transformers' value, which data/ writes too

__all__ = ["causal_lm_of", "counted_positions", "chunk_cross_entropy", "row_loss_sums"]


def causal_lm_of(model):
    """The causal LM inside `model` (a PEFT wrapper or the model itself), or None when its forward
    does more than decoder → output projection (prompt learning, heads, few-shot wrappers,
    soft-capped or scaled logits, a quantised output layer)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None:
        if any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
            return None  # prefix/prompt tuning feed virtual tokens through the PEFT wrapper
        model = model.get_base_model()
    if not hasattr(model, "get_decoder"):
        return None
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    head = model.get_output_embeddings()
    config = getattr(model, "config", None)
    if (decoder is None or not isinstance(head, torch.nn.Linear) or head.bias is not None
            or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)
            or type(head).__module__.startswith(("bitsandbytes", "peft"))):
        return None
    return model


def counted_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the positions whose next token is counted [batch, seq], those next tokens):
    labels shifted by one as transformers' causal-LM loss shifts them (-100 = not counted)."""
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    keep = shifted != IGNORE_INDEX
    return keep, shifted[keep]


def chunk_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of one chunk of positions (summed, or per position with "none"), its logits
    in fp32."""
    return F.cross_entropy(F.linear(hidden, weight).float(), labels, reduction=reduction)


@torch.no_grad()
def row_loss_sums(causal, batch: dict, chunk_tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token loss, counted tokens) per row of a collated batch (with `labels`), for
    a model `causal_lm_of` accepts: the decoder's hidden states, then the output projection and
    cross-entropy on counted positions only, `chunk_tokens` at a time."""
    batch = dict(batch)
    labels = batch.pop("labels")
    hidden = causal.get_decoder()(**batch, use_cache=False).last_hidden_state
    keep, targets = counted_positions(labels)
    rows = keep.nonzero()[:, 0]
    h = hidden[keep]
    weight = causal.get_output_embeddings().weight
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, h.shape[0], chunk_tokens):
        losses = chunk_cross_entropy(h[start:start + chunk_tokens], weight,
                                     targets[start:start + chunk_tokens], reduction="none")
        sums.index_add_(0, rows[start:start + chunk_tokens], losses)
    return sums, keep.sum(-1)
