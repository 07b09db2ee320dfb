"""Records → token ids with loss masks, through the tokenizer's chat template.

Masking works on characters, not on separately tokenised pieces: the whole conversation is
rendered once, the character spans of the assistant replies are found by rendering prefixes of
the conversation, and each token is labelled by where its first character falls. Tokenising the
pieces separately would give different tokens at the seams for BPE vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .records import Record

__all__ = [
    "IGNORE_INDEX", "FALLBACK_CHAT_TEMPLATE", "Example", "TokenizeStats", "ensure_chat_template",
    "render_chat", "stop_token_ids", "template_sha256", "tokenize_record", "tokenize_records", "prompt_and_reference",
]

IGNORE_INDEX = -100

# ChatML, used only when a tokenizer ships no chat template of its own. Documented in docs/data.md.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str = ""
    line: int = 0
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn from after truncation
    lengths: list[int] = field(default_factory=list)
    loss_tokens: int = 0

    def percentiles(self) -> dict[str, int]:
        if not self.lengths:
            return {}
        xs = sorted(self.lengths)

        def pct(p: float) -> int:
            return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

        return {"min": xs[0], "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": xs[-1]}

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated, "dropped": self.dropped,
                "tokens": sum(self.lengths), "loss_tokens": self.loss_tokens,
                "length_percentiles": self.percentiles()}


def ensure_chat_template(tokenizer) -> bool:
    """Give a template-less tokenizer the ChatML fallback. Returns True when the fallback was used."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def template_sha256(tokenizer) -> str | None:
    """sha256 of the chat template text: which template a model was trained and is served with."""
    import hashlib

    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return None
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The one stop rule for generation everywhere (evaluation, `generate`, `chat`, the server):
    the model's own end-of-sequence ids (generation config and tokenizer) plus the token its chat
    template writes right after an assistant reply (its end-of-turn marker)."""
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    ids.add(tokenizer.eos_token_id)
    turn_end = _turn_end_token(tokenizer)
    if turn_end is not None:
        ids.add(turn_end)
    return sorted(i for i in ids if isinstance(i, int))


def _turn_end_token(tokenizer) -> int | None:
    """The special token that follows an assistant reply in the chat template, if there is one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    mark = "\u2063END\u2063"
    try:
        text = _apply(tokenizer, [{"role": "user", "content": "a"},
                                  {"role": "assistant", "content": mark}], False)
    except Exception:  # a template that refuses this probe has no marker we can find
        return None
    after = text.split(mark, 1)[-1] if mark in text else ""
    if not after.strip():
        return None
    ids = tokenizer(after.lstrip(" "), add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return next((i for i in ids if i in special), None)


def _apply(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def record_messages(record: Record) -> list[dict]:
    """The conversation a chat, text+label or preference record stands for (a preference: its
    prompt and the chosen reply, or the one reply of an unpaired row; shown by `data inspect`)."""
    if record.messages is not None:
        return record.messages
    if record.prompt is not None:
        reply = record.chosen if record.chosen is not None else record.rejected
        return record.prompt + [{"role": "assistant", "content": reply}]
    if record.label is not None:
        return [{"role": "user", "content": record.text}, {"role": "assistant", "content": record.label}]
    raise ValueError("raw text records have no conversation")


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; return the text and the [start, end) character spans of assistant
    replies (each span includes the template's end-of-turn marker, so the model learns to stop)."""
    full = _apply(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply(tokenizer, messages[:i], True) if i else _generation_prefix(tokenizer)
        upto = _apply(tokenizer, messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ConfigError(
                "the tokenizer's chat template renders earlier turns differently as the conversation "
                "grows, so assistant replies cannot be located; set data.train_on_prompt=true or "
                "give the tokenizer a prefix-stable template")
        spans.append((len(before), len(upto)))
    return full, spans


def _generation_prefix(tokenizer) -> str:
    return _apply(tokenizer, [], True)


def tokenize_record(record: Record, tokenizer, max_length: int,
                    train_on_prompt: bool = False) -> Example:
    """One record → input ids and labels (IGNORE_INDEX where no loss), truncated to max_length."""
    if record.kind == "text":
        ids = tokenizer(record.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = render_chat(tokenizer, record_messages(record))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if train_on_prompt:
            labels = list(ids)
        else:
            labels = [tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
                      for tok, (start, _end) in zip(ids, enc["offset_mapping"])]
    truncated = len(ids) > max_length
    return Example(ids[:max_length], labels[:max_length], record.source, record.line, truncated)


def tokenize_records(records: list[Record], tokenizer, max_length: int,
                     train_on_prompt: bool = False, progress: bool = False
                     ) -> tuple[list[Example], TokenizeStats]:
    """Tokenise many records; examples left with no loss tokens after truncation are dropped."""
    from tqdm.auto import tqdm

    from ..ui import progress_bars

    stats = TokenizeStats()
    out = []
    for record in tqdm(records, desc="tokenizing", disable=not (progress and progress_bars()),
                       leave=False):
        ex = tokenize_record(record, tokenizer, max_length, train_on_prompt)
        stats.truncated += ex.truncated
        n_loss = sum(label != IGNORE_INDEX for label in ex.labels[1:])
        if n_loss == 0:
            stats.dropped += 1
            continue
        stats.examples += 1
        stats.loss_tokens += n_loss
        stats.lengths.append(len(ex))
        out.append(ex)
    return out, stats


def prompt_and_reference(record: Record, tokenizer) -> tuple[str, str]:
    """For generation-based evaluation: the conversation up to the last assistant reply, rendered
    with the generation prompt, and that reply as the reference."""
    messages = record_messages(record)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return _apply(tokenizer, messages[:last], True), messages[last]["content"]
