"""Find the last user message inside an already-rendered chat prompt.

`generate`, `chat`, evaluation and serving all hand a model a prompt rendered with the
tokenizer's chat template. Methods that need the user's words themselves (few-shot example
selection, a classification head) locate them by rendering probe conversations with the same
template: the text around a marker shows what a user turn's header and footer look like.
"""

from __future__ import annotations

__all__ = ["ChatLayout"]

_MARK = "\u2063QUERY\u2063"


class ChatLayout:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        one = self._render([{"role": "user", "content": _MARK}])
        head, self.footer = one.split(_MARK)
        # The probe's head is [default system turn] + user header. After an assistant turn the
        # same header follows different text, so the common suffix of the two heads is the
        # header (with the previous turn's end marker; `turns` cuts demonstrations the same way).
        two = self._render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                            {"role": "user", "content": _MARK}])
        two_head = two.split(_MARK)[0]
        n = 0
        while n < min(len(head), len(two_head)) and head[-1 - n] == two_head[-1 - n]:
            n += 1
        self.header = head[len(head) - n:]

    def _render(self, messages: list[dict], generation: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def split(self, prompt: str) -> tuple[str, str, str]:
        """(before, user text, after) around the last user message of `prompt`; the whole prompt
        as user text when it does not follow the template (a raw completion prompt)."""
        at = prompt.rfind(self.header)
        if at < 0:
            return "", prompt, ""
        body_start = at + len(self.header)
        end = prompt.rfind(self.footer) if prompt.endswith(self.footer) else len(prompt)
        end = max(end, body_start)
        return prompt[:at], prompt[body_start:end], prompt[end:]

    def turns(self, pairs: list[tuple[str, str]]) -> str:
        """The rendered text of user/assistant demonstration turns, ready to insert before a
        user header: the two-turn render minus the one-turn render."""
        if not pairs:
            return ""
        messages = [m for q, a in pairs for m in ({"role": "user", "content": q},
                                                 {"role": "assistant", "content": a})]
        with_demos = self._render(messages + [{"role": "user", "content": _MARK}]).split(_MARK)[0]
        plain = self._render([{"role": "user", "content": _MARK}]).split(_MARK)[0]
        prefix = plain[: len(plain) - len(self.header)]
        return with_demos[len(prefix): len(with_demos) - len(self.header)]
