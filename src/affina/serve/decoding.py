"""Token ids → answer text: stop strings, incremental decoding for streams, generate() hooks."""

from __future__ import annotations

import threading
from typing import Callable

__all__ = ["finish_text", "StreamDecoder", "TokenStreamer", "RowStops"]


def finish_text(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string (OpenAI leaves the stop out); True if one hit."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StreamDecoder:
    """Token ids in, text deltas out, never emitting text that a stop string may yet swallow."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.emitted = 0
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.stopped = False

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def feed(self, ids: list[int]) -> str:
        if self.stopped:
            return ""
        self.ids.extend(ids)
        text = self.text()
        if text.endswith("\ufffd"):
            return ""  # half of a multi-byte character: wait for the rest
        text, self.stopped = finish_text(text, self.stops)
        end = len(text) if self.stopped else max(self.emitted, len(text) - self.holdback)
        delta, self.emitted = text[self.emitted:end], end
        return delta

    def flush(self) -> str:
        text, _ = finish_text(self.text(), self.stops)
        delta, self.emitted = text[self.emitted:], len(text)
        return delta


class TokenStreamer:
    """transformers' streamer protocol: the first put() is the prompt, then one token per step."""

    def __init__(self, on_ids: Callable[[list[int]], None]):
        self.on_ids, self.prompt_seen = on_ids, False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_ids(value.reshape(-1).tolist())

    def end(self):
        pass


class RowStops:
    """A StoppingCriteria over a batch: row i is done once its client has gone (`cancelled[i]`),
    its wall-clock `deadlines[i]` (time.monotonic) has passed, or its generated text contains
    one of `stops`.

    Stop strings are matched on text decoded incrementally, row by row, rather than with
    transformers' `stop_strings`: that builds token-level tables for every stop string (cached
    per string), which cost gigabytes and tens of seconds for one long string. Each step decodes
    only the few tokens since the last whole character, as vLLM's incremental detokeniser does.
    """

    def __init__(self, prompt_width: int, cancelled: list[threading.Event], deadlines: list[float | None],
                 stops: tuple[str, ...] = (), tokenizer=None):
        self.prompt_width, self.cancelled, self.deadlines = prompt_width, cancelled, deadlines
        self.stops, self.tokenizer = tuple(s for s in stops if s), tokenizer
        self.longest = max((len(s) for s in self.stops), default=0)
        rows = len(cancelled)
        self.timed_out = [False] * rows
        self.texts = [""] * rows
        self.hit = [False] * rows
        # Generated-token offsets: [prefix, read) was decoded last step, as context for the next
        # token's text (sentencepiece spaces, multi-byte characters split over byte tokens).
        self.prefix, self.read = [0] * rows, [0] * rows

    def __call__(self, input_ids, scores, **kwargs):
        import time

        import torch

        now = time.monotonic()
        done = []
        for row, event in enumerate(self.cancelled):
            deadline = self.deadlines[row]
            late = deadline is not None and now >= deadline
            self.timed_out[row] = self.timed_out[row] or late
            self.hit[row] = self.hit[row] or self._hit_stop(row, input_ids[row])
            done.append(event.is_set() or late or self.hit[row])
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _hit_stop(self, row: int, ids) -> bool:
        if not self.stops or self.hit[row]:
            return False
        new = ids[self.prompt_width:].tolist()
        prefix, read = self.prefix[row], self.read[row]
        before = self.tokenizer.decode(new[prefix:read], skip_special_tokens=True)
        after = self.tokenizer.decode(new[prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False  # nothing new, or half a character: wait for the rest
        piece = after[len(before):]
        self.prefix[row], self.read[row] = read, len(new)
        # Only the new text and the longest stop's length before it can hold a new match.
        text = self.texts[row] = (self.texts[row] + piece)[-(self.longest + len(piece)):]
        return any(s in text for s in self.stops)
