"""Continuous batching: requests join a running batch between decoding steps and leave it when
done, and every greedy answer is still the answer the request gets alone from `generate`."""

from __future__ import annotations

import time

import pytest

from affina.serve.engine import GenerationParams
from affina.serve.server import ServeOptions, build_engine
from tests.serve.conftest import make_lora_run

PROMPTS = ["hi", "what is the number seven", "tell me a long story about cats, dogs and a mouse", "zz",
           "one two three"]
MODELS = ["base", "a1", "a2", "a3", "dee"]


@pytest.fixture(scope="module")
def store(serve_store, tmp_path_factory):
    base, _ = serve_store
    runs = tmp_path_factory.mktemp("continuous") / "runs"
    runs.mkdir()
    for seed, name in enumerate(MODELS[1:4], start=41):
        make_lora_run(runs, name, base, seed=seed)
    make_lora_run(runs, "dee", base, seed=45, dora=True)  # no per-row adapters: batches of its own
    return base, runs


@pytest.fixture(scope="module")
def alone(store):
    """Each (model, prompt, max_tokens) served alone by a static engine, i.e. by `generate`."""
    base, runs = store
    engine = build_engine(ServeOptions(store=runs, base=str(base), threads=1, batching="static")).start()
    answers = {}

    def ask(model, prompt, max_tokens):
        key = (model, prompt, max_tokens)
        if key not in answers:
            ids = engine.chat_prompt_ids([{"role": "user", "content": PROMPTS[prompt]}])
            params = GenerationParams(max_tokens=max_tokens, temperature=0)
            r = engine.submit(engine.resolve(model), ids, params).future.result(timeout=60)
            answers[key] = (r.text, r.completion_tokens, r.finish_reason, r.adapter_version)
        return answers[key]

    yield ask
    engine.stop()


def _engine(base, runs, **options):
    """An engine with its adapters loaded before its worker starts: the PeftModel exists, so the
    base's rows decode beside adapters' from the first batch on, and no loading delays a step."""
    engine = build_engine(ServeOptions(store=runs, base=str(base), threads=1, **options))
    for name in MODELS[1:]:
        engine.models.activate(engine.resolve(name).run)
    return engine


def _slow(engine, seconds=0.01):
    """Every forward pass takes at least `seconds`, so a batch is still decoding when the next
    requests arrive, however fast the machine."""
    engine.base.model.register_forward_hook(lambda *args: time.sleep(seconds))


def test_requests_joining_a_running_batch_answer_as_alone(store, alone):
    base, runs = store
    engine = _engine(base, runs, max_batch=6, max_queue=256)
    assert engine.batching == "continuous"
    _slow(engine)
    ids = [engine.chat_prompt_ids([{"role": "user", "content": p}]) for p in PROMPTS]
    # Rows of different lengths: every request asks for its own number of tokens.
    waves = [[(m, p, 4 + 3 * ((i + p) % 5)) for i, m in enumerate(MODELS)] for p in range(len(PROMPTS))]
    engine.start()
    try:
        queued = []
        for wave in waves:  # each wave arrives while the previous one is decoding
            queued += [(key, engine.submit(engine.resolve(key[0]), ids[key[1]],
                                           GenerationParams(max_tokens=key[2], temperature=0)))
                       for key in wave]
            time.sleep(0.15)
        served = {key: job.future.result(timeout=120) for key, job in queued}
    finally:
        engine.stop()
    got = {k: (r.text, r.completion_tokens, r.finish_reason, r.adapter_version) for k, r in served.items()}
    assert got == {k: alone(*k) for k in got}
    assert len({text for text, *_ in got.values()}) > len(PROMPTS)  # the adapters do differ
    assert engine.joined_running > 0  # requests did join batches that were already decoding
    assert max(engine.step_rows) == 6  # up to --max-batch rows per step
    assert max(engine.batch_models) >= 3  # the base and several adapters decoded together


def test_requests_prefilled_together_answer_as_alone(store, alone):
    """Requests that join at the same step are prefilled in one padded forward pass: prompts of
    different lengths, for the base and three adapters, each still answers as it does alone."""
    base, runs = store
    engine = _engine(base, runs, max_batch=8, max_queue=256)
    ids = [engine.chat_prompt_ids([{"role": "user", "content": p}]) for p in PROMPTS]
    keys = [(MODELS[i % 4], i % len(PROMPTS), 6 + i % 3) for i in range(20)]
    queued = [(key, engine.submit(engine.resolve(key[0]), ids[key[1]],
                                  GenerationParams(max_tokens=key[2], temperature=0))) for key in keys]
    engine.start()  # everything waits already: the first batch prefills eight requests at once
    try:
        served = {key: job.future.result(timeout=120) for key, job in queued}
    finally:
        engine.stop()
    got = {k: (r.text, r.completion_tokens, r.finish_reason, r.adapter_version) for k, r in served.items()}
    assert got == {k: alone(*k) for k in got}
    assert max(engine.prefill_rows) == 8
    assert len({len(ids[p]) for _, p, _ in keys[:8]}) >= 3  # the first eight: prompts of 3+ lengths


def test_a_cancelled_or_timed_out_row_leaves_without_disturbing_the_others(store, alone):
    base, runs = store
    engine = _engine(base, runs)
    _slow(engine, 0.03)
    ids = engine.chat_prompt_ids([{"role": "user", "content": PROMPTS[2]}])
    long = GenerationParams(max_tokens=40, temperature=0)
    # Queued before the worker starts: they start decoding together in one batch.
    keep = [engine.submit(engine.resolve(m), ids, long) for m in ("a1", "base", "a2")]
    quitter = engine.submit(engine.resolve("a3"), ids, long)
    late = engine.submit(engine.resolve("a1"), ids, long, deadline=time.monotonic() + 0.6)
    engine.start()
    try:
        time.sleep(0.3)
        quitter.cancelled.set()
        gone, timed_out = quitter.future.result(timeout=60), late.future.result(timeout=60)
        # They left at once: the long rows were still decoding when their answers came back.
        assert not any(job.future.done() for job in keep)
        results = [job.future.result(timeout=120) for job in keep]
    finally:
        engine.stop()
    for r in (gone, timed_out):
        assert r.finish_reason == "length" and 1 < r.completion_tokens < 40
    assert alone("a3", 2, 40)[0].startswith(gone.text) and alone("a1", 2, 40)[0].startswith(timed_out.text)
    got = [(r.text, r.completion_tokens, r.finish_reason, r.adapter_version) for r in results]
    assert got == [alone(m, 2, 40) for m in ("a1", "base", "a2")]
    assert engine.batch_sizes == {5: 1}  # all five decoded together


def test_streamed_rows_join_and_stream_the_same_answer(store, alone):
    base, runs = store
    engine = _engine(base, runs)
    ids = engine.chat_prompt_ids([{"role": "user", "content": PROMPTS[1]}])
    params = GenerationParams(max_tokens=12, temperature=0)
    pieces = {m: [] for m in ("a1", "base")}
    jobs = {m: engine.submit(engine.resolve(m), ids, params, on_text=pieces[m].append) for m in pieces}
    jobs["a2"] = engine.submit(engine.resolve("a2"), ids, params)
    engine.start()
    try:
        results = {m: job.future.result(timeout=60) for m, job in jobs.items()}
    finally:
        engine.stop()
    assert engine.batch_sizes == {3: 1}
    for m, r in results.items():
        assert r.text == alone(m, 1, 12)[0]
    for m, streamed in pieces.items():
        assert "".join(streamed) == results[m].text and len(streamed) > 1


def test_static_batching_stays_available_and_sampled_requests_keep_their_seed(store):
    base, runs = store
    answers = {}
    for batching in ("static", "continuous"):
        engine = build_engine(ServeOptions(store=runs, base=str(base), threads=1, batching=batching))
        ids = engine.chat_prompt_ids([{"role": "user", "content": PROMPTS[0]}])
        sampled = GenerationParams(max_tokens=10, temperature=1.2, seed=7)
        greedy = GenerationParams(max_tokens=10, temperature=0)
        jobs = [engine.submit(engine.resolve("a1"), ids, p) for p in (sampled, greedy, sampled)]
        engine.start()
        try:
            answers[batching] = [job.future.result(timeout=60).text for job in jobs]
        finally:
            engine.stop()
        assert engine.batching == batching
    # Sampled requests run alone through `generate` in both modes: the same seed, the same text.
    assert answers["static"] == answers["continuous"] and answers["static"][0] == answers["static"][2]


def test_a_request_that_cannot_join_is_served_before_later_joiners(store, alone):
    """A DoRA request (no per-row adapters) waits for the running batch to drain; requests that
    arrive after it do not join that batch meanwhile, so it is never starved."""
    base, runs = store
    engine = _engine(base, runs)
    _slow(engine, 0.02)
    ids = engine.chat_prompt_ids([{"role": "user", "content": PROMPTS[2]}])
    params = GenerationParams(max_tokens=20, temperature=0)
    engine.start()
    try:
        first = engine.submit(engine.resolve("a1"), ids, params)
        while not engine.step_rows:  # the batch is decoding
            time.sleep(0.01)
        dora = engine.submit(engine.resolve("dee"), ids, params)
        later = engine.submit(engine.resolve("a2"), ids, params)
        done_order = []
        for name, job in (("dee", dora), ("a2", later)):
            job.future.add_done_callback(lambda _, name=name: done_order.append(name))
        results = [job.future.result(timeout=120) for job in (first, dora, later)]
    finally:
        engine.stop()
    assert engine.joined_running == 0 and done_order == ["dee", "a2"]
    got = [(r.text, r.completion_tokens, r.finish_reason, r.adapter_version) for r in results]
    assert got == [alone(m, 2, 20) for m in ("a1", "dee", "a2")]


def test_the_cache_goes_to_the_forward_under_the_name_it_takes(serve_store):
    """transformers renamed the forward's `past_key_values` to `cache`; a forward that takes only
    the old name would swallow the new one in its **kwargs and decode without the earlier tokens."""
    from transformers import AutoModelForCausalLM

    from affina.serve.continuous import cache_argument, supports_continuous

    class Older:
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    class Unknown:
        def forward(self, input_ids=None, **kwargs): ...

    base, _ = serve_store
    model = AutoModelForCausalLM.from_pretrained(base)
    import inspect

    expected = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert cache_argument(model) == expected and supports_continuous(model) is None
    assert cache_argument(Older()) == "past_key_values"
    assert cache_argument(Unknown()) is None
