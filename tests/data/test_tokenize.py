"""Chat template rendering and loss masks."""

import pytest
from transformers import AutoTokenizer

from affina.data.records import Record
from affina.data.tokenize import (FALLBACK_CHAT_TEMPLATE, IGNORE_INDEX, ensure_chat_template,
                                  prompt_and_reference, render_chat, tokenize_record,
                                  tokenize_records)
from tests.helpers import TINY_TOKENIZER_DIR


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def chat(*turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return Record(source="t.jsonl", line=1, messages=msgs, format="chat")


def labelled_text(ex, tok):
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])


def test_loss_only_on_assistant_replies_multi_turn(tok):
    rec = chat("hello there", "hi, how can I help", "what is two plus two", "four",
               system="be brief")
    ex = tokenize_record(rec, tok, max_length=512)
    assert labelled_text(ex, tok) == "hi, how can I help<|im_end|>\nfour<|im_end|>\n"
    # The system and user turns are masked.
    masked = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX])
    assert "be brief" in masked and "what is two plus two" in masked and "four" not in masked


def test_train_on_prompt_keeps_every_token(tok):
    ex = tokenize_record(chat("question", "answer"), tok, 512, train_on_prompt=True)
    assert ex.labels == ex.input_ids


def test_raw_text_trains_on_every_token_and_ends_with_eos(tok):
    ex = tokenize_record(Record("t.jsonl", 1, text="domain text about kettles"), tok, 512)
    assert ex.labels == ex.input_ids
    assert ex.input_ids[-1] == tok.eos_token_id


def test_text_label_becomes_a_question_and_answer(tok):
    ex = tokenize_record(Record("t.csv", 2, text="great product", label="positive"), tok, 512)
    assert labelled_text(ex, tok) == "positive<|im_end|>\n"


def test_truncation_is_counted_and_empty_examples_dropped(tok):
    long_prompt = chat("word " * 200, "short answer")
    short = chat("q", "a")
    limit = len(tokenize_record(short, tok, 10_000)) + 2
    examples, stats = tokenize_records([long_prompt, short], tok, max_length=limit)
    assert stats.truncated == 1 and stats.dropped == 1 and stats.examples == 1
    assert len(examples) == 1 and all(len(e) <= limit for e in examples)


def test_render_spans_point_at_replies(tok):
    text, spans = render_chat(tok, chat("a question", "the reply").messages)
    assert [text[s:e] for s, e in spans] == ["the reply<|im_end|>\n"]


def test_fallback_template_used_only_when_missing(tok):
    assert ensure_chat_template(tok) is False
    bare = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    bare.chat_template = None
    assert ensure_chat_template(bare) is True
    assert bare.chat_template == FALLBACK_CHAT_TEMPLATE
    ex = tokenize_record(chat("q", "reply"), bare, 512)
    assert labelled_text(ex, bare) == "reply<|im_end|>\n"


def test_prompt_and_reference_for_generation(tok):
    prompt, ref = prompt_and_reference(chat("q1", "a1", "q2", "a2"), tok)
    assert ref == "a2"
    assert prompt.endswith("<|im_start|>assistant\n") and "a1" in prompt and "a2" not in prompt
