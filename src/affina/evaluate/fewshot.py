"""Few-shot prompting for evaluation: k solved examples put in the conversation before the
question, so a base model can be measured the way it would be used without fine-tuning.

Loss is taken on the final reply only: the solved examples are context, not something the model
is being scored on.
"""

from __future__ import annotations

from ..data.records import Record
from ..data.tokenize import IGNORE_INDEX, Example, record_messages, render_chat

__all__ = ["fewshot_messages", "fewshot_example", "pick_shots"]


def pick_shots(records: list[Record], k: int) -> tuple[list[Record], list[Record]]:
    """The first k records with a reply as examples, and the remaining records to score. Taking
    them from the front keeps the choice reproducible and the scored set identical across models."""
    if k <= 0:
        return [], records
    usable = [r for r in records if r.kind != "text"]
    shots = usable[:k]
    chosen = {id(r) for r in shots}
    return shots, [r for r in records if id(r) not in chosen]


def fewshot_messages(record: Record, shots: list[Record]) -> list[dict]:
    """The record's conversation with each shot's turns in front (after any system message)."""
    messages = record_messages(record)
    system = [m for m in messages[:1] if m["role"] == "system"]
    context = [m for shot in shots for m in record_messages(shot) if m["role"] != "system"]
    return system + context + messages[len(system):]


def fewshot_example(record: Record, shots: list[Record], tokenizer, max_length: int) -> Example:
    """Token ids and labels with loss on the final assistant reply only. When the prompt is too
    long, the oldest context is cut (from the left), never the reply being scored."""
    text, spans = render_chat(tokenizer, fewshot_messages(record, shots))
    start, end = spans[-1]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [tok if start <= s < end else IGNORE_INDEX for tok, (s, _e) in zip(ids, enc["offset_mapping"])]
    truncated = len(ids) > max_length
    return Example(ids[-max_length:], labels[-max_length:], record.source, record.line, truncated)
