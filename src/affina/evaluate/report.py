"""Evaluate one model on held-out records, and lay several results side by side."""

from __future__ import annotations

import time

from ..data.packing import BatchCollator
from ..data.records import Record
from ..data.tokenize import prompt_and_reference, tokenize_records
from .fewshot import fewshot_example, fewshot_messages
from .generation import generate_texts
from .loss import evaluate_loss
from .metrics import score_examples, score_predictions

__all__ = ["evaluate_records", "classify_records", "compare_rows"]


def evaluate_records(model, tokenizer, records: list[Record], *, metrics: list[str],
                     max_length: int, max_new_tokens: int, batch_size: int,
                     train_on_prompt: bool = False, label: str = "model",
                     shots: list[Record] | None = None, stop_ids: list[int] | None = None) -> dict:
    """Validation loss/perplexity on the loss tokens, plus generation metrics where the records
    have a reference reply. With `shots`, those solved examples precede every prompt (few-shot)
    and loss is taken on the final reply only. Returns scores and the per-example predictions."""
    shots = shots or []
    if shots:
        examples = [fewshot_example(r, shots, tokenizer, max_length) for r in records if r.kind != "text"]
    else:
        examples, _ = tokenize_records(records, tokenizer, max_length, train_on_prompt)
    result: dict = {"label": label, "examples": len(records), "shots": len(shots)}
    if examples:
        collator = BatchCollator(tokenizer.pad_token_id)
        result.update(evaluate_loss(model, examples, collator, batch_size, progress=True))
    generative = [r for r in records if r.kind != "text"]
    if generative and metrics:
        prompts, references = [], []
        for r in generative:
            prompt, ref = prompt_and_reference(r, tokenizer)
            if shots:
                # The same conversation rendered with the shots in front, up to the final reply.
                messages = fewshot_messages(r, shots)
                prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                                       add_generation_prompt=True)
            prompts.append(prompt)
            references.append(ref)
        started, stats = time.perf_counter(), {}
        predictions = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, stop_ids=stop_ids, progress=True,
                                     desc=f"generating ({label})", stats=stats)
        seconds = time.perf_counter() - started
        new_tokens = stats.get("new_tokens", 0)
        result["generation"] = {"seconds": round(seconds, 3), "new_tokens": new_tokens,
                                "tokens_per_s": round(new_tokens / seconds, 2) if seconds > 0 else None}
        result["metrics"] = score_predictions(predictions, references, metrics)
        per_example = score_examples(predictions, references, metrics)
        result["predictions"] = [
            {"source": r.source, "line": r.line, "prompt": _input_text(r), "reference": ref,
             "prediction": pred, "scores": {name: s[i] for name, s in per_example.items()}}
            for i, (r, ref, pred) in enumerate(zip(generative, references, predictions))]
    return result


def classify_records(opened, records: list[Record], *, metrics: list[str], batch_size: int,
                     max_length: int = 512, label: str = "model") -> dict:
    """Scores of a classification run (a label head, no generation) on text+label records."""
    scored = [r for r in records if r.kind == "label"]
    predictions = opened.classify([r.text for r in scored], batch_size=batch_size, max_length=max_length)
    references = [r.label for r in scored]
    per_example = score_examples(predictions, references, metrics)
    return {"label": label, "examples": len(records), "shots": 0,
            "metrics": score_predictions(predictions, references, metrics),
            "predictions": [{"source": r.source, "line": r.line, "prompt": r.text, "reference": ref,
                             "prediction": pred, "scores": {n: s[i] for n, s in per_example.items()}}
                            for i, (r, ref, pred) in enumerate(zip(scored, references, predictions))]}


def _input_text(record: Record) -> str:
    """What the model was asked: the last user turn (or the text of a classification record)."""
    if record.messages:
        users = [m["content"] for m in record.messages if m["role"] == "user"]
        return users[-1] if users else ""
    return record.text or ""


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
    if any("generation" in r for r in results):
        rows.append(["generated tokens/s"] + [
            f"{r['generation']['tokens_per_s']:.1f}" if r.get("generation", {}).get("tokens_per_s")
            else "-" for r in results])
    return header, rows
