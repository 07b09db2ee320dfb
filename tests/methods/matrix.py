"""Building blocks of the method matrix: load a base for a case, apply the method, make batches."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from affina.data.packing import BatchCollator
from affina.data.records import Record
from affina.data.tokenize import tokenize_records
from affina.methods import build_method_config, get_method
from affina.methods.head import ClassCollator, ClassExample
from affina.models import load_model

WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "mirror", "violin"]


def chat_records() -> list[Record]:
    """Eight examples to memorise: a question and a one-word answer each."""
    return [Record("mem.jsonl", i + 1, messages=[
        {"role": "user", "content": f"item {i}?"}, {"role": "assistant", "content": WORDS[i]}])
        for i in range(8)]


def label_records() -> list[Record]:
    return [Record("mem.jsonl", i + 1, text=f"item {WORDS[i]} here", label=["neg", "pos"][i % 2])
            for i in range(8)]


def setup(case, model_dirs, *, quantized: bool = True):
    """(method, cfg, adapted model, tokenizer) for a case, on a fresh tiny base."""
    method = get_method(case.method)
    cfg = build_method_config(method, dict(case.options))
    options = method.load_options(cfg) if quantized else {}
    loaded = load_model(str(model_dirs[case.model]), device="cpu", dtype="float32",
                        for_training=True, **options)
    torch.manual_seed(0)
    model = method.apply(loaded.model, cfg)
    data = SimpleNamespace(train_records=chat_records())
    model = method.attach_data(model, cfg, data, loaded.tokenizer)
    return method, cfg, model, loaded.tokenizer


def fresh_base(case, model_dirs, method, cfg, *, quantized: bool = True):
    options = method.load_options(cfg) if quantized else {}
    return load_model(str(model_dirs[case.model]), device="cpu", dtype="float32", **options)


def batch(case, tokenizer) -> dict:
    if case.method == "head":
        ids = [tokenizer(r.text, add_special_tokens=False)["input_ids"] for r in label_records()]
        return ClassCollator(tokenizer.pad_token_id)(
            [ClassExample(i, ["neg", "pos"].index(r.label)) for i, r in zip(ids, label_records())])
    examples, _ = tokenize_records(chat_records(), tokenizer, 128)
    return BatchCollator(tokenizer.pad_token_id)(examples)


def probe(case, tokenizer) -> dict:
    """One unpadded row (so every model class pools/attends the same way)."""
    b = batch(case, tokenizer)
    n = int(b["attention_mask"][0].sum())
    return {"input_ids": b["input_ids"][:1, :n], "attention_mask": b["attention_mask"][:1, :n]}


@torch.no_grad()
def logits(model, inputs: dict) -> torch.Tensor:
    model.eval()
    return model(**inputs).logits.float()


def train_steps(model, inputs: dict, steps: int, lr: float, autocast: torch.dtype | None = None) -> list[float]:
    """`steps` AdamW steps on one batch; `autocast`: the forward passes (only them, as the Trainer
    does: autocast keeps its cast weights until its region ends) under CPU autocast to that dtype."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses
