"""Token ids → reply text as it is generated: stop strings, incremental decoding, and the
transformers streamer hook. Used by `affina chat` (evaluate/generation.py) and the server's
streamed answers (serve/engine.py), so both show a reply the same way."""

from __future__ import annotations

from typing import Callable

__all__ = ["finish_text", "StreamDecoder", "TokenStreamer", "text_streamer"]


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

    def __init__(self, on_ids: Callable[[list[int]], None], on_end: Callable[[], None] | None = None):
        self.on_ids, self.on_end, self.prompt_seen = on_ids, on_end, False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_ids(value.reshape(-1).tolist())

    def end(self):
        if self.on_end is not None:
            self.on_end()


def text_streamer(tokenizer, on_text: Callable[[str], None]) -> TokenStreamer:
    """A streamer for `generate` that hands `on_text` each new piece of the decoded reply, the
    rest when generation ends."""
    decoder = StreamDecoder(tokenizer, ())

    def send(piece: str) -> None:
        if piece:
            on_text(piece)

    return TokenStreamer(lambda ids: send(decoder.feed(ids)), lambda: send(decoder.flush()))
