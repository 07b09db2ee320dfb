"""API latency of `affina serve` under 16 concurrent clients, idle and while a fine-tuning job
trains on the same machine.

    python benchmarks/service.py                    # the embedded default model (CPU)
    python benchmarks/service.py --model tiny       # the 2-layer test model, for a quick look
    python benchmarks/service.py --seconds 60 --clients 16

A real `affina serve` process (uvicorn, one local job worker, `--auth open`) on loopback, over an
empty model store; its AFFINA_HOME is a temporary directory. Clients are threads of this process
using the official openai client: half send greedy chat completions (16 new tokens) to the base,
half list fine-tuning jobs (`limit=20`), back to back, for `--seconds`. The "training" case first
uploads the sample data, creates a job through the same API and waits until the worker reports
it running; the job is cancelled afterwards. Prints p50/p99 latency per endpoint and case, and
how many requests each got through. The worker trains in its own process, never in the API's, so
listing jobs should stay fast while chat latency shows the machine's cores being shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

PROMPTS = ["Write a product title for a red ceramic mug.", "What is the capital of France?",
           "Give me three words that rhyme with cat.", "Summarise: the meeting moved to Friday."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def _load(client, seconds: float, clients: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"chat": [], "jobs.list": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.time() + seconds

    def chat(i):
        while time.time() < stop:
            t = time.perf_counter()
            try:
                client.chat.completions.create(model="base", max_tokens=16, temperature=0,
                                               messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
            except Exception as e:  # noqa: BLE001 - counted and shown, not fatal
                with lock:
                    errors.append(f"chat: {e}")
                continue
            with lock:
                latencies["chat"].append(time.perf_counter() - t)

    def listing(i):
        while time.time() < stop:
            t = time.perf_counter()
            try:
                client.fine_tuning.jobs.list(limit=20)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"jobs.list: {e}")
                continue
            with lock:
                latencies["jobs.list"].append(time.perf_counter() - t)

    threads = [threading.Thread(target=chat if i % 2 == 0 else listing, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"  {len(errors)} errors, e.g. {errors[0][:200]}", flush=True)
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("default", "tiny"), default="default")
    p.add_argument("--seconds", type=float, default=45.0)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args()

    from openai import OpenAI

    work = Path(tempfile.mkdtemp(prefix="affina-service-bench-"))
    env = dict(os.environ, AFFINA_HOME=str(work / "home"), PYTHONPATH=str(ROOT / "src"))
    if args.model == "tiny":
        from tests.helpers import make_tiny_model

        base = str(make_tiny_model(work / "tiny"))
    else:
        base = "default"
        # The converted default model is reused from the user's cache; everything else (keys,
        # files, jobs, MLflow) stays in the temporary home.
        from affina.models import resolve_model_path

        cached = resolve_model_path("default").parent
        (work / "home").mkdir()
        (work / "home" / "models").symlink_to(cached, target_is_directory=True)
    (work / "store").mkdir()
    port = _free_port()
    log_db = f"sqlite:///{work / 'service.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "affina", "serve", "--store", str(work / "store"), "--base", base,
         "--port", str(port), "--auth", "open", "--workers", "1", "--log-db", log_db],
        env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
    try:
        deadline = time.time() + 600
        while True:
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start; see {work / 'server.log'}")
                time.sleep(1)
        print(f"{args.model} model, {args.clients} clients, {args.seconds:.0f} s per case, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
        rows = []
        print("idle ...", flush=True)
        rows.append(("idle", _load(client, args.seconds, args.clients)))

        upload = client.files.create(file=(ROOT / "examples" / "product_json" / "train.jsonl").open("rb"),
                                     purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=base if args.model == "tiny" else "default",
                                             training_file=upload.id, hyperparameters={"n_epochs": 50})
        while (status := client.fine_tuning.jobs.retrieve(job.id).status) != "running":
            if status in ("failed", "cancelled", "succeeded"):
                raise SystemExit(f"the job ended ({status}) before the measurement")
            time.sleep(1)
        time.sleep(5)  # past the training process's start-up
        print(f"training ({job.id}) ...", flush=True)
        rows.append(("while a job trains", _load(client, args.seconds, args.clients)))
        still = client.fine_tuning.jobs.retrieve(job.id).status
        client.fine_tuning.jobs.cancel(job.id)
        if still != "running":
            print(f"note: the job was {still} at the end of the measurement", flush=True)

        print("\n| case | endpoint | requests | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
        for case, latencies in rows:
            for endpoint, values in latencies.items():
                print(f"| {case} | {endpoint} | {len(values)} | {len(values) / args.seconds:.1f} | "
                      f"{1000 * statistics.median(values) if values else float('nan'):.0f} | "
                      f"{1000 * _percentile(values, 0.99):.0f} |")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
