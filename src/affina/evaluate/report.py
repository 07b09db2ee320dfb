"""Evaluate one model on held-out records, and lay several results side by side."""

from __future__ import annotations

from ..data.packing import BatchCollator
from ..data.records import Record
from ..data.tokenize import prompt_and_reference, tokenize_records
from .generation import generate_texts
from .loss import evaluate_loss
from .metrics import score_predictions

__all__ = ["evaluate_records", "compare_rows"]


def evaluate_records(model, tokenizer, records: list[Record], *, metrics: list[str],
                     max_length: int, max_new_tokens: int, batch_size: int,
                     train_on_prompt: bool = False, label: str = "model") -> dict:
    """Validation loss/perplexity on the loss tokens, plus generation metrics where the records
    have a reference reply. Returns scores and the per-example predictions."""
    examples, _ = tokenize_records(records, tokenizer, max_length, train_on_prompt)
    result: dict = {"label": label, "examples": len(records)}
    if examples:
        collator = BatchCollator(tokenizer.pad_token_id)
        result.update(evaluate_loss(model, examples, collator, batch_size, progress=True))
    generative = [r for r in records if r.kind != "text"]
    if generative and metrics:
        pairs = [prompt_and_reference(r, tokenizer) for r in generative]
        prompts = [p for p, _ in pairs]
        references = [ref for _, ref in pairs]
        predictions = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, progress=True, desc=f"generating ({label})")
        result["metrics"] = score_predictions(predictions, references, metrics)
        result["predictions"] = [
            {"source": r.source, "line": r.line, "prompt": r.messages[-2]["content"] if r.messages and len(r.messages) > 1 else r.text,
             "reference": ref, "prediction": pred}
            for r, ref, pred in zip(generative, references, predictions)]
    return result


def compare_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """A table: one row per measure, one column per evaluated model (e.g. before, after)."""
    header = ["measure"] + [r["label"] for r in results]
    rows = []
    for key, fmt in (("loss", "{:.4f}"), ("perplexity", "{:.2f}")):
        if any(key in r for r in results):
            rows.append([f"validation {key}"] + [fmt.format(r[key]) if key in r else "-" for r in results])
    names = []
    for r in results:
        for name in r.get("metrics", {}):
            if name not in names:
                names.append(name)
    for name in names:
        rows.append([name] + [f"{r['metrics'][name]:.3f}" if name in r.get("metrics", {}) else "-"
                              for r in results])
    return header, rows
