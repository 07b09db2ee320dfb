"""Drift of real served traffic (a real server's request log) against a tiny run's training data."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from affina.monitor.drift import load_settings, resolve_target
from affina.monitor.history import MonitorStore
from affina.monitor.run import monitor_once
from affina.errors import ConfigError
from tests.monitor.conftest import ROOT, send, traffic, train_listing_run
from tests.serve.conftest import start_server

SETTINGS = ["window=30", "min_samples=20", "permutations=100", "alpha=0.01"]


@pytest.fixture(scope="module")
def served(home, talkative_model_dir):
    run = train_listing_run(home, talkative_model_dir, "shop", "track.mlflow=false")
    log_url = f"sqlite:///{home / 'requests.db'}"
    thread, engine, app = start_server(home, talkative_model_dir, run.parent)
    with thread:
        client = openai.OpenAI(base_url=thread.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        yield {"home": home, "run": run, "log": log_url, "client": client, "url": thread.url}
    engine.stop()


def test_no_shift_window_stays_under_every_threshold_and_a_shift_is_flagged(served):
    settings = load_settings(None, SETTINGS)
    target = resolve_target("shop", served["run"].parent)
    assert target.run_dir == served["run"]

    send(served["client"], "shop", traffic.rows("listing", 30, seed=101))
    calm, calm_path = monitor_once(target, settings, log_url=served["log"])
    assert calm.window["requests"] == 30 and calm.drifted is False
    for f in calm.figures:  # every figure carries its threshold and both sample sizes
        assert f.n_window == 30 or f.group == "quality"
        if f.flagged is not None:
            assert f.threshold is not None and f.value is not None
    clf = calm.figure("domain_classifier")
    assert clf.n_reference == 60 and clf.value < clf.threshold

    send(served["client"], "shop", traffic.rows("shifted", 30, seed=102))
    shifted, _ = monitor_once(target, settings, log_url=served["log"])
    assert shifted.drifted is True
    clf = shifted.figure("domain_classifier")
    assert clf.value > clf.threshold and clf.p_value <= 0.02
    assert shifted.figure("mmd").flagged and shifted.figure("oov_rate").flagged
    # The most-shifted prompts are the new style's, each with its nearest training prompt.
    assert len(shifted.shifted) == 5 and all("?" in s["prompt"] for s in shifted.shifted)
    # The replies are compared with the model's earlier served replies (the calm window).
    assert shifted.figure("reply_length").detail == "reference: first 30 served replies"

    history = MonitorStore().history("shop")
    assert [h["drifted"] for h in history] == [False, True]
    assert json.loads(calm_path.read_text())["figures"][0]["name"] == "domain_classifier"


def test_metrics_show_the_latest_report(served):
    text = httpx.get(served["url"] + "/metrics").text
    lines = [l for l in text.splitlines() if l.startswith("affina_drift_") and 'model="shop"' in l]
    assert 'affina_drift_drifted{model="shop"} 1.0' in lines
    assert any(l.startswith('affina_drift_threshold{figure="domain_classifier",model="shop"}') for l in lines)
    assert 'affina_drift_samples{figure="mmd",model="shop",side="window"} 30.0' in lines


def test_cli_report_plot_page_and_alert_command(served, tmp_path):
    hook_out = tmp_path / "alert.json"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys; open({str(hook_out)!r}, 'w').write(sys.stdin.read())\n")
    html, png = tmp_path / "drift.html", tmp_path / "drift.png"
    done = subprocess.run(
        [sys.executable, "-m", "affina.cli", "monitor", "shop", "--store", str(served["run"].parent),
         "--db", served["log"], "--html", str(html), "--png", str(png),
         "--alert-command", f"{sys.executable} {hook}", *[a for s in SETTINGS for a in ("--set", s)]],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "domain_classifier" in done.stdout and "DRIFTED" in done.stdout
    assert png.stat().st_size > 10_000 and "Most-shifted prompts" in html.read_text()
    alert = json.loads(hook_out.read_text())
    assert alert["event"] == "affina.drift" and alert["model"] == "shop" and alert["drifted"] is True


def test_bad_settings_and_models_are_one_line_errors(served):
    with pytest.raises(ConfigError, match="alpha"):
        load_settings(None, ["alpha=2"])
    with pytest.raises(ConfigError, match="unknown monitor setting 'alpah'"):
        load_settings(None, ["alpah=0.1"])
    done = subprocess.run([sys.executable, "-m", "affina.cli", "monitor", "nope", "--store",
                           str(served["run"].parent), "--db", served["log"]],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "nope: not a registered" in done.stderr


def test_scheduled_monitoring_runs_beside_a_responsive_api(served, tmp_path):
    import time

    from affina.errors import AffinaError
    from affina.record.requestlog import RequestLog
    from affina.serve.monitoring import MonitorScheduler, parse_interval

    assert parse_interval("1h") == 3600 and parse_interval("90s") == 90 and parse_interval("30m") == 1800
    with pytest.raises(AffinaError, match="--monitor-every"):
        parse_interval("soon")
    config = tmp_path / "monitor.yaml"
    config.write_text("".join(f"{s.replace('=', ': ')}\n" for s in SETTINGS))
    send(served["client"], "shop", traffic.rows("listing", 30, seed=103))
    log = RequestLog(served["log"])
    scheduler = MonitorScheduler(5, store=served["run"].parent, log=log, config=config,
                                 monitor_dir=tmp_path / "monitor")
    assert scheduler.monitored() == ["shop"]  # the run answered in the log; not the base
    scheduler.start()
    try:
        answered = 0
        while not scheduler.runs:  # the API answers while the report is being made
            assert httpx.get(served["url"] + "/v1/models", timeout=30).status_code == 200
            answered += 1
            time.sleep(0.5)
    finally:
        scheduler.stop()
    assert scheduler.runs[0]["model"] == "shop" and scheduler.runs[0]["exit"] == 0, scheduler.runs
    assert answered > 0
    (history,) = MonitorStore(tmp_path / "monitor").history("shop")
    assert history["figures"]["domain_classifier"]["n_window"] == 30


def test_alert_webhook_gets_the_summary_and_a_dead_hook_is_reported():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from affina.monitor.alerts import send_alerts

    got = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/drift"
        (ok,) = send_alerts({"model": "shop", "drifted": True}, webhook=url)
        assert ok == {"hook": "webhook", "ok": True, "detail": "HTTP 204"}
        assert got == [{"event": "affina.drift", "model": "shop", "drifted": True}]
    finally:
        server.shutdown()
    (dead,) = send_alerts({"model": "shop"}, webhook=url, timeout=5)  # nobody listens any more
    (failing,) = send_alerts({"model": "shop"}, command=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    assert not dead["ok"] and not failing["ok"] and failing["detail"].startswith("exit 3")
