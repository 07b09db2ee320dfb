"""Load data files into one checked list of Records; fingerprint and split it.

Recipe: for each file, read rows → detect (or take) its format → convert each row → then
check the whole set: one kind of example across files, duplicates counted or dropped.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from affina.data.checks import dedupe as drop_duplicates
from affina.data.checks import describe_duplicate, find_duplicates
from affina.data.formats import detect_format, get_format, to_record
from affina.data.records import Record
from affina.data.sources import read_rows
from affina.errors import ConfigError, DataError

__all__ = ["FileInfo", "LoadResult", "load_records", "dataset_fingerprint", "split_records"]

_KIND_WORDS = {"chat": "chat (messages)", "text": "raw text", "label": "text+label",
               "preference": "preference (prompt/chosen/rejected)"}


class FileInfo(TypedDict):
    """One loaded file, as recorded in the run for lineage (a plain dict, ready for JSON)."""

    path: str
    format: str
    rows: int
    sha256: str


@dataclass
class LoadResult:
    records: list[Record]
    files: list[FileInfo]  # in the order given
    n_duplicates: int = 0  # extra copies found (removed when dedupe=True)
    warnings: list[str] = field(default_factory=list)
    # Every record read, before dedupe: what `affina data inspect` prints for these files, so
    # lineage can find a run by it.
    source_fingerprint: str | None = None


def load_records(paths: list[str | Path], *, format: str | None = None,
                 dedupe: bool = False) -> LoadResult:
    """Read every file into Records. `format` forces one format for all files."""
    if not paths:
        raise DataError("no data files given; set data.train to one or more files")
    forced = get_format(format) if format else None
    records: list[Record] = []
    files: list[FileInfo] = []
    for path in paths:
        source = str(path)
        rows = list(read_rows(path))
        name = forced.name if forced else detect_format(rows, source)
        records += [to_record(row, name, source, line) for line, row in rows]
        files.append(FileInfo(path=source, format=name, rows=len(rows),
                              sha256=file_sha256(Path(path))))
    _check_one_kind(records)

    warnings = []
    source_fingerprint = dataset_fingerprint(records)
    duplicates = find_duplicates(records)
    if dedupe:
        records, _ = drop_duplicates(records)
        if duplicates:
            warnings.append(f"{len(duplicates)} duplicate examples dropped (data.dedupe=true)")
    elif duplicates:
        warnings.append(f"{len(duplicates)} duplicate examples, e.g. "
                        f"{describe_duplicate(duplicates[0])} "
                        "(use data.dedupe=true to drop them)")
    labels = {r.label for r in records if r.label is not None}
    if len(labels) == 1:
        warnings.append(f"every example has the same label {labels.pop()!r}; a classifier "
                        "needs at least two classes")
    return LoadResult(records=records, files=files, n_duplicates=len(duplicates),
                      warnings=warnings, source_fingerprint=source_fingerprint)


def _check_one_kind(records: list[Record]) -> None:
    # Chat, raw text and text+label train differently (masks, heads); one run does one of them.
    first: dict[str, Record] = {}
    for record in records:
        first.setdefault(record.kind, record)
    if len(first) > 1:
        (k1, r1), (k2, r2) = list(first.items())[:2]
        raise DataError(f"{r1.source} holds {_KIND_WORDS[k1]} examples but {r2.source} holds "
                        f"{_KIND_WORDS[k2]} examples; all files of a run must be one kind",
                        source=r2.source)


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes; for a dataset directory, of every file's path and bytes."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def dataset_fingerprint(records: list[Record]) -> str:
    """`sha256:...` of the examples' content in order; file names and paths do not count."""
    h = hashlib.sha256()
    for record in records:
        # Keys are JSON with newlines escaped, so "\n" separates them unambiguously.
        h.update(record.key().encode("utf-8") + b"\n")
    return "sha256:" + h.hexdigest()


def split_records(records: list[Record], fraction: float,
                  seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded `(train, val)` split, each in the original order.

    Copies of one example always land on the same side, so validation never scores the model
    on an example it trained on. With `fraction > 0` and at least two records, both sides get
    at least one record (when the data has at least two distinct examples).
    """
    if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0 or len(records) < 2:
        return list(records), []
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.key(), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = min(max(1, math.floor(len(records) * fraction + 0.5)), len(records) - 1)
    val: list[int] = []
    if len(order) == 1:
        val = order[0][-target:]  # all identical: leakage is moot, keep the sizes right
    else:
        for group in order[:-1]:  # the last group stays in train, so train is never empty
            if len(val) >= target:
                break
            val += group
    in_val = set(val)
    train = [r for i, r in enumerate(records) if i not in in_val]
    return train, [records[i] for i in sorted(in_val)]
