"""`affina data inspect`: what a data set looks like to the model, before any training."""

from __future__ import annotations

from ..ui import print_table, warn
from .checks import find_duplicates
from .loading import dataset_fingerprint, load_records
from .tokenize import IGNORE_INDEX, ensure_chat_template, tokenize_record, tokenize_records

__all__ = ["inspect_data", "render_masked"]

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"


def render_masked(example, tokenizer) -> str:
    """The example's text with every no-loss stretch wrapped in ⟦ ⟧."""
    parts, current, masked = [], [], None
    for tok, label in zip(example.input_ids, example.labels):
        is_masked = label == IGNORE_INDEX
        if masked is not None and is_masked != masked:
            parts.append((masked, tokenizer.decode(current)))
            current = []
        current.append(tok)
        masked = is_masked
    if current:
        parts.append((masked, tokenizer.decode(current)))
    return "".join(f"{MASK_OPEN}{text}{MASK_CLOSE}" if m else text for m, text in parts)


def _load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    from ..models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def inspect_data(files: list[str], *, format: str | None = None, model_spec: str = "default",
                 max_length: int = 512, train_on_prompt: bool = False) -> dict:
    loaded = load_records(files, format=format)
    tokenizer = _load_tokenizer(model_spec)
    fallback = ensure_chat_template(tokenizer)
    examples, stats = tokenize_records(loaded.records, tokenizer, max_length, train_on_prompt,
                                       progress=True)
    duplicates = find_duplicates(loaded.records)
    fingerprint = dataset_fingerprint(loaded.records)
    pct = stats.percentiles()
    rows = [[f["path"], f["format"], f"{f['rows']:,}"] for f in loaded.files]
    print_table("files", ["file", "format", "rows"], rows)
    summary = [
        ["rows", f"{len(loaded.records):,}"],
        ["token length p50 / p90 / p99 / max",
         " / ".join(str(pct.get(k, "-")) for k in ("p50", "p90", "p99", "max"))],
        [f"truncated (> {max_length} tokens)", f"{stats.truncated:,}"],
        ["dropped (no reply left after truncation)", f"{stats.dropped:,}"],
        ["tokens with loss", f"{stats.loss_tokens:,} of {sum(stats.lengths):,}"],
        ["duplicate examples", f"{len(duplicates):,}"],
        ["chat template", "fallback (ChatML)" if fallback else "from the tokenizer"],
        ["fingerprint", fingerprint],
    ]
    print_table("summary", ["", "value"], summary)
    for message in loaded.warnings:
        warn(message)
    if loaded.records:
        first = loaded.records[0]
        ex = tokenize_record(first, tokenizer, max_length, train_on_prompt)
        # Plain print: the example must appear exactly, with no wrapping added by the terminal UI.
        print(f"\nexample {first.source}:{first.line} as the model sees it "
              f"(text inside {MASK_OPEN} {MASK_CLOSE} carries no loss):")
        print(render_masked(ex, tokenizer))
        if first.kind == "preference":
            # The rendering above carries one reply; a preference is judged between the two.
            print(f"\nchosen reply: {first.chosen if first.chosen is not None else '(none: an undesirable row)'}")
            print(f"rejected reply: {first.rejected if first.rejected is not None else '(none: a desirable row)'}")
    return {"rows": len(loaded.records), "fingerprint": fingerprint, "duplicates": len(duplicates),
            "stats": stats.as_dict(), "files": loaded.files}
