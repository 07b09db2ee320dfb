"""The one normalised training example every data format turns into."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Record", "Message"]

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class Record:
    """One example, remembering where it came from for error messages and lineage.

    Exactly one of the shapes is filled:
    - `messages`: a chat (generative tasks: alpaca, chat, sharegpt, prompt/completion);
    - `text` alone: raw domain text for continued pretraining (loss on every token);
    - `text` + `label`: classification;
    - `prompt` + `chosen`/`rejected`: a preference (DPO/ORPO: both replies; KTO's unpaired
      rows fill one of them: `chosen` for a desirable reply, `rejected` for an undesirable one).
    """

    source: str
    line: int
    messages: list[Message] | None = None
    text: str | None = None
    label: str | None = None
    prompt: list[Message] | None = None
    chosen: str | None = None
    rejected: str | None = None
    format: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        """A preference with both replies (what DPO, ORPO and the preference evaluation use)."""
        return self.prompt is not None and self.chosen is not None and self.rejected is not None

    @property
    def kind(self) -> str:
        if self.prompt is not None:
            return "preference"
        if self.messages is not None:
            return "chat"
        return "label" if self.label is not None else "text"

    def key(self) -> str:
        """A canonical string of the content, used for duplicate detection and fingerprints."""
        import json

        if self.messages is not None:
            return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)
        if self.prompt is not None:
            return json.dumps({"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected},
                              sort_keys=True, ensure_ascii=False)
        return json.dumps({"text": self.text, "label": self.label}, sort_keys=True, ensure_ascii=False)
