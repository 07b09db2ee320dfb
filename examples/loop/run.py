"""The retraining loop on the embedded default model (SmolLM2-135M-Instruct), end to end, with
its figures: drift detection delay, false alarms on unshifted traffic, the new task before and
after, forgetting of the old task with and without replay.

    python examples/loop/run.py --workdir loop-demo        # under an hour on a busy 2-core CPU

What it does, each step with affina's own commands (printed as they run):

1. trains `products@1` (LoRA, a few dozen steps) on the product listings of
   examples/product_json, registers it with the old task's evaluation set, alias `champion`;
2. drift statistics on scripted streams of windows (examples/drift/traffic.py; the input
   figures of `affina monitor`, MiniLM embeddings, not the LLM): the false-alarm rate over
   unshifted windows, and the detection delay (windows after the shift until a window drifts,
   and until the policy's `drift_windows` in a row);
3. starts `affina serve` (with one fine-tuning worker), sends one window of listings, then
   windows of customers' questions (the new input style), and corrects every reply through
   POST /v1/feedback; after each window `affina monitor products@champion --loop --jobs-url ...`
   writes the drift report and applies the policy: at the second drifted window it submits the
   retraining as a fine-tuning job continuing `products@1` with replay, waits for it, registers
   the result and promotes it only through the gates;
4. the same retraining without replay (same feedback files, same seed, a job through the
   official OpenAI client), to measure what replay saves;
5. prints the figures and writes them to WORKDIR/figures.json.

Everything lives in WORKDIR (its own AFFINA_HOME, MLflow store, request log and runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "product_json"
_spec = importlib.util.spec_from_file_location("drift_traffic", ROOT / "examples" / "drift" / "traffic.py")
traffic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(traffic)

NAME = "products"
WINDOW = 30
SETTINGS = {"window": WINDOW, "min_samples": 20, "alpha": 0.01, "permutations": 100}


def affina(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "affina", *args]
    print(f"$ affina {shlex.join(args)}", flush=True)
    done = subprocess.run(command, text=True, capture_output=True)
    if check and done.returncode != 0:
        sys.exit(f"affina {args[0]} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def prompt_of(row: dict) -> str:
    return traffic.chat(row)[0]["content"]


# -- 2. drift statistics on scripted streams -----------------------------------------------


def stream_figures(reference: list[str], calm_windows: int, streams: int, before: int, after: int,
                   drift_windows: int) -> dict:
    """False alarms over `calm_windows` unshifted windows, and per stream (`before` calm windows,
    then `after` shifted ones) the windows after the shift until the first drifted window and
    until `drift_windows` drifted in a row (when the policy would retrain)."""
    import numpy as np

    from affina.methods.embedder import TextEmbedder
    from affina.monitor.drift import DriftSettings, input_figures

    settings = DriftSettings(**{k: v for k, v in SETTINGS.items() if k != "window"}).validate()
    need = {"listing": WINDOW * (calm_windows + streams * before), "shifted": WINDOW * streams * after}
    pools = {"listing": [prompt_of(r) for r in traffic.rows("listing", need["listing"], seed=5001)],
             "shifted": [prompt_of(r) for r in traffic.rows("shifted", need["shifted"], seed=5002)]}
    started = time.time()
    embedder = TextEmbedder(settings.embedding_model)
    ref_vecs = embedder.encode(reference).numpy().astype(np.float64)
    vecs = {k: embedder.encode(v).numpy().astype(np.float64) for k, v in pools.items()}
    print(f"embedded {len(reference)} reference and {sum(map(len, pools.values()))} window prompts "
          f"in {time.time() - started:.0f}s", flush=True)
    taken = {"listing": 0, "shifted": 0}

    def drifted(style: str, seed: int) -> bool:
        i = taken[style]
        taken[style] += WINDOW
        run = DriftSettings(**{**settings.__dict__, "seed": seed})
        figures, _ = input_figures(reference, pools[style][i:i + WINDOW], ref_vecs, vecs[style][i:i + WINDOW], run)
        flags = {f.name: bool(f.flagged) for f in figures}
        return any(flags[n] for n in settings.drift_on)

    calm = [drifted("listing", seed) for seed in range(calm_windows)]
    delays, alarms, stream_false = [], [], 0
    for s in range(streams):
        verdicts = [drifted("listing", 1000 + s * 100 + i) for i in range(before)]
        stream_false += sum(verdicts)
        verdicts = [drifted("shifted", 2000 + s * 100 + i) for i in range(after)]
        first = next((i + 1 for i, v in enumerate(verdicts) if v), None)
        run_len, alarm = 0, None
        for i, v in enumerate(verdicts):
            run_len = run_len + 1 if v else 0
            if run_len == drift_windows:
                alarm = i + 1
                break
        delays.append(first)
        alarms.append(alarm)
        print(f"stream {s}: first drifted window after the shift: {first}; policy due at: {alarm}", flush=True)
    unshifted = calm_windows + streams * before
    return {"window": WINDOW, "calm_windows": unshifted, "false_alarms": sum(calm) + stream_false,
            "false_alarm_rate": (sum(calm) + stream_false) / unshifted,
            "streams": streams, "detection_delay_windows": delays, "policy_due_after_windows": alarms}


# -- 3. the served loop ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def serve_window(client, url: str, style: str, seed: int, correct: bool, max_tokens: int) -> list[str]:
    """One window of traffic to products@champion; every reply corrected to the known answer."""
    ids = []
    for row in traffic.rows(style, WINDOW, seed=seed):
        reply = client.chat.completions.create(model=f"{NAME}@champion", messages=traffic.chat(row),
                                               temperature=0, max_tokens=max_tokens)
        ids.append(reply.id)
        if correct:
            post(url + "/v1/feedback", {"request_id": reply.id, "rating": -1, "corrected_reply": row["output"]})
    return ids


def monitor(work: Path, url: str) -> dict:
    """`affina monitor products@champion --loop --jobs-url`: the report, then the policy."""
    done = affina("monitor", f"{NAME}@champion", "--store", str(work / "runs"), "-c", str(work / "monitor.yaml"),
                  "--json", "--loop", "--policy", str(work / "policy.yaml"), "--jobs-url", url + "/v1")
    decoder, text, objects, i = json.JSONDecoder(), done.stdout, [], 0
    while i < len(text):  # the report's JSON, then the loop's outcome, among the info lines
        i = text.find("{", i)
        if i < 0:
            break
        try:
            obj, i = decoder.raw_decode(text, i)
            objects.append(obj)
        except ValueError:
            i += 1
    report = next(o for o in objects if isinstance(o, dict) and "drifted" in o)
    outcome = [o for o in objects if isinstance(o, dict) and "step" in o][-1]
    print(f"  window drifted: {report['drifted']}; loop: {outcome['step']}: {outcome['reason'][:160]}",
          flush=True)
    return {"drifted": report["drifted"], "loop": outcome}


def wait_job(client, job_id: str) -> object:
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(5)


def scores(run_dir: Path) -> dict:
    """The continued run's new-task scores (before = the earlier model) and its forgetting rows."""
    record = json.loads((run_dir / "affina.json").read_text())
    before = json.loads((run_dir / "eval" / "before.json").read_text())
    after = json.loads((run_dir / "eval" / "after.json").read_text())

    def flat(r):
        return {"loss": r.get("loss"), **r.get("metrics", {})}
    forgetting = record["continual"]["forgetting"]
    return {"new_task": {"before": flat(before), "after": flat(after)},
            "old_task": [{"set": Path(f["path"]).name, "before": f["before"], "after": f["after"],
                          "change": f["delta"]} for f in forgetting],
            "replay": {k: record["continual"]["replay"][k] for k in ("fraction", "seed", "new_rows", "replay_rows")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="loop-demo")
    p.add_argument("--steps", type=int, default=30, help="training steps of the first model (default: 30)")
    p.add_argument("--retrain-steps", type=int, default=12, help="training steps of each retraining "
                   "(default: 12)")
    p.add_argument("--calm-windows", type=int, default=16, help="unshifted windows for the false-alarm rate")
    p.add_argument("--streams", type=int, default=4, help="scripted shifts for the detection delay")
    p.add_argument("--part", choices=("all", "stream", "loop"), default="all", help="only the drift "
                   "statistics on scripted streams, or only the served loop (two processes may run them "
                   "side by side on one WORKDIR; the loop part adds the stream figures when they exist)")
    p.add_argument("--max-tokens", type=int, default=16, help="reply budget of the served requests")
    args = p.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The converted default model is reused from the usual home (no second conversion).
    usual = Path(os.environ.get("AFFINA_HOME") or Path.home() / ".cache" / "affina").expanduser()
    (work / "home").mkdir(exist_ok=True)
    if (usual / "models").is_dir() and not (work / "home" / "models").exists():
        (work / "home" / "models").symlink_to(usual / "models", target_is_directory=True)
    os.environ["AFFINA_HOME"] = str(work / "home")
    os.environ["AFFINA_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, str(ROOT / "src"))
    figures: dict = {"steps": args.steps, "retrain_steps": args.retrain_steps}
    started = time.time()

    # 1. products@1: the old task (listings → JSON), with its evaluation set registered.
    old_eval = write_rows(work / "listing-eval.jsonl",
                          [json.loads(line) for line in (DATA / "test.jsonl").read_text().splitlines()[:16]])
    evaluation = ["eval.max_new_tokens=48", "eval.batch_size=16"]
    if args.part != "stream" and not (work / "runs" / "products-v1" / "affina.json").is_file():
        affina("train", "-c", str(DATA / "run.yaml"), f"data.train={DATA / 'train.jsonl'}",
               f"eval.data={old_eval}", f"train.output_dir={work / 'runs'}", "train.run_name=products-v1",
               f"train.max_steps={args.steps}", "train.seed=0", "data.val_fraction=0", "eval.compare_base=false",
               *evaluation)
    if args.part != "stream" and affina("registry", "show", NAME, check=False).returncode != 0:
        affina("registry", "register", str(work / "runs" / "products-v1"), "--name", NAME,
               "--eval-data", str(old_eval), "--metric", "json_fields")
        affina("registry", "alias", f"{NAME}@1", "champion")

    policy = {"drift_windows": 2, "min_feedback": 40, "replay_fraction": 0.5, "eval_fraction": 0.2,
              "margin": 0.1, "forgetting_margin": 0.1, "seed": 0,
              "train": [f"train.max_steps={args.retrain_steps}", "train.epochs=10", "train.batch_size=8", "train.lr=1e-3",
                        *evaluation]}
    (work / "policy.yaml").write_text(json.dumps(policy, indent=1))
    (work / "monitor.yaml").write_text(json.dumps(SETTINGS, indent=1))

    # 2. detection delay and false alarms on scripted streams.
    if args.part in ("all", "stream"):
        reference = [prompt_of(json.loads(line)) for line in (DATA / "train.jsonl").read_text().splitlines()]
        figures["stream"] = stream_figures(reference, args.calm_windows, args.streams, before=1, after=3,
                                           drift_windows=policy["drift_windows"])
        (work / "figures-stream.json").write_text(json.dumps(figures["stream"], indent=1))
    if args.part == "stream":
        print_summary(figures)
        return 0

    # 3. the served loop.
    from openai import OpenAI

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"$ affina serve --store {work / 'runs'} --port {port} --workers 1", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "affina", "serve", "--store", str(work / "runs"),
                               "--port", str(port), "--workers", "1"],
                              stdout=open(work / "serve.log", "ab"), stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"affina serve exited; see {work / 'serve.log'}")
                time.sleep(1)
        client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=600)
        served = []
        print("window 1: listings (the trained input style)", flush=True)
        serve_window(client, url, "listing", 101, correct=False, max_tokens=args.max_tokens)
        served.append({"style": "listing", **monitor(work, url)})
        for i in range(2, 6):
            print(f"window {i}: customers' questions (the new input style), every reply corrected", flush=True)
            serve_window(client, url, "shifted", 100 + i, correct=True, max_tokens=args.max_tokens)
            served.append({"style": "shifted", **monitor(work, url)})
            if served[-1]["loop"]["step"] in ("promoted", "refused", "failed"):
                break
        outcome = served[-1]["loop"]
        if outcome["step"] not in ("promoted", "refused"):
            sys.exit(f"the loop did not retrain: {outcome}")
        shift_at = 1  # windows after the shift: the first shifted window is 1
        figures["served"] = {"windows": [{"style": w["style"], "drifted": w["drifted"], "loop": w["loop"]["step"]}
                                         for w in served],
                             "first_drifted_after_shift": next((i for i, w in enumerate(served[shift_at:], 1)
                                                                if w["drifted"]), None),
                             "retrained_after_windows": len(served) - shift_at,
                             "decision": outcome["step"], "version": outcome["version"], "job": outcome["job"],
                             "gates": outcome["reason"]}
        (work / "figures-loop.json").write_text(json.dumps(figures, indent=1))  # kept as each part ends

        # 4. the same retraining without replay: same files, same seed, through the OpenAI client.
        loop_job = client.fine_tuning.jobs.retrieve(outcome["job"])
        with_replay = lookup_run(NAME, outcome["version"])
        trigger = json.loads((with_replay / "trigger.json").read_text())
        job = client.fine_tuning.jobs.create(
            model=trigger["continued"], training_file=loop_job.training_file,
            validation_file=loop_job.validation_file, seed=loop_job.seed, suffix="no-replay",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 10, "batch_size": 8}},
                    "affina": {"replay_fraction": 0.0, "train": {"max_steps": args.retrain_steps, "lr": 1e-3},
                               "eval": {"max_new_tokens": 48, "batch_size": 16}}})
        print(f"no-replay comparison: job {job.id} continuing {trigger['continued']}", flush=True)
        done = wait_job(client, job.id)
        if done.status != "succeeded":
            sys.exit(f"job {job.id} {done.status}: {done.error}")
        without_replay = lookup_job_run(client, job.id)
        figures["with_replay"] = scores(with_replay)
        figures["without_replay"] = scores(without_replay)
    finally:
        server.terminate()
        server.wait(timeout=60)
    figures["minutes"] = round((time.time() - started) / 60, 1)
    if "stream" not in figures and (work / "figures-stream.json").is_file():  # from `--part stream`
        figures["stream"] = json.loads((work / "figures-stream.json").read_text())
    (work / "figures.json").write_text(json.dumps(figures, indent=1))
    print_summary(figures)
    print(f"figures written to {work / 'figures.json'}; lineage: affina lineage {figures['served']['version']}")
    return 0


def lookup_run(name: str, ref: str) -> Path:
    from affina.govern.registry import lookup, parse_ref

    return Path(lookup(parse_ref(ref)).run_dir)


def lookup_job_run(client, job_id: str) -> Path:
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
        registered = (event.data or {}).get("registered_as") if isinstance(event.data, dict) else None
        if registered:
            return lookup_run(NAME, registered)
    sys.exit(f"job {job_id} was not registered")


def print_summary(f: dict) -> None:
    from affina.ui import print_table

    s = f.get("stream")
    if s is None:
        s = {"detection_delay_windows": [], "policy_due_after_windows": [], "false_alarms": 0,
             "calm_windows": 0, "false_alarm_rate": float("nan"), "streams": 0}
    delays = [d for d in s["detection_delay_windows"] if d]
    alarms = [a for a in s["policy_due_after_windows"] if a]
    print_table("drift on scripted streams (windows of 30 prompts)", ["figure", "value"], [
        ["false alarms on unshifted windows", f"{s['false_alarms']}/{s['calm_windows']} ({s['false_alarm_rate']:.3f})"],
        ["windows after the shift until a drifted window", f"{delays} ({len(delays)}/{s['streams']} streams)"],
        ["windows until the policy is due (2 in a row)", f"{alarms}"],
    ])
    v = f.get("served")
    if v is None:
        return
    print_table("served loop", ["figure", "value"], [
        ["windows (style: drifted → loop)", "; ".join(f"{w['style']}: {w['drifted']} → {w['loop']}" for w in v["windows"])],
        ["first drifted window after the shift", v["first_drifted_after_shift"]],
        ["retrained after (windows after the shift)", v["retrained_after_windows"]],
        ["decision", f"{v['version']}: {v['decision']}"],
    ])
    rows = []
    for label in ("with_replay", "without_replay"):
        r = f[label]
        for measure in ("json_fields", "json_valid", "loss"):
            b, a = r["new_task"]["before"].get(measure), r["new_task"]["after"].get(measure)
            if b is not None and a is not None:
                rows.append([label.replace("_", " "), "new task (questions)", measure, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}"])
        for o in r["old_task"]:
            for measure in ("json_fields", "json_valid", "loss"):
                if measure in o["change"]:
                    rows.append([label.replace("_", " "), f"old task ({o['set']})", measure, f"{o['before'][measure]:.4f}",
                                 f"{o['after'][measure]:.4f}", f"{o['change'][measure]:+.4f}"])
    print_table("before → after the retraining (same feedback, same seed)",
                ["retraining", "set", "measure", "before", "after", "change"], rows)


if __name__ == "__main__":
    sys.exit(main())
