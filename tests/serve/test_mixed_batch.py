"""Batches that mix several LoRA adapters and the base in one forward pass (PEFT `adapter_names`)."""

from __future__ import annotations

import pytest

from affina.serve.engine import GenerationParams
from affina.serve.server import ServeOptions, build_engine
from affina.serve.store import UnservableModel
from tests.serve.conftest import make_lora_run

PROMPTS = ["hi", "what is the number seven", "tell me a long story about cats, dogs and a mouse", "zz",
           "one two three"]
ADAPTERS = ["a1", "a2", "a3", "a4"]


@pytest.fixture(scope="module")
def mixed_store(serve_store, tmp_path_factory):
    base, _ = serve_store
    store = tmp_path_factory.mktemp("mixed") / "runs"
    store.mkdir()
    for seed, name in enumerate(ADAPTERS, start=11):
        make_lora_run(store, name, base, seed=seed)
    make_lora_run(store, "dee", base, seed=21, dora=True)
    return base, store


def _answers(engine, queued):
    return [(m, i, (r.text, r.completion_tokens, r.finish_reason, r.adapter_version))
            for m, i, r in ((m, i, job.future.result(timeout=180)) for m, i, job in queued)]


def _serve(base, store, models, *, max_adapters=8, max_batch=8, max_tokens=12):
    """Each (model, prompt) queued interleaved, all at once, then again one at a time."""
    engine = build_engine(ServeOptions(store=store, base=str(base), threads=1, max_adapters=max_adapters,
                                       max_batch=max_batch, max_queue=256))
    params = GenerationParams(max_tokens=max_tokens, temperature=0)
    ids = [engine.chat_prompt_ids([{"role": "user", "content": p}]) for p in PROMPTS]
    # The worker is not running yet: load one adapter so the PeftModel exists and the base mixes in.
    engine.models.activate(engine.resolve(ADAPTERS[0]).run)
    order = [(m, i) for i in range(len(PROMPTS)) for m in models]
    queued = [(m, i, engine.submit(engine.resolve(m), ids[i], params)) for m, i in order]
    engine.start()
    try:
        batched = _answers(engine, queued)
        stats = dict(engine.batch_models), dict(engine.batch_sizes)
        alone = []
        for m, i in order:  # one request in the queue at a time: batches of one
            alone += _answers(engine, [(m, i, engine.submit(engine.resolve(m), ids[i], params))])
        return batched, alone, stats, engine
    finally:
        engine.stop()


def test_mixed_batches_answer_as_each_request_alone(mixed_store):
    base, store = mixed_store
    models = ["base", *ADAPTERS, "dee"]
    batched, alone, (batch_models, batch_sizes), engine = _serve(base, store, models)
    assert batched == alone
    assert len({text for _, _, (text, *_rest) in alone}) > len(PROMPTS)  # the adapters do differ
    # Mixed batches formed: the base and four adapters per batch, at most --max-batch rows.
    assert max(batch_models) >= 3 and max(batch_sizes) == 8
    # DoRA rows never join a mixed batch (PEFT refuses `adapter_names` with DoRA): batches of their own.
    dee = engine.resolve("dee")
    assert not engine.models.mixable(dee.run) and engine.models.mixable(engine.resolve("a1").run)


def test_a_batch_never_holds_more_adapters_than_are_kept_loaded(mixed_store):
    base, store = mixed_store
    batched, alone, (batch_models, _), engine = _serve(base, store, ["base", *ADAPTERS], max_adapters=2)
    assert batched == alone
    assert max(batch_models) == 3  # two adapters and the base
    assert len(engine.loaded_adapters()) == 2


def test_an_adapter_that_cannot_load_fails_only_its_own_rows(mixed_store, tmp_path):
    base, _ = mixed_store
    store = tmp_path / "runs"
    store.mkdir()
    for seed, name in ((11, "a1"), (12, "a2")):
        make_lora_run(store, name, base, seed=seed)
    broken = make_lora_run(store, "broken", base, seed=31)
    (broken / "adapter" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    engine = build_engine(ServeOptions(store=store, base=str(base), threads=1))
    params = GenerationParams(max_tokens=8, temperature=0)
    ids = engine.chat_prompt_ids([{"role": "user", "content": "hello"}])
    engine.models.activate(engine.resolve("a1").run)
    jobs = {m: engine.submit(engine.resolve(m), ids, params) for m in ("a1", "broken", "base", "a2")}
    engine.start()
    try:
        with pytest.raises(UnservableModel, match="broken"):
            jobs["broken"].future.result(timeout=60)
        answers = {m: jobs[m].future.result(timeout=60).text for m in ("a1", "base", "a2")}
        assert engine.batch_models == {3: 1}  # the three others still ran together
        alone = {m: engine.submit(engine.resolve(m), ids, params).future.result(timeout=60).text
                 for m in answers}
        assert answers == alone
    finally:
        engine.stop()
