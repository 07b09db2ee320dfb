"""Cut a document's text into overlapping chunks, in characters or in the embedding model's
tokens. Each chunk is a span (start, end) of character offsets into the text, so
`text[start:end]` is the chunk exactly and its lineage is a position, not a copy."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ChunkSettings", "chunk_spans"]


@dataclass(frozen=True)
class ChunkSettings:
    size: int = 200
    """Chunk length: tokens of the embedding model (`unit=tokens`) or characters (`unit=chars`).
    The embedding model reads at most 256 tokens, so token chunks above that are cut there."""
    overlap: int = 40
    """How much consecutive chunks share, in the same unit: a sentence cut at one chunk's end is
    whole in the next."""
    unit: str = "tokens"

    def __post_init__(self):
        if self.unit not in ("tokens", "chars"):
            raise ConfigError(f"chunk unit {self.unit!r}: use tokens or chars")
        if self.size < 1:
            raise ConfigError(f"chunk size {self.size}: must be at least 1")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(f"chunk overlap {self.overlap}: must be at least 0 and below the size {self.size}")


def _char_spans(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of `size` characters; a window ends at the last paragraph, sentence or word break
    in its final fifth when there is one, and the next starts `overlap` characters before that
    end (moved forward to a word start)."""
    spans, start, n = [], 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            floor = start + max(1, size * 4 // 5)
            for sep in ("\n\n", ". ", "\n", " "):
                cut = text.rfind(sep, floor, end)
                if cut != -1:
                    end = cut + len(sep)
                    break
        spans.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        while 0 < nxt < end and not text[nxt - 1].isspace() and overlap:
            nxt += 1  # begin the overlap on a word boundary
        start = nxt
    # Whitespace-only tails and heads carry nothing to retrieve.
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _token_spans(text: str, size: int, overlap: int, tokenizer) -> list[tuple[int, int]]:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        truncation=False)["offset_mapping"]
    offsets = [o for o in offsets if o[1] > o[0]]
    spans, step = [], size - overlap
    for first in range(0, len(offsets), step):
        window = offsets[first:first + size]
        spans.append((window[0][0], window[-1][1]))
        if first + size >= len(offsets):
            break
    return spans


def chunk_spans(text: str, settings: ChunkSettings, tokenizer=None) -> list[tuple[int, int]]:
    """(start, end) character spans of the chunks of `text`, in order."""
    if settings.unit == "chars":
        return _char_spans(text, settings.size, settings.overlap)
    if tokenizer is None:
        raise ConfigError("token chunking needs the embedding model's tokenizer")
    return _token_spans(text, settings.size, settings.overlap, tokenizer)
