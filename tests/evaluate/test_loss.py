"""The evaluator's per-example losses (evaluate/loss.py): a plain causal LM or a LoRA model is
scored from its hidden states with the output projection on counted positions only, a chunk at
a time (models/lm_loss.py); that gives the losses the whole batch's logits give, and wrappers
with a forward of their own (prompt tuning) keep that forward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from affina.evaluate import loss as loss_module
from affina.evaluate.loss import per_token_loss_sums
from affina.models.lm_loss import causal_lm_of, row_loss_sums


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[1, :] = -100   # a row with nothing counted
    labels[2, 7:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _from_logits(model, batch):
    """The whole batch's logits, then cross-entropy per row: what scoring did before."""
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100,
                                               reduction="none").view(labels[:, 1:].shape)
    return losses.sum(-1), (labels[:, 1:] != -100).sum(-1)


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_scoring_equals_the_whole_logits(tiny_model_dir, lora):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)  # a LoRA that changes the answers
    model.eval()
    batch = _batch(model.config.vocab_size)
    assert causal_lm_of(model) is not None
    with torch.no_grad():
        expected_sums, expected_counts = _from_logits(model, batch)
    sums, counts = per_token_loss_sums(model, batch)
    assert counts.tolist() == expected_counts.tolist() == [7, 0, 6]
    torch.testing.assert_close(sums, expected_sums, rtol=1e-5, atol=1e-5)
    for chunk in (1, 4):  # chunks that split rows
        got, _ = row_loss_sums(causal_lm_of(model), batch, chunk_tokens=chunk)
        torch.testing.assert_close(got, expected_sums, rtol=1e-5, atol=1e-5)


def test_prompt_tuning_keeps_its_own_forward(tiny_model_dir, monkeypatch):
    """Virtual tokens go through the PEFT wrapper's forward: no chunked path for it."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert causal_lm_of(model) is None
    monkeypatch.setattr(loss_module, "row_loss_sums", lambda *a, **k: pytest.fail("chunked path taken"))
    sums, counts = per_token_loss_sums(model.eval(), _batch(model.config.vocab_size))
    assert counts.tolist() == [7, 0, 6] and torch.isfinite(sums).all()
