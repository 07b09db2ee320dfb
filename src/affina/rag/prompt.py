"""Put retrieved chunks into a chat: one system message listing numbered sources, rendered by
the model's own chat template. A template that refuses a system role (some insist on
user/assistant turns only) gets the same sources at the top of the last user message."""

from __future__ import annotations

__all__ = ["sources_block", "with_sources", "SOURCES_INSTRUCTION"]

SOURCES_INSTRUCTION = ("Answer the question using the numbered sources below. Cite a source by "
                       "its number in brackets, like [1]. If the sources do not contain the "
                       "answer, say so.")


def sources_block(hits) -> str:
    """The numbered sources: `[n] title (file)` and the chunk text."""
    parts = []
    for n, hit in enumerate(hits, 1):
        c = hit.chunk
        where = c.path.rsplit("/", 1)[-1] + (f":{c.line}" if c.line else "")
        head = f"[{n}] {c.title} ({where})" if c.title else f"[{n}] {where}"
        parts.append(f"{head}\n{c.text.strip()}")
    return "\n\n".join(parts)


def _renders(tokenizer, messages) -> bool:
    from jinja2 import TemplateError

    try:
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return True
    except (TemplateError, ValueError):
        return False


def with_sources(messages: list[dict], hits, tokenizer=None) -> list[dict]:
    """`messages` with the sources added: merged into the first system message when there is
    one, else a new system message first; inside the last user message when `tokenizer`'s chat
    template cannot render a system message."""
    if not hits:
        return list(messages)
    block = f"{SOURCES_INSTRUCTION}\n\nSources:\n\n{sources_block(hits)}"
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block
    else:
        out.insert(0, {"role": "system", "content": block})
    if tokenizer is None or _renders(tokenizer, out):
        return out
    fallback = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(fallback) if m["role"] == "user"), default=None)
    if last_user is None:
        return out  # nothing to attach to: let the template's own error speak
    fallback[last_user]["content"] = f"{block}\n\nQuestion: {fallback[last_user]['content']}"
    return fallback
