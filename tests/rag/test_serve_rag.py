"""Served retrieval through a real server and the official openai client: sources in the prompt
through the chat template, citations back, for the base and an adapter; errors OpenAI-shaped."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from affina.rag import Retriever, with_sources
from tests.serve.conftest import make_lora_run, start_server

GREEDY = dict(temperature=0, max_tokens=8)
QUESTION = "How long is the warranty?"


@pytest.fixture(scope="module")
def server(built_kb, tmp_path_factory):
    from affina.serve.app import Limits
    from tests.helpers import make_tiny_model

    root = tmp_path_factory.mktemp("ragserve")
    base = make_tiny_model(root / "tiny-base", seed=3, initializer_range=0.3)
    store = root / "runs"
    store.mkdir()
    make_lora_run(store, "alpha", base, seed=1)
    limits = Limits(max_body_bytes=20_000, max_prompt_tokens=4000, max_tokens=64, default_max_tokens=16)
    thread, engine, app = start_server(root, base, store, limits=limits)
    with thread:
        yield thread, engine
    engine.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client, model, rag=None, **kw):
    extra = {"extra_body": {"rag": rag}} if rag else {}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                          **GREEDY, **extra, **kw)


@pytest.mark.parametrize("model", ["base", "alpha"])
def test_chat_with_retrieval_returns_citations(client, built_kb, model):
    plain = _ask(client, model)
    answer = _ask(client, model, {"index": "manual", "k": 3})
    citations = answer.model_extra["citations"]
    assert [c["source"] for c in citations] == [1, 2, 3]
    expect = Retriever.open("manual").search(QUESTION, k=3)
    assert [(c["file"], c["offset"]) for c in citations] == [(h.chunk.path, h.chunk.start) for h in expect]
    assert Path(citations[0]["file"]).name == "warranty.md"
    assert all(c["score"] > 0 and len(c["sha256"]) == 64 for c in citations)
    # The sources went into the prompt: it is longer by about their text.
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 30
    assert "citations" not in (plain.model_extra or {})


def test_streamed_chat_carries_citations_on_its_first_chunk(client):
    full = _ask(client, "alpha", {"index": "manual", "k": 2})
    chunks = list(client.chat.completions.create(
        model="alpha", stream=True, messages=[{"role": "user", "content": QUESTION}],
        extra_body={"rag": {"index": "manual", "k": 2}}, **GREEDY))
    assert chunks[0].model_extra["citations"] == full.model_extra["citations"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content


def test_unknown_index_and_bad_options_are_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        _ask(client, "base", {"index": "nope"})
    err = e.value.body
    assert err["code"] == "index_not_found" and err["param"] == "rag.index" and "nope" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, "base", {"index": "manual", "k": 0})
    assert e.value.body["param"] == "rag.k"
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, "base", {"index": "../etc"})
    assert e.value.body["code"] == "invalid_index_name"
    with pytest.raises(openai.BadRequestError) as e:  # not silently ignored on plain completions
        client.completions.create(model="base", prompt="hi", max_tokens=2, extra_body={"rag": {"index": "manual"}})
    assert e.value.body["param"] == "rag" and "chat/completions" in e.value.body["message"]


def test_sources_render_through_the_chat_template(built_kb, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    hits = Retriever.open("manual").search(QUESTION, k=2)
    messages = with_sources([{"role": "user", "content": QUESTION}], hits, tok)
    assert [m["role"] for m in messages] == ["system", "user"]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    system_turn = text.split("<|im_start|>user")[0]
    assert "[1] " in system_turn and "[2] " in system_turn and hits[0].chunk.text.strip() in system_turn
    assert text.rstrip().endswith("<|im_start|>assistant")
    # A system message of the client's own is kept, with the sources after it.
    kept = with_sources([{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}], hits, tok)
    assert kept[0]["content"].startswith("Be brief.\n\n") and len(kept) == 2
    # A template that refuses system messages gets the sources in the user turn instead.
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('system messages are not supported') }}{% endif %}"
                         "<turn>{{ m['content'] }}</turn>{% endfor %}")
    moved = with_sources([{"role": "user", "content": QUESTION}], hits, tok)
    assert [m["role"] for m in moved] == ["user"]
    assert moved[0]["content"].endswith(f"Question: {QUESTION}") and "[1] " in moved[0]["content"]
