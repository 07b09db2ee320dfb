"""The engine without HTTP: batching of waiting requests, LRU of adapters."""

from __future__ import annotations

from affina.serve.decoding import StreamDecoder, finish_text
from affina.serve.engine import GenerationParams
from affina.serve.server import ServeOptions, build_engine

PROMPTS = ["hi", "what is the number seven", "tell me a long story about cats, dogs and a mouse", "zz"]


def test_waiting_requests_are_batched_without_changing_answers(serve_store):
    base, runs = serve_store
    engine = build_engine(ServeOptions(store=runs, base=str(base), threads=1))
    params = GenerationParams(max_tokens=10, temperature=0)
    ids = [engine.chat_prompt_ids([{"role": "user", "content": p}]) for p in PROMPTS]
    assert len({len(i) for i in ids}) >= 3  # different lengths: left padding is exercised
    # Queued before the worker starts, so the worker finds them all waiting.
    jobs = [(m, i, engine.submit(engine.resolve(m), ids[i], params))
            for m in ("alpha", "base", "beta") for i in range(len(PROMPTS))]
    jobs.append(("alpha", 0, engine.submit(engine.resolve("alpha"), ids[0], GenerationParams(max_tokens=3,
                                                                                       temperature=0))))
    engine.start()
    try:
        batched = [(m, i, j.future.result(timeout=120)) for m, i, j in jobs]
        assert engine.batch_sizes == {5: 1, 4: 2}
        alone = {}
        for m in ("alpha", "base", "beta"):
            for i in range(len(PROMPTS)):
                alone[m, i] = engine.submit(engine.resolve(m), ids[i], params).future.result(timeout=60)
        for m, i, result in batched[:-1]:
            assert (result.text, result.completion_tokens) == (alone[m, i].text, alone[m, i].completion_tokens)
        short = batched[-1][2]
        assert short.completion_tokens == 3 and short.finish_reason == "length"
        assert alone["alpha", 0].text.startswith(short.text)
    finally:
        engine.stop()


def test_lru_evicts_and_reloads_adapters(serve_store):
    base, runs = serve_store
    engine = build_engine(ServeOptions(store=runs, base=str(base), max_adapters=1)).start()
    try:
        ids = engine.chat_prompt_ids([{"role": "user", "content": "hello"}])
        params = GenerationParams(max_tokens=8, temperature=0)

        def ask(model):
            result = engine.submit(engine.resolve(model), ids, params).future.result(timeout=60)
            return result.text, result.adapter_version, engine.loaded_adapters()

        first = ask("alpha")
        other = ask("beta")
        again = ask("alpha")
        assert first[2] == ["alpha"] and other[2] == ["beta"] and again[2] == ["alpha"]
        assert first[:2] == again[:2] and first[0] != other[0] and first[1] != other[1]
        assert ask("base")[1] is None
    finally:
        engine.stop()



def test_stream_decoder_holds_back_possible_stop_strings():
    class Chars:  # a tokenizer whose token ids are character codes
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    decoder = StreamDecoder(Chars(), ("END",))
    pieces = [decoder.feed([ord(c)]) for c in "abcENxEND tail"]
    assert "".join(pieces) + decoder.flush() == "abcENx"
    assert "".join(pieces[:5]) == "abc" and decoder.stopped  # "EN" might have begun "END"
    assert finish_text("abc", ("x", "")) == ("abc", False)
    assert finish_text("a-b+c", ("+", "-")) == ("a", True)
