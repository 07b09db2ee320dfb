"""A frozen (or LoRA-adapted) decoder backbone with a new linear classification head."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SequenceClassifier", "last_token_index", "classification_scores"]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask → (B,) index of each row's last real token, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * (positions + 1)).argmax(dim=1)


class SequenceClassifier(nn.Module):
    """Decoder hidden state of the last real token → linear head (no bias, the same layout as
    transformers' *ForSequenceClassification `score`, so the merged model loads there)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, labels: list[str]):
        super().__init__()
        self.backbone = backbone
        self.labels = list(labels)
        ref = next(backbone.parameters())
        self.score = nn.Linear(hidden_size, len(labels), bias=False).to(ref.device, ref.dtype)
        self.tokenizer = None  # set when opened for inference: `generate` answers with label text
        self.layout = None

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]  # (B, H)
        logits = self.score(pooled)  # (B, n_labels)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def predict(self, input_ids, attention_mask=None) -> list[str]:
        logits = self.forward(input_ids, attention_mask).logits
        return [self.labels[i] for i in logits.argmax(-1).tolist()]

    @torch.no_grad()
    def classify(self, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 512) -> list[str]:
        device = next(self.parameters()).device
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length).to(device)
            out += self.predict(enc["input_ids"], enc["attention_mask"])
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **_):
        """Answer a chat prompt with its label's text, so `affina generate` and generation-based
        evaluation work on a classifier: prompt tokens + label tokens, like a causal LM."""
        if self.tokenizer is None:
            raise RuntimeError("SequenceClassifier.generate needs .tokenizer (set by open_model)")
        tok = self.tokenizer
        rows = []
        for i in range(input_ids.shape[0]):
            ids = input_ids[i] if attention_mask is None else input_ids[i][attention_mask[i].bool()]
            _, text, _ = self.layout.split(tok.decode(ids, skip_special_tokens=False))
            rows.append(text)
        answers = self.classify(tok, rows)
        encoded = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
        width = max(len(e) for e in encoded)
        pad = tok.pad_token_id
        new = torch.tensor([e + [pad] * (width - len(e)) for e in encoded], device=input_ids.device)
        return torch.cat([input_ids, new], dim=1)


def classification_scores(predicted: list[int], gold: list[int], n_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 with the definition `affina.evaluate.metrics.macro_f1` uses: the
    unweighted mean of each reference (gold) class's F1; a prediction of a class absent from the
    gold labels counts only as a miss of its true class."""
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / max(1, len(gold))
    f1s = []
    for c in sorted(set(gold)):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}
