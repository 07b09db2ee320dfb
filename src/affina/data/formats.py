"""Data formats: each turns one row (a dict) into a `Record`, checking it on the way.

A format is its name, the keys that identify it, and one function `row -> Record`. Adding a
format is one function and one `register_format` call. Every problem a user can cause is a
DataError naming the file, the row and the field by dotted path (`messages[2].content`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from affina.data.records import Record
from affina.data.sources import data_error
from affina.errors import DataError

__all__ = ["Format", "FORMATS", "register_format", "get_format", "match_format",
           "detect_format", "to_record"]

CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system"}


@dataclass(frozen=True)
class Format:
    """One data format. `requires` identifies it; `optional` is listed in help only."""

    name: str
    requires: tuple[str, ...]
    convert: Callable[[dict, "_Row"], Record]
    optional: tuple[str, ...] = ()

    def describe(self) -> str:
        keys = ", ".join(self.requires) + "".join(f", [{k}]" for k in self.optional)
        return f"{self.name} ({keys})"


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    """The registered format called `name`; DataError listing the choices otherwise."""
    if name not in FORMATS:
        raise DataError(f"unknown data format '{name}'; choose one of: " + ", ".join(FORMATS))
    return FORMATS[name]


def match_format(row: dict) -> str | None:
    """The format whose required keys the row has; the most specific wins (text+label > text)."""
    best: Format | None = None
    for fmt in FORMATS.values():
        if all(k in row for k in fmt.requires):
            if best is None or len(fmt.requires) > len(best.requires):
                best = fmt
    return best.name if best else None


def _formats_help() -> str:
    return "; ".join(f.describe() for f in FORMATS.values())


def detect_format(rows: Iterable[tuple[int, dict]], source: str) -> str:
    """The one format of `(position, row)` pairs read from `source`.

    DataError if a row matches no format (naming its keys and the formats' keys), or if the
    format changes part-way (naming the row where it changes): one file holds one format.
    """
    first: tuple[int, str] | None = None
    for line, row in rows:
        name = match_format(row)
        if name is None:
            _raise_missing_field(row, first[1] if first else None, source, line)
            raise data_error(f"row matches no data format; keys seen: {sorted(row)}. "
                             f"Formats and their keys: {_formats_help()}", source, line)
        if first is None:
            first = (line, name)
        elif name != first[1]:
            raise data_error(f"format changes from '{first[1]}' (first row) to '{name}' here; "
                             "a file must hold one format: split it into one file per format",
                             source, line)
    if first is None:
        raise DataError("no rows to detect the format from", source=source)
    return first[1]


def _raise_missing_field(row: dict, current: str | None, source: str, line: int) -> None:
    """A row that almost matches a format (the file's format so far, or one whose required keys
    it mostly has) is missing a field: name that field rather than list every format."""
    candidates = [FORMATS[current]] if current else [
        f for f in FORMATS.values() if len(f.requires) > 2 and sum(k in row for k in f.requires) >= 2]
    for fmt in candidates:
        missing = [k for k in fmt.requires if k not in row]
        if missing:
            raise data_error(f"missing for format '{fmt.name}' (keys seen: {sorted(row)})",
                             source, line, missing[0])


def to_record(row: dict, fmt: str | Format, source: str, line: int) -> Record:
    """Check `row` against `fmt` and turn it into a Record with `format` set to its name."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    at = _Row(row, source, line, fmt.name)
    for key in fmt.requires:
        if key not in row:
            at.missing(key)
    record = fmt.convert(row, at)
    record.format = fmt.name
    # Extra keys (ids, tags) ride along for lineage; they never enter the content key.
    record.meta = {k: v for k, v in row.items() if k not in fmt.requires + fmt.optional}
    return record


class _Row:
    """Where a row came from, so each check can raise a fully placed DataError in one call."""

    def __init__(self, row: dict, source: str, line: int, fmt: str):
        self.row, self.source, self.line, self.fmt = row, source, line, fmt

    def fail(self, field: str | None, message: str) -> DataError:
        return data_error(message, self.source, self.line, field)

    def missing(self, field: str) -> None:
        hint = ""
        other = match_format(self.row)
        if other is not None and other != self.fmt:
            hint = f"; this row looks like '{other}' format (one file must hold one format)"
        raise self.fail(field, f"missing for format '{self.fmt}'{hint}")

    def text(self, value: object, field: str, *, required: bool = True) -> str | None:
        """A string field; empty or whitespace-only is an error when required, else None."""
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise self.fail(field, "is empty; every example needs it")
            return None
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, got {type(value).__name__}")
        return value

    def items(self, value: object, field: str) -> list[dict]:
        """A non-empty list of objects (the turns of a conversation)."""
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list of turns, got {type(value).__name__}")
        if not value:
            raise self.fail(field, "is an empty list; a conversation needs turns")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{field}[{i}]",
                                f"must be an object, got {type(item).__name__}")
        return value

    def record(self, **content) -> Record:
        return Record(source=self.source, line=self.line, **content)


def _needs_assistant(messages: list[dict], at: _Row, field: str) -> list[dict]:
    # Training learns from assistant turns only; without one the example teaches nothing.
    if not any(m["role"] == "assistant" for m in messages):
        raise at.fail(field, "has no assistant turn; an example needs at least one reply to "
                             "learn from")
    return messages


def _alpaca(row: dict, at: _Row) -> Record:
    instruction = at.text(row["instruction"], "instruction")
    extra = at.text(row.get("input"), "input", required=False)
    system = at.text(row.get("system"), "system", required=False)
    output = at.text(row["output"], "output")
    messages = [{"role": "system", "content": system}] if system else []
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return at.record(messages=messages)


def _chat(row: dict, at: _Row) -> Record:
    messages = []
    for i, turn in enumerate(at.items(row["messages"], "messages")):
        role = turn.get("role")
        if role not in CHAT_ROLES:
            raise at.fail(f"messages[{i}].role",
                          f"is {role!r}; use one of: " + ", ".join(CHAT_ROLES))
        if "content" not in turn:
            raise at.fail(f"messages[{i}].content", "missing")
        content = at.text(turn["content"], f"messages[{i}].content")
        messages.append({"role": role, "content": content})
    return at.record(messages=_needs_assistant(messages, at, "messages"))


def _sharegpt(row: dict, at: _Row) -> Record:
    messages = []
    for i, turn in enumerate(at.items(row["conversations"], "conversations")):
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise at.fail(f"conversations[{i}].from",
                          f"is {speaker!r}; use one of: " + ", ".join(SHAREGPT_ROLES))
        if "value" not in turn:
            raise at.fail(f"conversations[{i}].value", "missing")
        content = at.text(turn["value"], f"conversations[{i}].value")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": content})
    return at.record(messages=_needs_assistant(messages, at, "conversations"))


def _prompt_completion(row: dict, at: _Row) -> Record:
    # Kept verbatim: a completion's leading space is often part of what the model must learn.
    prompt = at.text(row["prompt"], "prompt")
    completion = at.text(row["completion"], "completion")
    return at.record(messages=[{"role": "user", "content": prompt},
                               {"role": "assistant", "content": completion}])


def _text(row: dict, at: _Row) -> Record:
    return at.record(text=at.text(row["text"], "text"))


def _text_label(row: dict, at: _Row) -> Record:
    text = at.text(row["text"], "text")
    label = row["label"]
    if label is None or (isinstance(label, str) and not label.strip()):
        raise at.fail("label", "is empty; every example needs a label")
    # Labels are class names; numbers are accepted and kept as their string form.
    if not isinstance(label, (str, int, float)):
        raise at.fail("label", f"must be a string or number, got {type(label).__name__}")
    return at.record(text=text, label=str(label))


def _turns(at: _Row, value: object, field: str) -> list[dict]:
    """Chat messages given as a list of {role, content} objects, each checked."""
    messages = []
    for i, turn in enumerate(at.items(value, field)):
        role = turn.get("role")
        if role not in CHAT_ROLES:
            raise at.fail(f"{field}[{i}].role", f"is {role!r}; use one of: " + ", ".join(CHAT_ROLES))
        if "content" not in turn:
            raise at.fail(f"{field}[{i}].content", "missing")
        messages.append({"role": role, "content": at.text(turn["content"], f"{field}[{i}].content")})
    return messages


def _preference_prompt(row: dict, at: _Row) -> list[dict]:
    """A preference prompt: plain text (one user turn) or the conversation up to the reply."""
    value = row["prompt"]
    if isinstance(value, list):
        messages = _turns(at, value, "prompt")
        if messages[-1]["role"] == "assistant":
            raise at.fail("prompt", "ends with an assistant turn; the prompt is what precedes the reply")
        return messages
    return [{"role": "user", "content": at.text(value, "prompt")}]


def _reply(row: dict, at: _Row, field: str) -> str:
    """A reply: plain text, or (TRL's conversational form) a list holding one assistant turn."""
    value = row[field]
    if isinstance(value, list):
        messages = _turns(at, value, field)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise at.fail(field, "must be one assistant turn, e.g. [{\"role\": \"assistant\", "
                                 "\"content\": \"...\"}]")
        return messages[0]["content"]
    return at.text(value, field)


def _preference(row: dict, at: _Row) -> Record:
    prompt = _preference_prompt(row, at)
    chosen, rejected = _reply(row, at, "chosen"), _reply(row, at, "rejected")
    if chosen == rejected:
        raise at.fail("rejected", "is the same as chosen; a pair must differ to teach a preference")
    return at.record(prompt=prompt, chosen=chosen, rejected=rejected)


def _kto(row: dict, at: _Row) -> Record:
    # Unpaired (KTO): one reply, labelled desirable (true) or undesirable (false). A string such
    # as "false" is refused rather than read as truthy.
    prompt = _preference_prompt(row, at)
    completion = _reply(row, at, "completion")
    if not isinstance(row["label"], bool):
        raise at.fail("label", f"must be true or false (desirable or not), got {row['label']!r}")
    if row["label"]:
        return at.record(prompt=prompt, chosen=completion)
    return at.record(prompt=prompt, rejected=completion)


# Registration order is the order shown in help and the tie-break in `match_format`.
register_format(Format("alpaca", ("instruction", "output"), _alpaca, ("input", "system")))
register_format(Format("chat", ("messages",), _chat))
register_format(Format("sharegpt", ("conversations",), _sharegpt))
register_format(Format("prompt_completion", ("prompt", "completion"), _prompt_completion))
register_format(Format("text", ("text",), _text))
register_format(Format("text_label", ("text", "label"), _text_label))
register_format(Format("preference", ("prompt", "chosen", "rejected"), _preference))
register_format(Format("kto", ("prompt", "completion", "label"), _kto))
