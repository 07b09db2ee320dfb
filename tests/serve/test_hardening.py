"""Hostile and malformed requests: each is answered with OpenAI's JSON error object (never a plain
500), bounded in what it may cost, and logged in exactly one row."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from affina.record.requestlog import RequestLog
from affina.serve.app import Limits
from tests.serve.conftest import start_server

LIMITS = Limits(max_body_bytes=100_000, max_prompt_tokens=300, max_tokens=400, default_max_tokens=16,
                max_stop_tokens=8, max_request_seconds=60)
CHAT = "/v1/chat/completions"
LONG = dict(temperature=0, max_tokens=400)  # a few seconds of generation on the tiny model


@pytest.fixture(scope="module")
def server(serve_store, tmp_path_factory):
    base, store = serve_store
    tmp = tmp_path_factory.mktemp("hardening")
    thread, engine, app = start_server(tmp, base, store, limits=LIMITS)
    with thread:
        yield thread, engine, tmp
    engine.stop()


def rows(tmp) -> list[dict]:
    return list(RequestLog(f"sqlite:///{tmp / 'requests.db'}").query())


def chat_body(**kw) -> dict:
    return {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kw}


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if param is not None:
        assert error["param"] == param, error
    return error


def test_stop_strings_are_bounded(server):
    url = server[0].url
    with httpx.Client(base_url=url, timeout=60) as http:
        assert_error(http.post(CHAT, json=chat_body(stop=["a", "b", "c", "d", "e"])), 400, "stop")
        # 40,000 characters fit the body limit; they once cost the server 11 GB and 41 s.
        error = assert_error(http.post(CHAT, json=chat_body(stop="x" * 40_000)), 400, "stop")
        assert error["code"] == "stop_too_long"
        assert_error(http.post(CHAT, json=chat_body(stop=["ok", " word" * 9])), 400, "stop")
        assert http.post(CHAT, json=chat_body(stop=["ok", " word" * 8])).status_code == 200


def test_stop_strings_stop_each_row_of_a_batch():
    """Stop strings are matched on decoded text by our own criterion, row by row."""
    import torch

    from affina.serve.decoding import RowStops

    class Chars:  # a tokenizer whose token i is chr(i)
        def decode(self, ids, skip_special_tokens=True):
            return "".join(map(chr, ids))

    stops = RowStops(2, [threading.Event(), threading.Event()], [None, None], ("END",), Chars())
    ids = torch.tensor([[0, 0] + [ord(c) for c in "xxEND"], [0, 0] + [ord(c) for c in "xxxEN"]])
    assert stops(ids, None).tolist() == [True, False]
    stops.cancelled[1].set()
    assert stops(ids, None).tolist() == [True, True]
    # The prompt is never matched: only generated text stops a row.
    assert RowStops(5, [threading.Event()], [None], ("END",), Chars())(
        torch.tensor([[ord(c) for c in "ENDxx"]]), None).tolist() == [False]
    late = RowStops(0, [threading.Event()], [time.monotonic() - 1])
    assert late(torch.tensor([[1]]), None).tolist() == [True] and late.timed_out == [True]


BAD_BODIES = [
    ("content part with a non-string text", chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages.0.content"),
    ("image content part", chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages.0.content"),
    ("seed over 64 bits", chat_body(temperature=1, seed=2**64), "seed"),
    ("negative seed", chat_body(temperature=1, seed=-1), "seed"),
    ("max_tokens as a string", chat_body(max_tokens="4"), "max_tokens"),
    ("max_tokens as a bool", chat_body(max_tokens=True), "max_tokens"),
    ("stream as a string", chat_body(stream="yes"), "stream"),
    ("temperature as a string", chat_body(temperature="0.5"), "temperature"),
    ("logprobs", chat_body(logprobs=True), "logprobs"),
    ("top_logprobs", chat_body(top_logprobs=2), "top_logprobs"),
    ("n of 2", chat_body(n=2), "n"),
    ("tools", chat_body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    ("model as a number", chat_body(model=5), "model"),
]


@pytest.mark.parametrize("body,param", [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_malformed_fields_are_400_naming_the_field(server, body, param):
    assert_error(httpx.post(server[0].url + CHAT, json=body, timeout=60), 400, param)


def test_refusals_on_one_keep_alive_connection_each_leave_one_log_row(server):
    thread, _, tmp = server
    before = len(rows(tmp))
    lone = '{"model": "base", "max_tokens": 4, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    with httpx.Client(base_url=thread.url, timeout=60) as http:
        answers = [
            http.post(CHAT, content=lone, headers={"content-type": "application/json"}),
            http.post("/v1/completions", json={"model": "base", "prompt": "", "max_tokens": 4}),
            http.post("/v1/completions", json={"model": "base", "prompt": "", "stream": True}),
            http.post("/v1/completions", json={"model": "base", "prompt": [""], "max_tokens": 4}),
            # Below the minimum temperature: answered greedily, not with a sampling error.
            http.post(CHAT, json=chat_body(temperature=1e-45)),
            http.post(CHAT, json=chat_body(temperature=0)),
        ]
    assert [a.status_code for a in answers] == [400, 400, 400, 400, 200, 200]
    assert answers[0].json()["error"]["code"] == "invalid_unicode"
    assert answers[2].headers["content-type"].startswith("application/json")
    assert answers[4].json()["choices"][0]["message"] == answers[5].json()["choices"][0]["message"]
    assert len(rows(tmp)) == before + len(answers)


def test_an_unexpected_error_is_a_json_500_with_one_log_row(server, monkeypatch):
    thread, engine, tmp = server

    def broken(*args, **kwargs):
        raise RuntimeError("a bug with internal details")

    monkeypatch.setattr(engine, "chat_prompt_ids", broken)
    before = len(rows(tmp))
    with httpx.Client(base_url=thread.url, timeout=60) as http:
        error = assert_error(http.post(CHAT, json=chat_body()), 500)
        assert error["code"] == "internal_error" and "internal details" not in error["message"]
        # The same connection still answers.
        assert http.post("/v1/completions", json={"model": "base", "prompt": "hi", "max_tokens": 2}).status_code == 200
    logged = rows(tmp)[before:]
    assert [r["status"] for r in logged] == [500, 200]


def _wait_for_row(tmp, request_count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rows(tmp)
        if len(found) >= request_count:
            return found
        time.sleep(0.1)
    raise AssertionError("no log row")


def test_a_client_that_gives_up_stops_its_generation(serve_store, tmp_path):
    """The worker is not started, so the request is still waiting when its client leaves: the
    server notices, logs 499 and marks the job cancelled; the worker then skips it. (A job that
    is already generating stops at its next token: see the RowStops test.)"""
    base, store = serve_store
    thread, engine, _ = start_server(tmp_path, base, store, limits=LIMITS, start_engine=False)
    with thread:
        quitter = openai.OpenAI(base_url=thread.url + "/v1", api_key="x", max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            quitter.chat.completions.create(model="base", messages=[{"role": "user", "content": "go on"}], **LONG)
        (row,) = _wait_for_row(tmp_path, 1)
        assert row["status"] == 499 and row["error_code"] == "client_closed_request"
        (job,) = engine._jobs
        assert job.cancelled.is_set()
        engine.start()
        result = job.future.result(timeout=60)
        assert result.completion_tokens == 0  # skipped, not generated for nobody
    engine.stop()


def test_the_time_budget_ends_generation_with_length(serve_store, tmp_path):
    base, store = serve_store
    limits = Limits(max_prompt_tokens=300, max_tokens=400, max_request_seconds=0.5)
    thread, engine, _ = start_server(tmp_path, base, store, limits=limits)
    # 10 ms per forward pass: 400 tokens take at least 4 s, however fast the machine.
    engine.base.model.register_forward_hook(lambda *args: time.sleep(0.01))
    with thread:
        client = openai.OpenAI(base_url=thread.url + "/v1", api_key="x", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "go on"}],
                                               **LONG)
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens < 400
    engine.stop()


def test_a_request_that_never_reaches_the_model_gets_503_with_retry_after(serve_store, tmp_path):
    base, store = serve_store
    limits = Limits(max_request_seconds=0.5)
    thread, engine, _ = start_server(tmp_path, base, store, limits=limits, start_engine=False)
    with thread:
        r = httpx.post(thread.url + CHAT, json=chat_body(), timeout=60)
        assert_error(r, 503)
        assert r.headers["retry-after"] == "1"
        assert engine.queue_depth() == 0 or engine._jobs[0].future.cancelled()
        engine.start()
    engine.stop()


def test_stream_errors_are_json_events_then_done(server, monkeypatch):
    thread, engine, tmp = server

    def broken(jobs):
        raise RuntimeError("tensor a (0) must match tensor b (1)")

    monkeypatch.setattr(engine, "_generate", broken)
    with httpx.stream("POST", thread.url + "/v1/completions", timeout=60,
                      json={"model": "base", "prompt": "hi", "stream": True, "max_tokens": 4}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "internal_error" and "tensor" not in error["message"]


def test_an_error_outside_the_generation_path_is_json_and_keeps_the_connection(server, monkeypatch):
    thread, engine, _ = server

    def broken():
        raise RuntimeError("scan failed")

    monkeypatch.setattr(engine, "scan", broken)
    with httpx.Client(base_url=thread.url, timeout=60) as http:
        assert_error(http.get("/v1/models"), 500)
        monkeypatch.undo()
        assert http.get("/v1/models").status_code == 200


def test_text_the_database_cannot_encode_is_logged_cleaned(tmp_path):
    from affina.record.requestlog import LogEntry
    from affina.serve.guards import loggable

    log = RequestLog(f"sqlite:///{tmp_path / 'requests.db'}")
    entry = LogEntry(request_id="r1", endpoint="completions", status=200, latency_ms=1.0,
                     prompt=[{"role": "user", "content": "a\ud800b"}], response="x\udfff")
    with pytest.raises(Exception):
        log.write(entry)
    log.write(loggable(entry))
    (row,) = list(log.query())
    assert row["prompt"] == [{"role": "user", "content": "a\ufffdb"}] and row["response"] == "x\ufffd"
