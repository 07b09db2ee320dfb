"""What handing a fine-tuning job to a Ray cluster costs, beside training it in a local subprocess.

    python benchmarks/jobs_executors.py                 # the embedded default model (CPU)
    python benchmarks/jobs_executors.py --model tiny    # the 2-layer test model, for a quick look

One `affina serve --workers 0 --auth open` process on loopback (its AFFINA_HOME a temporary
directory) and a one-node Ray head on loopback (`ray start --head --block`, the CPUs given by
`--ray-cpus`, no GPU). The same job (the sample product data, LoRA r=8, `--max-steps` steps,
batch 4) is created through the official openai client twice: once trained by `affina jobs
worker` (local executor), once by `affina jobs worker --executor ray`. Prints, per executor, the
seconds from creation to the worker's claim, to the first training step's event, and to success,
and the Ray head's resident memory (all its processes) while idle.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def start_ray_head(tmp: Path, cpus: int, env: dict):
    from ray.job_submission import JobSubmissionClient

    dashboard = free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard), "--include-dashboard", "true", "--num-cpus", str(cpus),
               "--num-gpus", "0", "--object-store-memory", str(80 * 2**20), "--include-log-monitor", "false",
               "--disable-usage-stats", "--temp-dir", str(tmp / "ray")]
    for flag in ("--port", "--dashboard-agent-listen-port", "--ray-client-server-port", "--metrics-export-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port"):
        command += [flag, str(free_port())]
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, stdout=open(tmp / "ray.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"

    def client():
        try:
            return JobSubmissionClient(address)
        except ConnectionError:
            return None
    wait_for(client, 180, "the Ray head")
    return proc, address, time.monotonic() - started


def group_rss_mb(pgid: int) -> float:
    import psutil

    total = 0
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                total += p.memory_info().rss
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return total / 2**20


def run_job(client, training_id: str, steps: int, worker_cmd: list[str], env: dict, log: Path) -> dict:
    job = client.fine_tuning.jobs.create(
        model="base", training_file=training_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}},
                "affina": {"method": "lora", "options": {"r": 8}, "train": {"max_steps": steps}}})
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "queued", 120, "the job to be queued")
    queued_at = time.time()
    worker = subprocess.Popen(worker_cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    try:
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                        and j, 3600, f"job {job.id}", interval=1.0)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    if done.status != "succeeded":
        raise SystemExit(f"job {job.id} failed: {done.error}")
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))
    started = next(e.created_at for e in events if e.message.startswith("Fine-tuning job started"))
    first_step = next(e.created_at for e in events if e.type == "metrics")
    return {"claim": started - queued_at, "first step": first_step - queued_at,
            "succeeded": done.finished_at - queued_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("default", "tiny"), default="default")
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="jobs per executor (the order alternates)")
    args = parser.parse_args()
    from openai import OpenAI

    with tempfile.TemporaryDirectory(prefix="affina-bench-executors-") as tmp_name:
        tmp = Path(tmp_name)
        base = "default"
        if args.model == "tiny":
            from tests.helpers import make_tiny_model

            base = str(make_tiny_model(tmp / "tiny", seed=3, initializer_range=0.3))
        env = {**os.environ, "AFFINA_HOME": str(tmp / "home"),
               "AFFINA_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
               "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        db = f"sqlite:///{tmp / 'service.db'}"
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "affina", "serve", "--base", base, "--store",
                                   str(tmp / "runs"), "--port", str(port), "--auth", "open", "--workers", "0",
                                   "--log-db", db], env=env, stdout=open(tmp / "serve.log", "wb"),
                                  stderr=subprocess.STDOUT)
        head = None
        try:
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
            wait_for(lambda: _answers(client), 600, "the server")
            with open(ROOT / "examples/product_json/train.jsonl", "rb") as f:
                training = client.files.create(file=f, purpose="fine-tune")
            head, address, head_seconds = start_ray_head(tmp, args.ray_cpus, env)
            time.sleep(5)
            head_mb = group_rss_mb(head.pid)
            worker = [sys.executable, "-m", "affina", "jobs", "worker", "--db", db]
            commands = {"local": worker,
                        "ray": worker + ["--executor", "ray", "--ray-address", address, "--ray-num-gpus", "0"]}
            rows = []
            for round_ in range(args.rounds):  # the order alternates: the first job warms the caches
                for name in (("local", "ray") if round_ % 2 == 0 else ("ray", "local")):
                    rows.append((name, run_job(client, training.id, args.max_steps, commands[name], env,
                                               tmp / "worker.log")))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
            if head is not None:
                head.send_signal(signal.SIGTERM)
                head.wait(timeout=120)
    print(f"\nmodel {args.model}, {args.max_steps} steps at batch 4, LoRA r=8; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; Ray head started in {head_seconds:.1f} s, "
          f"{head_mb:.0f} MB resident (sum over its processes)\n")
    print("| job | executor | queued → claimed (s) | queued → first step (s) | queued → succeeded (s) |")
    print("|---|---|---|---|---|")
    for i, (name, t) in enumerate(rows, 1):
        print(f"| {i} | {name} | {t['claim']:.0f} | {t['first step']:.0f} | {t['succeeded']:.0f} |")


def _answers(client) -> bool:
    try:
        client.models.list()
        return True
    except Exception:  # noqa: BLE001 — not listening yet
        return False


if __name__ == "__main__":
    main()
