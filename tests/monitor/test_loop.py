"""The loop end to end on a tiny model: served traffic moves to a new input style, people correct
the replies, drift is detected window after window, the policy retrains (the CLI's train recipe
in a subprocess, continuing the served version with replay), and promotion happens only when the
earlier evaluation set did not regress: bad corrections are refused, good ones promoted."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from affina.govern.lineage import lineage
from affina.govern.registry import lookup, parse_ref, register_run, set_alias, show_model
from affina.monitor.drift import load_settings, resolve_target
from affina.monitor.history import MonitorStore
from affina.monitor.loop import load_policy, run_loop
from affina.monitor.run import monitor_once
from affina.record.requestlog import RequestLog
from tests.monitor.conftest import send, traffic, train_listing_run, write_rows
from tests.serve.conftest import start_server

NAME = "shop@champion"
SETTINGS = load_settings(None, ["window=30", "min_samples=20", "permutations=100", "alpha=0.01"])
REFUSAL = "Sorry, I cannot help with that request."
TRAIN = ["train.max_steps=30", "train.batch_size=8", "eval.max_new_tokens=8", "track.mlflow=false",
         "data.val_fraction=0"]
# Bad corrections, no replay, a high learning rate: the earlier task is forgotten. Good
# corrections, half replay, a gentle rate: it is kept (within the margin).
BAD = ["train.lr=3e-2"]
GOOD = ["train.lr=1e-2"]


@pytest.fixture(scope="module")
def loop_world(home, talkative_model_dir):
    eval_a = write_rows(home / "listing-eval.jsonl", traffic.rows("listing", 8, seed=7))
    run = train_listing_run(home, talkative_model_dir, "shop-v1", f"eval.data={eval_a}",
                            "eval.max_new_tokens=8", "track.mlflow=false", "train.max_steps=40",
                            "train.lr=2e-2")
    register_run(run, "shop", eval_data=[str(eval_a)], metric="loss")
    set_alias("shop@1", "champion")
    log_url = f"sqlite:///{home / 'requests.db'}"
    thread, engine, app = start_server(home, talkative_model_dir, run.parent, registry_ttl=0.0)
    with thread:
        client = openai.OpenAI(base_url=thread.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        yield {"home": home, "client": client, "url": thread.url, "log": log_url, "eval_a": eval_a}
    engine.stop()


def _window(world, style: str, seed: int, correct=None) -> dict:
    """Serve 30 requests of `style`, give feedback on each (`correct(row)` → corrected reply),
    and monitor the window."""
    rows = traffic.rows(style, 30, seed=seed)
    ids = send(world["client"], NAME, rows)
    if correct is not None:
        for rid, row in zip(ids, rows):
            r = httpx.post(world["url"] + "/v1/feedback",
                           json={"request_id": rid, "rating": -1, "corrected_reply": correct(row)})
            assert r.status_code == 200, r.text
    report, _ = monitor_once(resolve_target(NAME), SETTINGS, log_url=world["log"])
    return {"report": report, "ids": ids}


def test_drift_feedback_retraining_and_gated_promotion(loop_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the continued runs go to ./runs
    policy = load_policy(None, ["drift_windows=2", "min_feedback=20", "replay_fraction=0.0",
                                "forgetting_margin=0.25", "margin=0.25"])
    policy.train = TRAIN + BAD

    # Traffic as trained: no drift, nothing to do.
    calm = _window(loop_world, "listing", 11)
    assert calm["report"].drifted is False
    assert run_loop(resolve_target(NAME), policy, log_url=loop_world["log"])["step"] == "waiting"

    # The new style arrives and people "correct" every reply with a refusal (bad feedback).
    first = _window(loop_world, "shifted", 12, correct=lambda row: REFUSAL)
    assert first["report"].drifted is True
    waiting = run_loop(resolve_target(NAME), policy, log_url=loop_world["log"])
    assert waiting["step"] == "waiting" and "1 drifted window(s) in a row, 2 needed" in waiting["reason"]
    _window(loop_world, "shifted", 13, correct=lambda row: REFUSAL)
    bad = run_loop(resolve_target(NAME), policy, log_url=loop_world["log"])
    # Retrained on refusals, the candidate forgot the earlier task: the gates refuse it.
    assert bad["step"] == "refused" and bad["version"] == "shop@2"
    assert bad["forgetting"] and all(r["regressed"] for r in bad["forgetting"])
    assert "forgetting: FAIL" in bad["reason"] and "regresses listing-eval.jsonl" in bad["reason"]
    assert lookup(parse_ref(NAME)).version == 1
    recorded = show_model("shop")["versions"][1]["promotions"]["champion"]
    assert recorded["decision"] == "refused" and recorded["report"] == bad["report"]
    promotion = json.loads(open(bad["report"]).read())
    gates = {g["gate"]: g for g in promotion["gates"]}
    assert promotion["forgetting"][0]["regressed"] and not gates["forgetting"]["passed"]

    # Two more drifted windows, now with the right answers: retrained with replay, promoted only
    # because no earlier set regressed beyond the margin.
    policy.replay_fraction, policy.train = 0.5, TRAIN + GOOD
    _window(loop_world, "shifted", 14, correct=lambda row: row["output"])
    assert run_loop(resolve_target(NAME), policy, log_url=loop_world["log"])["step"] == "waiting"
    good_window = _window(loop_world, "shifted", 15, correct=lambda row: row["output"])
    good = run_loop(resolve_target(NAME), policy, log_url=loop_world["log"])
    assert good["version"] == "shop@3"
    regressed = [r for r in good["forgetting"] if r["regressed"]]
    assert (good["step"] == "promoted") == (not regressed and "metric: pass" in good["reason"])
    assert good["step"] == "promoted", good["reason"]
    assert lookup(parse_ref(NAME)).version == 3

    # Every step is in the lineage: the trigger (drift reports, the feedback's request ids), the
    # continuation with its replay and forgetting table, the promotion.
    info = lineage("shop@3")
    trigger, continual = info["run"]["trigger"], info["run"]["continual"]
    assert set(good_window["ids"]) <= set(trigger["feedback"]["request_ids"])
    assert not set(first["ids"]) & set(trigger["feedback"]["request_ids"])  # used once, by shop@2
    assert len(trigger["drift_reports"]) == 2 and all(trigger["drift_reports"])
    assert continual["version"] == "shop@1" and continual["replay"]["fraction"] == 0.5
    assert continual["replay"]["replay_rows"] > 0 and continual["forgetting"]
    assert info["registry"][0]["promotions"]["champion"]["decision"] == "promoted"
    steps = [json.loads(l)["step"] for l in (MonitorStore().directory(NAME) / "loop.jsonl").read_text().splitlines()]
    assert steps == ["waiting", "waiting", "retraining", "registered", "refused", "waiting",
                     "retraining", "registered", "promoted"]

    # The server answers with the promoted version at once.
    send(loop_world["client"], NAME, traffic.rows("shifted", 1, seed=16))
    versions = [r["adapter_version"] for r in RequestLog(loop_world["log"]).query(model=NAME)]
    assert versions[-1] != versions[0]
