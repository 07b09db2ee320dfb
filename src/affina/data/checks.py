"""Checks over a whole set of records: duplicates, and a short summary of what was loaded.

Over-long examples are found at tokenization, where the token count is known.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from affina.data.records import Record
from affina.data.sources import where

__all__ = ["find_duplicates", "dedupe", "describe_duplicate", "DataStats", "data_stats"]


def find_duplicates(records: list[Record]) -> list[tuple[Record, Record]]:
    """`(first, repeat)` for every record whose content (`.key()`) appeared earlier."""
    first_seen: dict[str, Record] = {}
    pairs = []
    for record in records:
        key = record.key()
        if key in first_seen:
            pairs.append((first_seen[key], record))
        else:
            first_seen[key] = record
    return pairs


def dedupe(records: list[Record]) -> tuple[list[Record], int]:
    """Keep the first record of each content, in order; return `(kept, n_removed)`."""
    seen: set[str] = set()
    kept = []
    for record in records:
        key = record.key()
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept, len(records) - len(kept)


def describe_duplicate(pair: tuple[Record, Record]) -> str:
    """`b.jsonl:7 repeats a.jsonl:2`: enough for a user to find both copies."""
    first, repeat = pair
    return f"{where(repeat.source, repeat.line)} repeats {where(first.source, first.line)}"


@dataclass
class DataStats:
    """What was loaded, for the summary table and the run record."""

    n_records: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    mean_turns: float = 0.0  # chat records only
    mean_chars: float = 0.0  # of all content, a rough size before tokenization


def data_stats(records: list[Record]) -> DataStats:
    def chars(r: Record) -> int:
        if r.messages is not None:
            return sum(len(m["content"]) for m in r.messages)
        if r.prompt is not None:
            return sum(len(m["content"]) for m in r.prompt) + len(r.chosen or "") + len(r.rejected or "")
        return len(r.text or "")

    chats = [r for r in records if r.messages is not None]
    n = len(records)
    return DataStats(
        n_records=n,
        kinds=dict(Counter(r.kind for r in records)),
        formats=dict(Counter(r.format for r in records)),
        labels=dict(Counter(r.label for r in records if r.label is not None)),
        mean_turns=sum(len(r.messages) for r in chats) / len(chats) if chats else 0.0,
        mean_chars=sum(chars(r) for r in records) / n if n else 0.0,
    )
