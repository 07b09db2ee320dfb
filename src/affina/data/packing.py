"""Packing short examples into long rows, and the collator that batches rows.

A packed row concatenates examples and restarts `position_ids` at 0 for each one. With no 2D
attention mask, transformers turns those positions into a block-diagonal causal mask, so no
token attends across an example boundary; the first label of every example is masked so no
token is trained to predict the next example. The result: a packed batch gives the same
per-example loss as the examples run one by one (tests/data/test_packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenize import IGNORE_INDEX, Example

__all__ = ["pack_examples", "PackedRow", "BatchCollator", "packing_efficiency", "padded_width"]


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    n_examples: int


def pack_examples(examples: list[Example], max_length: int) -> list[PackedRow]:
    """First-fit decreasing bin packing into rows of at most `max_length` tokens (deterministic)."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    rows = []
    for members in bins:
        ids, labels, pos = [], [], []
        for i in members:
            ex = examples[i]
            ids += ex.input_ids
            # The first token of an example is never a target: masking it stops the last token of
            # the previous example from learning to predict it.
            labels += [IGNORE_INDEX] + ex.labels[1:]
            pos += list(range(len(ex)))
        rows.append(PackedRow(ids, labels, pos, len(members)))
    return rows


def packing_efficiency(rows: list[PackedRow], max_length: int) -> float:
    """Share of row slots holding real tokens."""
    return sum(len(r.input_ids) for r in rows) / max(1, len(rows) * max_length)


def padded_width(width: int, multiple: int | None) -> int:
    """`width` rounded up to a multiple of `multiple` (as it is when `multiple` is None or 0)."""
    return (width + multiple - 1) // multiple * multiple if multiple else width


class BatchCollator:
    """Pads a list of `Example`s or `PackedRow`s into a batch of tensors.

    Unpacked: right padding + attention_mask. Packed: no attention mask at all (the positions
    carry the boundaries); padding forms its own segment with positions restarting at 0.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list) -> dict[str, torch.Tensor]:
        width = padded_width(max(len(f.input_ids) for f in features), self.pad_to_multiple_of)
        packed = isinstance(features[0], PackedRow)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        batch = {"input_ids": ids, "labels": labels}
        if packed:
            pos = torch.zeros((len(features), width), dtype=torch.long)
            batch["position_ids"] = pos
        else:
            mask = torch.zeros((len(features), width), dtype=torch.long)
            batch["attention_mask"] = mask
        for row, f in enumerate(features):
            n = len(f.input_ids)
            ids[row, :n] = torch.tensor(f.input_ids)
            labels[row, :n] = torch.tensor(f.labels)
            if packed:
                pos[row, :n] = torch.tensor(f.position_ids)
                pos[row, n:] = torch.arange(width - n)
            else:
                mask[row, :n] = 1
        return batch
