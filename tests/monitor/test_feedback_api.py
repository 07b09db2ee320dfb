"""POST /v1/feedback on a real server with API keys, and `affina feedback export`."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from affina.data.loading import load_records
from affina.record.feedback import FeedbackStore
from affina.record.requestlog import RequestLog
from tests.monitor.conftest import ROOT, traffic, train_listing_run
from tests.serve.conftest import start_server


@pytest.fixture(scope="module")
def keyed(home, talkative_model_dir):
    from affina.serve.auth import KeyStore

    run = train_listing_run(home, talkative_model_dir, "shop", "track.mlflow=false")
    keys = KeyStore(home / "keys.db")
    _, alice = keys.create("alice", ["*"])
    _, bob = keys.create("bob", ["*"])
    thread, engine, app = start_server(home, talkative_model_dir, run.parent, keys_path=home / "keys.db")
    with thread:
        yield {"url": thread.url, "alice": alice, "bob": bob, "log": f"sqlite:///{home / 'requests.db'}",
               "home": home}
    engine.stop()


def _post(server, key, body):
    return httpx.post(server["url"] + "/v1/feedback", json=body,
                      headers={"Authorization": f"Bearer {key}"} if key else {})


def _ask(server, key, text):
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0, timeout=60)
    return client.chat.completions.create(model="shop", messages=[{"role": "user", "content": text}],
                                          temperature=0, max_tokens=6).id


def test_feedback_is_stored_only_by_the_key_that_made_the_request(keyed):
    rid = _ask(keyed, keyed["alice"], "Extract: Acme plush bear, silver, $78.99.")
    ok = _post(keyed, keyed["alice"], {"request_id": rid, "rating": -1, "corrected_reply": '{"brand": "Acme"}',
                                       "comment": "wrong brand"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["object"] == "feedback" and body["request_id"] == rid and body["model"] == "shop"
    # Another key cannot rate it, and learns nothing about whether it exists.
    other = _post(keyed, keyed["bob"], {"request_id": rid, "rating": 1})
    unknown = _post(keyed, keyed["bob"], {"request_id": "chatcmpl-nope", "rating": 1})
    assert other.status_code == unknown.status_code == 404
    assert other.json()["error"]["code"] == "request_not_found"
    assert other.json()["error"]["message"].replace(rid, "X") == unknown.json()["error"]["message"].replace(
        "chatcmpl-nope", "X")
    assert _post(keyed, None, {"request_id": rid, "rating": 1}).status_code == 401
    log = RequestLog(keyed["log"])
    rows = list(FeedbackStore(log).query(model="shop"))
    assert len(rows) == 1 and rows[0]["key_id"] and rows[0]["corrected"] == '{"brand": "Acme"}'
    assert rows[0]["prompt"][0]["content"].startswith("Extract") and rows[0]["endpoint"] == "chat.completions"


@pytest.mark.parametrize("body, param", [
    ({"request_id": "x", "rating": 3}, "rating"),
    ({"request_id": "x", "rating": True}, "rating"),
    ({"request_id": "x"}, "rating"),
    ({"rating": 1}, "request_id"),
    ({"request_id": "x", "rating": 1, "corected_reply": "typo"}, "corected_reply"),
    ({"request_id": "x", "rating": 1, "comment": ["not", "text"]}, "comment"),
])
def test_bad_feedback_is_an_openai_error_naming_the_field(keyed, body, param):
    r = _post(keyed, keyed["alice"], body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_a_body_over_the_servers_limit_is_refused_before_it_is_read_whole(keyed):
    r = _post(keyed, keyed["alice"], {"request_id": "x", "rating": 1, "corrected_reply": "a" * 40_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_feedback_on_a_refused_request_has_nothing_to_rate(keyed):
    r = httpx.post(keyed["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {keyed['alice']}"},
                   json={"model": "shop", "messages": [{"role": "user", "content": "x"}], "max_tokens": 9999})
    assert r.status_code == 400
    rid = [row for row in RequestLog(keyed["log"]).query(status="400")][-1]["request_id"]
    answer = _post(keyed, keyed["alice"], {"request_id": rid, "rating": 1})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "request_not_answered"


def test_export_turns_corrected_and_approved_replies_into_chat_rows_with_lineage(keyed, tmp_path):
    log = RequestLog(keyed["log"])
    asked = [_ask(keyed, keyed["alice"], f"Extract: listing number {i}, $1{i}.99") for i in range(6)]
    answers = {r["request_id"]: r["response"] for r in log.query() if r["request_id"] in asked}
    approved = next(rid for rid in asked if answers[rid].strip())  # the model said something
    corrected = _ask(keyed, keyed["alice"], "Mail me at jane.doe@example.com or call +1 415 555 0199")
    ignored = _ask(keyed, keyed["alice"], "what?")
    _post(keyed, keyed["alice"], {"request_id": approved, "rating": 1, "corrected_reply": None})
    _post(keyed, keyed["alice"], {"request_id": corrected, "rating": -0.5,
                                  "corrected_reply": "I will mail jane.doe@example.com today."})
    _post(keyed, keyed["alice"], {"request_id": ignored, "rating": -1})
    out = tmp_path / "feedback.jsonl"
    done = subprocess.run([sys.executable, "-m", "affina.cli", "feedback", "export", "--db", keyed["log"],
                           "--out", str(out), "--redact"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {r["lineage"]["request_id"]: r for r in rows}
    assert {approved, corrected} <= set(by_id) and ignored not in by_id
    assert by_id[approved]["messages"][-1] == {"role": "assistant", "content": answers[approved]}
    assert by_id[approved]["lineage"]["kind"] == "approved"
    fixed = by_id[corrected]
    assert fixed["lineage"]["kind"] == "corrected" and fixed["lineage"]["redacted"]
    assert fixed["messages"][-1]["content"] == "I will mail [EMAIL] today."
    assert "jane.doe" not in fixed["messages"][0]["content"] and "[PHONE]" in fixed["messages"][0]["content"]
    assert "not corrected or approved" in done.stdout
    # The rows are ordinary chat training data.
    records = load_records([str(out)]).records
    assert len(records) == len(rows) and records[0].messages[-1]["role"] == "assistant"
