"""`data.mix`: several training files drawn to chosen proportions, by examples, with the seed.

Each file gets a quota of `total x weight / sum(weights)` examples (largest remainders, so the
quotas add up to `total` exactly); `total` is `data.mix_size`, else the files' total rows. A
quota up to the file's size is drawn without replacement; a larger one takes every example of
the file as often as it fits whole and draws the rest without replacement, so an up-weighted
small file is repeated evenly rather than sampled with replacement (which would leave some of its
examples out by chance). The mix is drawn before the validation split, whose groups keep copies
of one example on the same side.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from ..errors import ConfigError, DataError
from .loading import LoadResult, load_records
from .records import Record

__all__ = ["quotas", "draw", "load_mix"]


def quotas(total: int, weights: list[float]) -> list[int]:
    """Integer shares of `total` proportional to `weights` that add up to `total`."""
    exact = [total * w / sum(weights) for w in weights]
    out = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (out[i] - exact[i], i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def draw(records: list[Record], n: int, rng: random.Random) -> list[Record]:
    whole, rest = divmod(n, len(records))
    return records * whole + rng.sample(records, rest)


def load_mix(entries: list[tuple[str, float]], *, size: int | None, seed: int,
             format: str | None = None, dedupe: bool = False) -> tuple[LoadResult, list[dict]]:
    """Load the mix's files (one kind across them, as for data.train) and draw the mix.

    Returns the load result with `records` replaced by the drawn, shuffled mix, and one report
    per file: path, weight, rows, drawn.
    """
    paths = [path for path, _ in entries]
    seen = {str(Path(p).resolve()) for p in paths}
    if len(seen) != len(paths):
        raise ConfigError("data.mix names a file twice; give each file once with its total weight")
    loaded = load_records(paths, format=format, dedupe=dedupe)
    groups: dict[str, list[Record]] = {str(p): [] for p in paths}
    for record in loaded.records:
        groups[record.source].append(record)
    for path, group in groups.items():
        if not group:
            raise DataError("no examples left in this data.mix file after dropping duplicates",
                            source=path)
    weights = [weight for _, weight in entries]
    total = size or sum(len(g) for g in groups.values())
    rng = random.Random(seed)
    mixed, report = [], []
    for (path, weight), n in zip(entries, quotas(total, weights)):
        group = groups[str(path)]
        mixed += draw(group, n, rng)
        report.append({"path": str(Path(path).resolve()), "weight": weight, "rows": len(group),
                       "drawn": n})
        if n > len(group):
            loaded.warnings.append(f"data.mix repeats {path}: {n} examples drawn from {len(group)}")
    rng.shuffle(mixed)
    loaded.records = mixed
    return loaded, report
