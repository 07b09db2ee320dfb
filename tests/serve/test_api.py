"""The API through the official openai client, against a real server on loopback."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from affina.record.requestlog import RequestLog
from tests.serve.conftest import start_server

GREEDY = dict(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def server(serve_store, tmp_path_factory):
    base, store = serve_store
    tmp = tmp_path_factory.mktemp("api")
    thread, engine, app = start_server(tmp, base, store, max_adapters=2)
    with thread:
        yield thread, engine, app, tmp
    engine.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _chat(client, model, text, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                          **{**GREEDY, **kw})


def test_models_are_listed(client):
    ids = [m.id for m in client.models.list().data]
    # `escape` is a symlink out of the store: never listed.
    assert ids == ["base", "alpha", "beta"]


def test_chat_answers_differ_by_adapter_and_report_usage(client, server):
    answers = {m: _chat(client, m, "hello there") for m in ("base", "alpha", "beta")}
    texts = {m: r.choices[0].message.content for m, r in answers.items()}
    assert len(set(texts.values())) == 3, texts
    for m, r in answers.items():
        assert r.model == m and r.object == "chat.completion"
        assert r.choices[0].message.role == "assistant"
        assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # Greedy decoding is deterministic.
    assert _chat(client, "alpha", "hello there").choices[0].message.content == texts["alpha"]
    # The base is also reachable by its spec's name.
    assert _chat(client, "tiny-base", "hello there").choices[0].message.content == texts["base"]


def test_streaming_chat_matches_the_full_answer(client):
    full = _chat(client, "beta", "tell me a story")
    stream = client.chat.completions.create(model="beta", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "tell me a story"}], **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_completions_plain_and_streamed(client):
    full = client.completions.create(model="alpha", prompt="The number seven", **GREEDY)
    assert full.object == "text_completion" and full.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="alpha", prompt="The number seven", stream=True, **GREEDY) if c.choices)
    assert streamed == full.choices[0].text
    assert full.choices[0].text != client.completions.create(
        model="base", prompt="The number seven", **GREEDY).choices[0].text


def test_max_tokens_stop_and_seed(client):
    long = client.completions.create(model="base", prompt="abc", temperature=0, max_tokens=20)
    short = client.completions.create(model="base", prompt="abc", temperature=0, max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    text = long.choices[0].text
    assert long.usage.completion_tokens > 3 and len(text) > 4
    stop = text[3:5]
    cut = client.completions.create(model="base", prompt="abc", temperature=0, max_tokens=20, stop=[stop])
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="base", prompt="abc", temperature=0, max_tokens=20, stop=[stop], stream=True) if c.choices)
    assert streamed == cut.choices[0].text

    sampled = [client.completions.create(model="alpha", prompt="abc", temperature=1.5, top_p=0.95,
                                         max_tokens=16, seed=s).choices[0].text for s in (7, 7, 8)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_concurrent_mixed_requests_never_bleed(client):
    prompts = ["hello there", "what is 7", "a", "tell me about cats and dogs", "zz top"]
    models = ["alpha", "beta", "base"]
    alone = {(m, p): _chat(client, m, p).choices[0].message.content for m in models for p in prompts}

    def ask(i):
        m, p = models[i % 3], prompts[(i // 3) % len(prompts)]
        if i % 4 == 0:
            stream = client.chat.completions.create(model=m, stream=True, messages=[{"role": "user", "content": p}],
                                                    **GREEDY)
            return m, p, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return m, p, _chat(client, m, p).choices[0].message.content

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(ask, range(45)))
    wrong = [(m, p) for m, p, text in results if text != alone[(m, p)]]
    assert not wrong


def _error(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.body
    assert set(body) >= {"message", "type", "code"}, body  # OpenAI's error object
    return info.value.status_code, body["code"]


def test_error_statuses(client, server):
    assert _error(lambda: _chat(client, "nope", "x")) == (404, "model_not_found")
    for bad in ("../alpha", "..", "/etc/passwd", "alpha/../beta", "escape", ".hidden"):
        status, code = _error(lambda: _chat(client, bad, "x"))
        assert status in (400, 404) and code in ("invalid_model_name", "model_not_found"), bad
    assert _error(lambda: _chat(client, "escape", "x")) == (400, "invalid_model_name")
    assert _error(lambda: _chat(client, "alpha", "x", temperature=5))[0] == 400
    assert _error(lambda: _chat(client, "alpha", "x", max_tokens=65)) == (400, "max_tokens_too_large")
    assert _error(lambda: _chat(client, "alpha", "word " * 400)) == (400, "context_length_exceeded")
    assert _error(lambda: _chat(client, "alpha", "x" * 30_000)) == (413, "request_too_large")

    url = server[0].url
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url + "/v1/completions", json={"model": "alpha"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_health_metrics_and_log(client, server):
    thread, engine, app, tmp = server
    _chat(client, "alpha", "for the log")
    assert httpx.get(thread.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(thread.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["batching"] == "continuous"  # the default
    metrics = httpx.get(thread.url + "/metrics").text
    assert 'affina_requests_total{endpoint="chat.completions",model="alpha",status="200"}' in metrics
    assert "affina_request_latency_seconds_bucket" in metrics
    assert 'affina_tokens_total{kind="completion",model="alpha"}' in metrics
    loaded = [line for line in metrics.splitlines() if line.startswith("affina_loaded_adapters ")]
    assert 1 <= float(loaded[0].split()[1]) <= 2  # --max-adapters 2

    rows = list(RequestLog(f"sqlite:///{tmp / 'requests.db'}").query(model="alpha", status="200"))
    last = rows[-1]
    assert last["prompt"] == [{"role": "user", "content": "for the log"}]
    assert last["adapter_version"].startswith("sha256:") and last["completion_tokens"] > 0
    assert last["params"]["temperature"] == 0 and last["latency_ms"] > 0
    errors = list(RequestLog(f"sqlite:///{tmp / 'requests.db'}").query(status="4xx"))
    assert {r["status"] for r in errors} >= {400, 404, 413}


def test_full_queue_answers_503(serve_store, tmp_path):
    base, store = serve_store
    # The worker is not started, so the first request waits in the queue and fills it.
    thread, engine, _ = start_server(tmp_path, base, store, max_queue=1, start_engine=False)
    with thread:
        assert httpx.get(thread.url + "/readyz").status_code == 503
        slow = openai.OpenAI(base_url=thread.url + "/v1", api_key="x", max_retries=0, timeout=1.5)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(lambda: _chat(slow, "base", "first"))
            while engine.queue_depth() == 0:
                pass
            assert _error(lambda: _chat(slow, "base", "second")) == (503, "server_overloaded")
            with pytest.raises(openai.APITimeoutError):
                waiting.result()
        engine.start()  # let the abandoned request finish, so the server can shut down
    engine.stop()


@pytest.mark.slow
def test_default_model_answers_through_the_api(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    thread, engine, _ = start_server(tmp_path, "default", runs)
    with thread:
        client = openai.OpenAI(base_url=thread.url + "/v1", api_key="x", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list().data] == ["base"]
        reply = client.chat.completions.create(model="default", temperature=0, max_tokens=12,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in reply.choices[0].message.content
    engine.stop()
