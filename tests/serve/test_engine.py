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
        # alpha and beta share a batch; the base joins adapters once the PeftModel exists.
        assert engine.batch_sizes == {8: 1, 5: 1} and engine.batch_models == {2: 2}
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


def test_run_with_its_own_chat_template_is_prompted_with_it(serve_store, tmp_path):
    """A run trained with another chat template is rendered, and stopped, as it was trained."""
    from transformers import AutoTokenizer

    from affina.data.tokenize import template_sha256
    from affina.record import TemplateInfo, read_record, write_record
    from tests.serve.conftest import make_lora_run

    base, _ = serve_store
    store = tmp_path / "runs"
    store.mkdir()
    run = make_lora_run(store, "own-template", base, seed=4)
    make_lora_run(store, "same-template", base, seed=5)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    tokenizer.save_pretrained(run / "adapter")
    record = read_record(run)
    record.template = TemplateInfo(sha256=template_sha256(tokenizer), stop_token_ids=[7])
    write_record(run, record)

    engine = build_engine(ServeOptions(store=store, base=str(base), threads=1))
    messages = [{"role": "user", "content": "hello"}]
    own, same = engine.resolve("own-template"), engine.resolve("same-template")
    assert engine.chat_prompt_ids(messages, own) == tokenizer("<<hello>>", add_special_tokens=False)["input_ids"]
    assert engine.chat_prompt_ids(messages, same) == engine.chat_prompt_ids(messages)
    assert engine.models.stops(own.run) == [7]
    assert engine.models.stops(same.run) == engine.models.base_stops


def test_store_scan_reports_unservable_runs_with_the_reason(serve_store, tmp_path):
    import json

    from affina.serve.store import ModelStore
    from tests.serve.conftest import make_lora_run

    base, _ = serve_store
    store = tmp_path / "runs"
    store.mkdir()
    make_lora_run(store, "good", base, seed=1)
    corrupt = store / "corrupt"
    corrupt.mkdir()
    (corrupt / "affina.json").write_text("{not json")
    missing = make_lora_run(store, "missing", base, seed=2)
    record = json.loads((missing / "affina.json").read_text())
    (missing / "affina.json").write_text(json.dumps({**record, "artifact": "gone"}))
    scan = ModelStore(store).scan()
    assert [r.name for r in scan.servable] == ["good"]
    reasons = dict(scan.unavailable)
    assert set(reasons) == {"corrupt", "missing"}
    assert "corrupt run record" in reasons["corrupt"] and "gone/" in reasons["missing"]
