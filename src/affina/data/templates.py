"""Which chat template a run uses: the tokenizer's, or `data.chat_template`, with `data.system_prompt`.

The chosen template is set on the tokenizer before tokenising, and that tokenizer is saved with
the artifact, so training, evaluation, `generate`, `chat` and the server all render the same
text. The system prompt is therefore written into the template itself (a prefix that puts a
system message first when a conversation has none) rather than into the data: a prompt added
only to the training examples would be missing at serving time.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import looks_like_template
from ..errors import ConfigError
from .tokenize import FALLBACK_CHAT_TEMPLATE

__all__ = ["BUILTIN_TEMPLATES", "NO_SYSTEM_PROMPT", "looks_like_template", "template_text",
           "with_system_prompt", "configure_chat_template"]

# Keys must match config.BUILTIN_TEMPLATES, which validates the names (core config cannot import data).
BUILTIN_TEMPLATES = {"chatml": FALLBACK_CHAT_TEMPLATE}
NO_SYSTEM_PROMPT = "none"


def template_text(value: str) -> tuple[str, str]:
    """(template, where it came from) for a `data.chat_template` value."""
    if looks_like_template(value):
        return value, "config"
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value], f"builtin {value}"
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.chat_template: {value} is not a Jinja template, a .jinja file or "
                          "a builtin name (" + ", ".join(BUILTIN_TEMPLATES) + ")")
    return path.read_text(encoding="utf-8"), f"file {path.name}"


def with_system_prompt(template: str, system_prompt: str) -> str:
    """`template` that first puts a system message holding `system_prompt` ('' for `none`) in
    front of any conversation that does not start with one.

    Templates such as SmolLM2's inject their own default system prompt ("You are a helpful AI
    assistant named SmolLM...") exactly when the first message is not a system message; an
    explicit (empty) one is therefore the portable way to switch that default off. The prompt is
    embedded as a Jinja string literal (JSON escaping is valid there), so quotes, braces and
    newlines in it are kept as text.
    """
    literal = json.dumps(system_prompt, ensure_ascii=False)
    prefix = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
              "{%- set messages = [{'role': 'system', 'content': " + literal + "}] + messages -%}"
              "{%- endif -%}")
    return prefix + template


def configure_chat_template(tokenizer, chat_template: str | None,
                            system_prompt: str | None) -> str:
    """Set the run's chat template on `tokenizer`; returns how it was chosen, for the run record.

    Without a template of its own and without `data.chat_template`, a tokenizer gets ChatML.
    """
    if chat_template:
        text, origin = template_text(chat_template)
    elif getattr(tokenizer, "chat_template", None):
        text, origin = tokenizer.chat_template, "tokenizer"
    else:
        text, origin = FALLBACK_CHAT_TEMPLATE, "fallback (ChatML)"
    if system_prompt is not None:
        off = system_prompt.strip().lower() == NO_SYSTEM_PROMPT
        text = with_system_prompt(text, "" if off else system_prompt)
        origin += ", no default system prompt" if off else ", system prompt from data.system_prompt"
    tokenizer.chat_template = text
    return origin
