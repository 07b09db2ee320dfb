"""Property-based fuzzing of /v1/chat/completions and /v1/completions against a real server.

Bodies mix well-formed requests with wrong types, out-of-range numbers, odd Unicode and unknown
fields. Whatever comes in: never a 5xx, every error is OpenAI's JSON error object, every stream
ends with `data: [DONE]`, and every request leaves exactly one request-log row.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from affina.record.requestlog import RequestLog
from affina.serve.app import Limits
from tests.serve.conftest import start_server

LIMITS = Limits(max_body_bytes=20_000, max_prompt_tokens=200, max_tokens=8, default_max_tokens=4,
                max_stop_tokens=8, max_request_seconds=20)

# Any JSON value, small: what a confused client might put in any field.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, width=64)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
# Lone surrogates too: JSON's "\\ud800" escape decodes to text that UTF-8 cannot encode.
texts = st.text(max_size=30) | st.sampled_from(["", " ", "\x00", "é😀", "a" * 300, "\ud800", "a\udfffb"])


content = st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "text", "image_url"]),
                                                           "text": texts}), max_size=2))
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "user", "assistant", "developer", "robot"]),
                                 "content": content})
# Plausible values: mostly valid, a few just out of range.
optional = {
    "max_tokens": st.integers(-1, 10),
    "temperature": st.sampled_from([0, 0.0, 1e-45, 0.005, 0.7, 2, 2.5]),
    "top_p": st.sampled_from([0.5, 1, 0, 1.5]),
    "seed": st.sampled_from([0, 7, 2**63 - 1, 2**64, -1]),
    "stop": st.one_of(texts, st.lists(texts, max_size=5)),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "n": st.sampled_from([1, 1, 2]),
    "logprobs": st.sampled_from([False, True]),
    "user": texts,
}
models = st.sampled_from(["base", "base", "alpha", "beta", "nope", "../alpha"])


def body(required: dict):
    """A plausible body, or one with a field replaced by any JSON value at all."""
    plausible = st.fixed_dictionaries({"model": models, **required}, optional=optional)
    names = ["model", *required, *optional]
    mutated = st.tuples(plausible, st.sampled_from(names), json_values).map(lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(plausible, plausible, mutated)


chat_bodies = body({"messages": st.lists(message, min_size=1, max_size=3)})
completion_bodies = body({"prompt": st.one_of(texts, texts, st.lists(texts, max_size=2))})
requests = st.one_of(st.tuples(st.just("/v1/chat/completions"), chat_bodies),
                     st.tuples(st.just("/v1/completions"), completion_bodies),
                     st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions"]), json_values))


@pytest.fixture(scope="module")
def server(serve_store, tmp_path_factory):
    base, store = serve_store
    tmp = tmp_path_factory.mktemp("fuzz")
    thread, engine, _ = start_server(tmp, base, store, limits=LIMITS)
    with thread:
        with httpx.Client(base_url=thread.url, timeout=60) as http:
            yield http, RequestLog(f"sqlite:///{tmp / 'requests.db'}")
    engine.stop()


def check(http: httpx.Client, path: str, payload, count_statuses: bool = False) -> None:
    with http.stream("POST", path, content=json.dumps(payload),
                     headers={"content-type": "application/json"}) as r:
        raw = r.read()
    if count_statuses:
        event(f"status {r.status_code}")
    assert r.status_code < 500, (payload, raw)
    if r.headers["content-type"].startswith("text/event-stream"):
        assert r.status_code == 200
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", (payload, raw)
        assert all("error" not in json.loads(e) for e in events[:-1]), (payload, raw)
        return
    answer = r.json()
    if r.status_code != 200:
        assert set(answer["error"]) == {"message", "type", "param", "code"}, (payload, answer)
    else:
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests)
def test_fuzzed_requests_never_5xx_and_each_leaves_one_log_row(server, request):
    http, log = server
    before = sum(1 for _ in log.query())
    check(http, *request, count_statuses=True)
    assert sum(1 for _ in log.query()) == before + 1


def test_a_mixed_batch_leaves_exactly_one_row_per_request(server):
    http, log = server
    chat = {"model": "base", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    batch = [("/v1/chat/completions", chat), ("/v1/chat/completions", {**chat, "stream": True}),
             ("/v1/completions", {"model": "base", "prompt": "x", "max_tokens": 3}),
             ("/v1/chat/completions", {**chat, "model": "nope"}), ("/v1/chat/completions", {**chat, "n": 3}),
             ("/v1/completions", {"model": "base", "prompt": ""}), ("/v1/completions", [1, 2]),
             ("/v1/chat/completions", {**chat, "stop": "z" * 500}), ("/v1/chat/completions", "{")]
    before = sum(1 for _ in log.query())
    for path, payload in batch:
        check(http, path, payload)
    r = http.post("/v1/completions", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert sum(1 for _ in log.query()) == before + len(batch) + 1
