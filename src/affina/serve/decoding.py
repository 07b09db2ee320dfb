"""Token ids → answer text: stop strings, incremental decoding for streams, generate() hooks."""

from __future__ import annotations

import threading

# The text side lives one layer down, shared with `affina chat`'s streamed replies.
from ..evaluate.streaming import StreamDecoder, TokenStreamer, finish_text

__all__ = ["finish_text", "StreamDecoder", "TokenStreamer", "RowStops"]


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
