"""Packing: rows fill up, and a packed batch gives the same per-example loss as unpacked."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from affina.data.packing import BatchCollator, PackedRow, pack_examples
from affina.data.records import Record
from affina.data.tokenize import IGNORE_INDEX, Example, tokenize_records
from affina.evaluate.loss import per_example_losses


def _examples(tok):
    recs = [Record("p.jsonl", i, messages=[{"role": "user", "content": "question " * (i + 1)},
                                           {"role": "assistant", "content": "answer " * (3 * i + 1)}])
            for i in range(7)]
    recs.append(Record("p.jsonl", 9, text="raw domain text " * 5))
    examples, _ = tokenize_records(recs, tok, max_length=128)
    return examples


def test_pack_examples_respects_length_and_keeps_every_token():
    exs = [Example(list(range(n)), list(range(n))) for n in (50, 30, 20, 60, 10, 40)]
    rows = pack_examples(exs, max_length=64)
    assert all(len(r.input_ids) <= 64 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == sum(len(e) for e in exs)
    assert sum(r.n_examples for r in rows) == len(exs)
    for r in rows:  # positions restart at every example; each example's first label is masked
        starts = [i for i, p in enumerate(r.position_ids) if p == 0]
        assert len(starts) == r.n_examples
        assert all(r.labels[i] == IGNORE_INDEX for i in starts)
    assert pack_examples(exs, 64) == rows  # deterministic


def test_packed_loss_equals_unpacked_per_example(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = _examples(tok)
    collator = BatchCollator(tok.pad_token_id)
    unpacked = per_example_losses(model, examples, collator)

    rows = pack_examples(examples, max_length=160)
    assert len(rows) < len(examples)  # something was actually packed together
    batch = collator(rows)  # (R, T), several examples per row, padded
    assert "attention_mask" not in batch
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none").view(batch["labels"][:, 1:].shape)

    # Map every packed segment back to its example by content, then compare mean losses.
    packed = {}
    for r, row in enumerate(rows):
        starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
        for a, b in zip(starts, starts[1:]):
            labels = torch.tensor(row.labels[a + 1:b])
            seg = losses[r, a:b - 1]
            packed[tuple(row.input_ids[a:b])] = (seg[labels != IGNORE_INDEX].mean().item())
    for ex, loss in zip(examples, unpacked):
        assert abs(packed[tuple(ex.input_ids)] - loss) < 1e-5


def test_packed_batch_mean_loss_matches_unpacked_batch(tiny_model_dir):
    """The loss the trainer sees is the same with and without packing."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = _examples(tok)
    collator = BatchCollator(tok.pad_token_id)
    with torch.no_grad():
        plain = model(**collator(examples), use_cache=False).loss
        packed = model(**collator(pack_examples(examples, 160)), use_cache=False).loss
    assert torch.allclose(plain, packed, atol=1e-5)


def test_collator_pads_unpacked_with_mask():
    batch = BatchCollator(pad_token_id=2)([Example([5, 6, 7], [5, 6, 7]), Example([8], [8])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_collator_packed_padding_is_its_own_segment():
    rows = [PackedRow([1, 2, 3], [-100, 2, 3], [0, 1, 2], 1), PackedRow([4], [-100], [0], 1)]
    batch = BatchCollator(pad_token_id=0)(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
