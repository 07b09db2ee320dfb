"""The loop end to end on a tiny model: served traffic moves to a new input style, people correct
the replies, drift is detected window after window, the policy retrains through the jobs API (a
fine-tuning job continuing the served version with replay, run by a real worker process), and
promotion happens only when the earlier evaluation set did not regress: bad corrections are
refused, good ones promoted. The first retraining is submitted over HTTP (`affina monitor --loop
--jobs-url`), the second by the server's own scheduled monitor into its own queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest
import yaml

from affina.govern.lineage import lineage
from affina.govern.registry import lookup, parse_ref, register_run, set_alias, show_model
from affina.jobs.loop_submit import HttpQueue, JobsSubmitter
from affina.monitor.drift import load_settings, resolve_target
from affina.monitor.history import MonitorStore
from affina.monitor.loop import load_policy, run_loop
from affina.monitor.run import monitor_once
from affina.record.requestlog import RequestLog
from tests.monitor.conftest import ROOT, send, traffic, train_listing_run, write_rows
from tests.serve.conftest import ServerThread

NAME = "shop@champion"
SETTING_LINES = ["window=30", "min_samples=20", "permutations=100", "alpha=0.01"]
SETTINGS = load_settings(None, SETTING_LINES)
REFUSAL = "Sorry, I cannot help with that request."
# Keys a fine-tuning job takes: five epochs of batch 8 capped at 30 steps, short evaluations.
TRAIN = ["train.max_steps=30", "train.epochs=5", "train.batch_size=8", "eval.max_new_tokens=8"]
# Bad corrections, no replay, a high learning rate: the earlier task is forgotten. Good
# corrections, half replay, a gentle rate: it is kept (within the margin).
BAD = ["train.lr=3e-2"]
GOOD = ["train.lr=1e-2"]


def _serve_with_jobs(home, base, store):
    """A real server on loopback with the jobs API over the request log's database."""
    from affina.serve.app import Limits, create_app
    from affina.serve.auth import KeyStore
    from affina.serve.server import ServeOptions, build_engine, jobs_service

    limits = Limits(max_body_bytes=20_000, max_prompt_tokens=300, max_tokens=64, default_max_tokens=16)
    opts = ServeOptions(store=store, base=str(base), limits=limits, threads=1, registry_ttl=0.0,
                        files_dir=home / "files")
    engine = build_engine(opts)
    engine.start()
    log = RequestLog(f"sqlite:///{home / 'requests.db'}")
    service = jobs_service(opts, engine, log.url)
    app = create_app(engine, KeyStore(home / "keys.db"), log, limits, auth="open", jobs=service)
    return ServerThread(app), engine, service, log


@pytest.fixture(scope="module")
def loop_world(home, talkative_model_dir):
    mp = pytest.MonkeyPatch()  # the worker's and the scheduled monitor's subprocesses import this tree
    mp.setenv("PYTHONPATH", str(ROOT / "src") + os.pathsep + str(ROOT) + os.pathsep
              + os.environ.get("PYTHONPATH", ""))
    eval_a = write_rows(home / "listing-eval.jsonl", traffic.rows("listing", 8, seed=7))
    run = train_listing_run(home, talkative_model_dir, "shop-v1", f"eval.data={eval_a}",
                            "eval.max_new_tokens=8", "track.mlflow=false", "train.max_steps=40",
                            "train.lr=2e-2")
    register_run(run, "shop", eval_data=[str(eval_a)], metric="loss")
    set_alias("shop@1", "champion")
    thread, engine, service, log = _serve_with_jobs(home, talkative_model_dir, run.parent)
    worker = subprocess.Popen([sys.executable, "-m", "affina", "jobs", "worker", "--db", log.url],
                              stdout=subprocess.DEVNULL, stderr=open(home / "worker.log", "ab"))
    try:
        with thread:
            client = openai.OpenAI(base_url=thread.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            yield {"home": home, "client": client, "url": thread.url, "log": log.url, "eval_a": eval_a,
                   "service": service, "request_log": log, "store": run.parent}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        engine.stop()
        mp.undo()


def _serve_window(world, style: str, seed: int, correct=None) -> list[str]:
    """Serve 30 requests of `style` and give feedback on each (`correct(row)` → corrected reply)."""
    rows = traffic.rows(style, 30, seed=seed)
    ids = send(world["client"], NAME, rows)
    if correct is not None:
        for rid, row in zip(ids, rows):
            r = httpx.post(world["url"] + "/v1/feedback",
                           json={"request_id": rid, "rating": -1, "corrected_reply": correct(row)})
            assert r.status_code == 200, r.text
    return ids


def _window(world, style: str, seed: int, correct=None) -> dict:
    """A served window with feedback, then its drift report."""
    ids = _serve_window(world, style, seed, correct)
    report, _ = monitor_once(resolve_target(NAME), SETTINGS, log_url=world["log"])
    return {"report": report, "ids": ids}


def test_drift_feedback_retraining_through_jobs_and_gated_promotion(loop_world, tmp_path):
    from affina.serve.dashboard.views import lineage_graph
    from affina.serve.monitoring import MonitorScheduler

    policy = load_policy(None, ["drift_windows=2", "min_feedback=20", "replay_fraction=0.0",
                                "forgetting_margin=0.25", "margin=0.25"])
    policy.train = TRAIN + BAD
    over_http = JobsSubmitter(HttpQueue(loop_world["url"] + "/v1", None), poll_seconds=0.5)
    service = loop_world["service"]

    # Traffic as trained: no drift, nothing to do.
    calm = _window(loop_world, "listing", 11)
    assert calm["report"].drifted is False
    assert run_loop(resolve_target(NAME), policy, log_url=loop_world["log"], submit=over_http)["step"] == "waiting"

    # The new style arrives and people "correct" every reply with a refusal (bad feedback).
    first = _window(loop_world, "shifted", 12, correct=lambda row: REFUSAL)
    assert first["report"].drifted is True
    waiting = run_loop(resolve_target(NAME), policy, log_url=loop_world["log"], submit=over_http)
    assert waiting["step"] == "waiting" and "1 drifted window(s) in a row, 2 needed" in waiting["reason"]
    _window(loop_world, "shifted", 13, correct=lambda row: REFUSAL)
    bad = run_loop(resolve_target(NAME), policy, log_url=loop_world["log"], submit=over_http)
    # Retrained (a fine-tuning job continuing shop@1) on refusals, the candidate forgot the
    # earlier task: the gates refuse it.
    assert bad["step"] == "refused" and bad["version"] == "shop@2", bad["reason"]
    bad_job = service.store.get_job(bad["job"])
    assert bad_job.status == "succeeded" and bad_job.model == "shop@1"
    assert bad_job.method["affina"]["continue"]["replay_fraction"] == 0.0
    assert bad_job.hyperparameters["learning_rate"] == 3e-2 and bad_job.hyperparameters["total_steps"] == 30
    assert bad["forgetting"] and all(r["regressed"] for r in bad["forgetting"])
    assert "forgetting: FAIL" in bad["reason"] and "regresses listing-eval.jsonl" in bad["reason"]
    assert lookup(parse_ref(NAME)).version == 1
    recorded = show_model("shop")["versions"][1]["promotions"]["champion"]
    assert recorded["decision"] == "refused" and recorded["report"] == bad["report"]
    promotion = json.loads(open(bad["report"]).read())
    gates = {g["gate"]: g for g in promotion["gates"]}
    assert promotion["forgetting"][0]["regressed"] and not gates["forgetting"]["passed"]

    # Two more drifted windows, now with the right answers. The server's own scheduled monitor
    # runs the second window's report and the loop, which submits into the server's queue:
    # retrained with replay, promoted only because no earlier set regressed beyond the margin.
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"drift_windows": 2, "min_feedback": 20, "replay_fraction": 0.5,
                                           "forgetting_margin": 0.25, "margin": 0.25, "train": TRAIN + GOOD}))
    settings_file = tmp_path / "monitor.yaml"
    settings_file.write_text(yaml.safe_dump({k: yaml.safe_load(v) for k, v in
                                             (line.split("=") for line in SETTING_LINES)}))
    _window(loop_world, "shifted", 14, correct=lambda row: row["output"])
    assert run_loop(resolve_target(NAME), load_policy(policy_file), log_url=loop_world["log"],
                    submit=over_http)["step"] == "waiting"
    good_ids = _serve_window(loop_world, "shifted", 15, correct=lambda row: row["output"])
    scheduler = MonitorScheduler(3600, store=loop_world["store"], log=loop_world["request_log"], models=[NAME],
                                 config=settings_file, policy=policy_file, jobs=service)
    scheduler.run_once()
    assert scheduler.runs[-1]["exit"] == 0, scheduler.runs[-1]
    loop_log = MonitorStore().directory(NAME) / "loop.jsonl"
    good = json.loads(loop_log.read_text().splitlines()[-1])
    assert good["version"] == "shop@3"
    regressed = [r for r in good["forgetting"] if r["regressed"]]
    assert (good["step"] == "promoted") == (not regressed and "metric: pass" in good["reason"])
    assert good["step"] == "promoted", good["reason"]
    assert lookup(parse_ref(NAME)).version == 3
    good_job = service.store.get_job(good["job"])
    assert good_job.owner is None and good_job.metadata == {"trigger": "retraining loop", "monitored": NAME}

    # Every step is in the lineage: the job, the trigger (drift reports, the feedback's request
    # ids), the continuation of its parent with its replay and forgetting table, the promotion.
    info = lineage("shop@3")
    trigger, continual = info["run"]["trigger"], info["run"]["continual"]
    assert info["job"]["job_id"] == good_job.id and info["job"]["continues"] == "shop@1"
    assert trigger["job"]["id"] == good_job.id and trigger["continued"] == "shop@1"
    assert set(good_ids) <= set(trigger["feedback"]["request_ids"])
    assert not set(first["ids"]) & set(trigger["feedback"]["request_ids"])  # used once, by shop@2
    assert len(trigger["drift_reports"]) == 2 and all(trigger["drift_reports"])
    assert continual["version"] == "shop@1" and continual["replay"]["fraction"] == 0.5
    assert continual["replay"]["replay_rows"] > 0 and continual["forgetting"]
    shop3 = next(v for v in info["registry"] if v["name"] == "shop")
    assert shop3["parent"] == "shop@1" and shop3["promotions"]["champion"]["decision"] == "promoted"
    assert good_job.registered_as in [f"{v['name']}@{v['version']}" for v in info["registry"]]
    edges = {(e["from"], e["to"]) for e in lineage_graph(info)["edges"]}
    assert {("job", "run"), ("parent", "run"), ("run", "artifact"), ("artifact", "version:shop@3"),
            ("alias:shop@champion", "version:shop@3")} <= edges
    steps = [json.loads(l)["step"] for l in loop_log.read_text().splitlines()]
    assert steps == ["waiting", "waiting", "retraining", "trained", "registered", "refused", "waiting",
                     "retraining", "trained", "registered", "promoted"]

    # The server answers with the promoted version at once.
    send(loop_world["client"], NAME, traffic.rows("shifted", 1, seed=16))
    versions = [r["adapter_version"] for r in RequestLog(loop_world["log"]).query(model=NAME)]
    assert versions[-1] != versions[0]


def test_policy_keys_a_job_cannot_take_are_refused(tmp_path):
    from affina.errors import ConfigError
    from affina.jobs.loop_submit import job_body
    from affina.monitor.loop import TrainingJob

    job = TrainingJob("shop@champion", "shop@4", tmp_path / "t.jsonl", None, 0.25, 7,
                      ["train.max_steps=12", "train.epochs=2", "train.lr=1e-3", "eval.max_new_tokens=16"],
                      tmp_path / "run")
    body = job_body(job, job.version, "file-a", None)
    assert body["model"] == "shop@4" and body["seed"] == 7 and "validation_file" not in body
    assert body["method"]["supervised"] == {"hyperparameters": {"n_epochs": 2}}
    assert body["method"]["affina"] == {"replay_fraction": 0.25, "train": {"max_steps": 12, "lr": 1e-3},
                                        "eval": {"max_new_tokens": 16}}
    job.extra = ["data.max_length=64"]
    with pytest.raises(ConfigError, match="'data.max_length=64' cannot be set on a fine-tuning job"):
        job_body(job, job.version, "file-a", None)
