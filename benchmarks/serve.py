"""`affina serve` throughput: requests/s and generated tokens/s at 1, 4, 16 and 64 concurrent clients.

    python benchmarks/serve.py                  # CPU, the embedded default model (SmolLM2-135M)
    python benchmarks/serve.py --model tiny     # the 2-layer test model, for a quick look
    python benchmarks/serve.py --device cuda
    python benchmarks/serve.py --model tiny --hostile 60   # only the hostile mix, for 60 s
    python benchmarks/serve.py --model tiny --clients 16 --cases one,mixed,mixed8
    python benchmarks/serve.py --batching static,continuous --clients 16,64   # side by side

A real server on loopback (uvicorn in a thread of this process) over the base and eight LoRA
adapters (r=8 on q/k/v/o, random weights, so their answers differ from the base's). Clients are
threads using the official openai client, each sending greedy chat requests back to back. "one"
sends every request to the same adapter; "mixed" cycles through base, alpha and beta; "mixed8"
cycles through the eight adapters, so consecutive requests need different weights. With several
`--batching` modes, one server per mode runs in this process and each (case, clients) runs under
every mode back to back, so the modes meet the same machine load. "mean batch" is the mean number
of rows per decoding step (forward pass). By default every answer is --max-tokens tokens long
(`min_tokens`, `--answers equal`): the adapters would otherwise answer with different numbers of
tokens, and requests per second would compare answer lengths, not serving. `--answers natural`
lets answers end at the model's stop token. Prints a markdown table; docs/benchmarks.md keeps the
measured figures.

`--hostile SECONDS` runs the hostile mix instead: normal clients (as above, one adapter) beside
clients that send the worst a request may ask within the server's limits (4 stop strings at the
length limit plus 4 far over it, prompts at the prompt limit asking for the most tokens, and
clients that give up after 0.5 s), for SECONDS. It reports the normal requests' latency and the
process's peak RSS (server and clients share the process).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from affina.models import model_fingerprint, resolve_model_path  # noqa: E402
from affina.serve.app import Limits, create_app  # noqa: E402
from affina.serve.auth import KeyStore  # noqa: E402
from affina.record.requestlog import RequestLog  # noqa: E402
from affina.serve.server import ServeOptions, build_engine  # noqa: E402
from affina.record import BaseModelInfo, MethodInfo, RunRecord, write_record  # noqa: E402

PROMPTS = ["Write a product title for a red ceramic mug.", "What is the capital of France?",
           "Give me three words that rhyme with cat.", "Summarise: the meeting moved to Friday.",
           "Translate 'good morning' into Spanish.", "Name a prime number bigger than ten.",
           "Suggest a name for a grey kitten.", "What colour is the sky on a clear day?"]
ADAPTERS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
CASES = {"one": ("one adapter", ["alpha"]), "mixed": ("mixed (base, alpha, beta)", ["base", "alpha", "beta"]),
         "mixed8": ("mixed (8 adapters)", ADAPTERS)}


def make_store(root: Path, base_spec: str) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = resolve_model_path(base_spec)
    store = root / "runs"
    for seed, name in enumerate(ADAPTERS, start=1):
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        torch.manual_seed(seed)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(store / name / "adapter")
        write_record(store / name, RunRecord(kind="adapter", artifact="adapter",
                                             base_model=BaseModelInfo(base_spec, fingerprint=model_fingerprint(base_dir)),
                                             method=MethodInfo("lora", {"r": 8})))
    return store


def run_case(url: str, models: list[str], clients: int, requests: int, max_tokens: int,
             equal: bool = False) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def one(i: int) -> None:
        started = time.perf_counter()
        r = client.chat.completions.create(model=models[i % len(models)], temperature=0,
                                           max_tokens=max_tokens,
                                           messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                           extra_body={"min_tokens": max_tokens} if equal else None)
        with lock:
            latencies.append(time.perf_counter() - started)
            tokens[0] += r.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"wall": wall, "rps": requests / wall, "tps": tokens[0] / wall, "per_request": tokens[0] / requests,
            "p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))]}


def rss_mb() -> float:
    """Resident memory of this process now (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_limits(**wanted) -> Limits:
    """The limits this version of affina knows (the benchmark also runs against older code)."""
    from dataclasses import fields

    known = {f.name for f in fields(Limits)}
    return Limits(**{k: v for k, v in wanted.items() if k in known})


def prompt_at_limit(engine, limit: int) -> str:
    """The longest "hello hello ..." chat prompt within `limit` tokens after the template."""
    low, high = 1, limit
    while low < high:
        mid = (low + high + 1) // 2
        size = len(engine.chat_prompt_ids([{"role": "user", "content": "hello " * mid}]))
        low, high = (mid, high) if size <= limit else (low, mid - 1)
    return "hello " * low


def hostile_case(url: str, engine, limits: Limits, seconds: float, normal_clients: int,
                 max_tokens: int) -> dict:
    """Normal traffic beside hostile traffic for `seconds`; latency of the normal requests only."""
    import httpx
    import openai

    normal = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
    word = " stop"
    stop_tokens = getattr(limits, "max_stop_tokens", 64)
    at_limit = [word * stop_tokens] * 4  # each exactly at the token limit
    assert len(engine.tokenizer(at_limit[0], add_special_tokens=False)["input_ids"]) <= stop_tokens
    over = ["z" * 10_000 + str(i) for i in range(4)]  # 10,000 characters each: refused by a bounded server
    big_prompt = prompt_at_limit(engine, limits.max_prompt_tokens)
    stop_at = time.monotonic() + seconds
    latencies, failures, hostile_sent = [], [0], {"stop at limit": 0, "stop over limit": 0,
                                                     "huge prompt": 0, "disconnect": 0}
    lock = threading.Lock()
    peak = [rss_mb()]

    def sample_rss():
        while time.monotonic() < stop_at + 5:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.2)

    def normal_client(i: int):
        n = 0
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                normal.chat.completions.create(model="alpha", temperature=0, max_tokens=max_tokens,
                                               messages=[{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}])
                with lock:
                    latencies.append(time.perf_counter() - started)
            except openai.OpenAIError:
                with lock:
                    failures[0] += 1
            n += 1

    def hostile_client(kind: str):
        chat = {"model": "alpha", "messages": [{"role": "user", "content": "go on"}], "temperature": 0}
        body = {"stop at limit": {**chat, "stop": at_limit, "max_tokens": limits.max_tokens},
                "stop over limit": {**chat, "stop": over, "max_tokens": limits.max_tokens},
                "huge prompt": {**chat, "messages": [{"role": "user", "content": big_prompt}],
                                "max_tokens": limits.max_tokens},
                "disconnect": {**chat, "max_tokens": limits.max_tokens}}[kind]
        timeout = 0.5 if kind == "disconnect" else 300
        while time.monotonic() < stop_at:
            try:
                httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout)
            except httpx.HTTPError:
                pass
            with lock:
                hostile_sent[kind] += 1

    threads = [threading.Thread(target=sample_rss, daemon=True)]
    threads += [threading.Thread(target=normal_client, args=(i,)) for i in range(normal_clients)]
    threads += [threading.Thread(target=hostile_client, args=(kind,)) for kind in hostile_sent]
    before = rss_mb()
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    latencies.sort()
    q = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] if latencies else float("nan")
    return {"normal": len(latencies), "failed": failures[0], "p50": q(0.5), "p99": q(0.99),
            "rss_before": before, "rss_peak": peak[0], "hostile": hostile_sent}


def start_server(args, base_spec: str, store: Path, tmp: Path, batching: str):
    """An engine (serve --batching `batching`) and its API under uvicorn on a free loopback port."""
    import inspect
    import socket

    import uvicorn

    tmp.mkdir(parents=True, exist_ok=True)
    known = {"batching": batching} if "batching" in inspect.signature(ServeOptions).parameters else {}
    options = ServeOptions(store=store, base=base_spec, device=args.device, max_batch=args.max_batch,
                           max_queue=256, threads=args.threads, **known,
                           limits=make_limits(max_tokens=args.max_tokens) if args.hostile is None
                           else make_limits())
    engine = build_engine(options).start()
    # Loopback only: no API keys (servers that require keys even on loopback have `auth`).
    auth = {"auth": "open"} if "auth" in inspect.signature(create_app).parameters else {}
    app = create_app(engine, KeyStore(tmp / "keys.db"), RequestLog(f"sqlite:///{tmp / 'requests.db'}"),
                     options.limits, **auth)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", engine, options, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--cases", default="one,mixed,mixed8", help=f"of {','.join(CASES)}")
    parser.add_argument("--requests", type=int, default=32, help="requests per case")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--answers", choices=["equal", "natural"], default="equal",
                        help="equal: every answer is --max-tokens tokens (min_tokens), so every mix "
                             "does the same work; natural: answers end at the model's stop token")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every row; the table "
                        "shows each figure's median over the rounds")
    parser.add_argument("--threads", type=int, help="torch threads for generation (serve --threads)")
    parser.add_argument("--batching", default="continuous", help="serve --batching modes, comma-separated "
                        "(e.g. static,continuous)")
    parser.add_argument("--hostile", type=float, metavar="SECONDS",
                        help="run the hostile mix for SECONDS instead of the throughput table")
    parser.add_argument("--normal-clients", type=int, default=4, help="normal clients in the hostile mix")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="affina-serve-bench-"))
    if args.model == "tiny":
        from tests.helpers import make_tiny_model

        base_spec = str(make_tiny_model(tmp / "tiny-base", seed=3, initializer_range=0.3))
    else:
        base_spec = "default"
    store = make_store(tmp, base_spec)
    modes = args.batching.split(",")
    if args.hostile is not None:
        modes = modes[:1]
    servers = {mode: start_server(args, base_spec, store, tmp / mode, mode) for mode in modes}
    for url, _, _, _ in servers.values():
        run_case(url, ["base", "alpha", "beta"], 3, 6, args.max_tokens)  # warm-up: adapters loaded
    url, engine, options, server = servers[modes[0]]
    if args.hostile is not None:
        r = hostile_case(url, engine, options.limits, args.hostile, args.normal_clients,
                         args.max_tokens)
        server.should_exit = True
        print(f"\nHostile mix, {args.hostile:.0f} s, model {args.model}, device {args.device}, torch threads "
              f"{args.threads or torch.get_num_threads()}, {os.cpu_count()} CPUs; limits {options.limits}\n")
        print("| normal requests | failed | p50 s | p99 s | RSS before MB | peak RSS MB | hostile requests sent |")
        print("|---|---|---|---|---|---|---|")
        sent = ", ".join(f"{k} {v}" for k, v in r["hostile"].items())
        print(f"| {r['normal']} | {r['failed']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rss_before']:.0f} "
              f"| {r['rss_peak']:.0f} | {sent} |")
        os._exit(0)  # the worker may still be busy with an old server's hostile request

    for url, _, _, _ in servers.values():
        run_case(url, ADAPTERS, 8, 8, args.max_tokens)  # all eight loaded (the default --max-adapters)
    results: dict[tuple, list[dict]] = {}  # (label, mode, clients) → one result per round
    for round_ in range(args.repeat):  # rounds interleave every row, so all meet the same load
        for label, models in (CASES[c] for c in args.cases.split(",")):
            for clients in [int(c) for c in args.clients.split(",")]:
                for mode, (url, engine, _, _) in servers.items():
                    steps = engine.step_rows
                    steps.clear()
                    requests = max(args.requests, 2 * clients)  # every client sends at least twice
                    r = run_case(url, models, clients, requests, args.max_tokens, args.answers == "equal")
                    r["requests"] = requests
                    r["mean_batch"] = sum(k * v for k, v in steps.items()) / max(sum(steps.values()), 1)
                    results.setdefault((label, mode, clients), []).append(r)
                    print(f"  round {round_ + 1}: {label}, {mode}, {clients} clients: {r['rps']:.2f} req/s, "
                          f"p95 {r['p95']:.2f} s",
                          file=sys.stderr)
    rows = []
    for (label, mode, clients), runs in results.items():
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append([label, mode, clients, runs[0]["requests"], f"{m['per_request']:.1f}", f"{m['wall']:.1f}",
                     f"{m['rps']:.2f}", f"{m['tps']:.1f}", f"{m['p50']:.2f}", f"{m['p95']:.2f}",
                     f"{m['mean_batch']:.1f}"])
    for _, engine, _, server in servers.values():
        server.should_exit = True
        engine.stop()

    name = "SmolLM2-135M-Instruct (default)" if args.model == "default" else "tiny 2-layer test model"
    threads = args.threads or torch.get_num_threads()
    print(f"\nModel: {name}, device {args.device}, torch threads {threads}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); greedy, "
          f"max_tokens {args.max_tokens}, {args.answers} answers, max batch {args.max_batch}"
          + (f"; medians of {args.repeat} rounds" if args.repeat > 1 else "") + "\n")
    header = ["requests to", "batching", "clients", "requests", "tokens/request", "wall s", "req/s", "gen tok/s",
              "p50 s", "p95 s", "mean batch"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
