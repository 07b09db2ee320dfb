"""CLI: `affina serve`, `affina keys create|list|revoke`, `affina logs`."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from ..errors import AffinaError
from ..jobs.commands import executor_arguments, executor_flags, executor_from_args

__all__ = ["register"]


def _cmd_serve(args) -> int:
    from .app import Limits
    from .monitoring import parse_interval
    from .server import ServeOptions, serve, vllm_command

    options = ServeOptions(
        store=Path(args.store), base=args.base, host=args.host, port=args.port,
        max_adapters=args.max_adapters, max_models=args.max_models, max_queue=args.max_queue, max_batch=args.max_batch,
        batching=args.batching,
        limits=Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                      max_tokens=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
                      max_stop_tokens=args.max_stop_tokens, max_request_seconds=args.max_request_seconds),
        log_url=args.log_db, redact=args.redact, keys_path=args.keys_db, device=args.device,
        dtype=args.dtype, threads=args.threads, auth=args.auth, jobs=not args.no_jobs,
        workers=args.workers, lease_seconds=args.lease_seconds, worker_flags=executor_flags(args),
        monitor_every=parse_interval(args.monitor_every) if args.monitor_every else None,
        monitor_models=args.monitor_model or [], monitor_config=args.monitor_config,
        monitor_policy=args.monitor_policy)
    if args.workers < 0:
        raise AffinaError(f"--workers {args.workers}: give 0 or more")
    if args.executor != "local" and not args.print_vllm:
        executor = executor_from_args(args)  # the cluster answers, or one line now, not per worker
        options.executor_description = f"training on the Ray cluster at {executor.address}"
    if args.print_vllm:
        print(vllm_command(options))
        return 0
    serve(options)
    return 0


def _cmd_keys_create(args) -> int:
    from .auth import KeyStore

    key, plaintext = KeyStore(args.keys_db).create(args.name, args.models.split(","), admin=args.admin)
    print(f"created {'admin ' if key.admin else ''}API key {key.key_id} ({key.name}) for models: "
          f"{', '.join(key.models)}", file=sys.stderr)
    print("store it now; it is not shown again:", file=sys.stderr)
    print(plaintext)
    return 0


def _cmd_keys_list(args) -> int:
    from ..ui import print_table
    from .auth import KeyStore

    keys = KeyStore(args.keys_db).list(include_revoked=not args.active)
    print_table("API keys", ["key id", "name", "models", "admin", "created", "revoked"],
                [[k.key_id, k.name, ",".join(k.models), "yes" if k.admin else "", k.created_at,
                  k.revoked_at or ""] for k in keys])
    return 0


def _cmd_keys_revoke(args) -> int:
    from ..ui import info
    from .auth import KeyStore

    key = KeyStore(args.keys_db).revoke(args.key_id)
    info(f"revoked API key {key.key_id} ({key.name}) at {key.revoked_at}")
    return 0


def parse_when(text: str | None, flag: str) -> datetime | None:
    """A command-line time (`--since`, `--until`): ISO, UTC unless it names a zone."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise AffinaError(f"{flag} {text!r}: use an ISO time like 2026-11-26 or 2026-11-26T14:00 "
                          "(UTC unless it names a zone)") from None


def _cmd_logs(args) -> int:
    from ..ui import print_table
    from ..record.requestlog import RequestLog

    log = RequestLog(args.db, create=False)
    rows = log.query(model=args.model, since=parse_when(args.since, "--since"), until=parse_when(args.until, "--until"),
                     status=args.status, limit=args.limit, newest_first=args.jsonl is None)
    if args.jsonl is not None:
        out = sys.stdout if args.jsonl == "-" else open(args.jsonl, "w", encoding="utf-8")
        count = 0
        try:
            for row in rows:
                row["created_at"] = row["created_at"].isoformat()
                out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
        if out is not sys.stdout:
            print(f"wrote {count} requests to {args.jsonl}", file=sys.stderr)
        return 0
    table = [[r["created_at"].strftime("%Y-%m-%d %H:%M:%S"), r["request_id"][-12:], r["key_id"] or "",
              r["model"] or "", r["status"], r["prompt_tokens"] or 0, r["completion_tokens"] or 0,
              f"{r['latency_ms']:.0f}"] for r in rows]
    print_table(f"requests in {log.display_url} (newest first)",
                ["time (UTC)", "request", "key", "model", "status", "prompt tok", "completion tok",
                 "latency ms"], table)
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser("serve", help="serve the base model and every run in a store through "
                              "one OpenAI-compatible API")
    s.add_argument("--store", default="runs", help="model store: the directory holding run directories (default: runs)")
    s.add_argument("--base", help="base model spec (default: the base the store's runs were trained on)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; beyond "
                   "loopback needs API keys)")
    s.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    s.add_argument("--max-adapters", type=int, default=8, help="LoRA adapters (and few-shot/head runs "
                   "on the shared base) kept in memory, LRU (default: 8)")
    s.add_argument("--max-models", type=int, default=2, help="runs that need their own copy of the base "
                   "(full, partial, ia3, prefix, prompt, adapter, qlora, head+lora) kept in memory, LRU; "
                   "each costs about one base model's memory (default: 2)")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 503 (default: 64)")
    s.add_argument("--max-batch", type=int, default=8, help="requests generated together, at most "
                   "(default: 8)")
    s.add_argument("--batching", choices=("continuous", "static"), default="continuous",
                   help="continuous: greedy requests join and leave a running batch between decoding "
                   "steps; static: a batch runs until its longest answer ends, new requests wait "
                   "(default: continuous; see docs/serving.md)")
    s.add_argument("--max-body-bytes", type=int, default=1_000_000, help="(default: 1000000)")
    s.add_argument("--max-prompt-tokens", type=int, default=2048, help="(default: 2048)")
    s.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask "
                   "(default: 1024)")
    s.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request names "
                   "none (default: 256)")
    s.add_argument("--auth", choices=("open", "keys"), help="keys: every request needs an API key "
                   "(even once every key is revoked); open: no keys, loopback only. Fixed at start-up "
                   "(default: keys when any key exists or when bound beyond loopback, else open)")
    s.add_argument("--max-stop-tokens", type=int, default=64, help="longest stop string, in tokens "
                   "(at most 4 per request; default: 64)")
    s.add_argument("--max-request-seconds", type=float, default=120.0, help="wall-clock budget of one "
                   "request: generation stops there with finish_reason length; a request still "
                   "queued then gets 503 (default: 120)")
    s.add_argument("--log-db", help="request log database URL (default: sqlite in $AFFINA_HOME/serve)")
    s.add_argument("--redact", action="store_true", help="log prompt/response hashes, not their text")
    s.add_argument("--keys-db", type=Path, help="API key file (default: $AFFINA_HOME/serve/keys.db)")
    s.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    s.add_argument("--dtype", help="float32, bfloat16, float16 (default: per device)")
    s.add_argument("--threads", type=int, help="CPU threads for generation (default: torch's choice)")
    s.add_argument("--monitor-every", metavar="INTERVAL", help="write a drift report of each monitored "
                   "model every INTERVAL (90s, 30m, 1h, 1d), in a subprocess beside the API; see "
                   "docs/monitoring.md (default: off)")
    s.add_argument("--monitor-model", action="append", metavar="NAME", help="model name to monitor "
                   "(repeatable; default: every run and NAME@ALIAS answered in the request log)")
    s.add_argument("--monitor-config", type=Path, metavar="FILE", help="monitor settings YAML "
                   "(thresholds, alpha, window, alert hooks)")
    s.add_argument("--monitor-policy", type=Path, metavar="FILE", help="retraining policy YAML: each "
                   "scheduled report of a NAME@ALIAS also applies the loop (retrain, register, "
                   "gated promotion)")
    s.add_argument("--print-vllm", action="store_true", help="print the equivalent vLLM command and exit")
    s.add_argument("--workers", type=int, default=1, help="fine-tuning worker processes to start with "
                   "the server (0: none; run `affina jobs worker` elsewhere) (default: 1)")
    s.add_argument("--lease-seconds", type=float, help="how long a job stays a dead worker's before "
                   "another worker takes it over (default: 30)")
    executor_arguments(s)
    s.add_argument("--no-jobs", action="store_true", help="serve inference only: no /v1/files or "
                   "/v1/fine_tuning endpoints")
    s.set_defaults(func=_cmd_serve)

    k = subparsers.add_parser("keys", help="create, list and revoke API keys for `affina serve`")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    kc = ksub.add_parser("create", help="create a key (printed once)")
    kc.add_argument("--name", required=True, help="who or what the key is for")
    kc.add_argument("--models", default="*", help="comma-separated model names it may use, or '*'")
    kc.add_argument("--admin", action="store_true", help="the key sees and manages every key's "
                    "files, fine-tuning jobs and fine-tuned models (others see only their own)")
    kc.set_defaults(func=_cmd_keys_create)
    kl = ksub.add_parser("list", help="list keys (ids, names, allow-lists; never the keys)")
    kl.add_argument("--active", action="store_true", help="hide revoked keys")
    kl.set_defaults(func=_cmd_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id")
    kr.set_defaults(func=_cmd_keys_revoke)
    for parser in (kc, kl, kr):
        parser.add_argument("--keys-db", type=Path, help="API key file (default: $AFFINA_HOME/serve/keys.db)")

    g = subparsers.add_parser("logs", help="query or export the request log of `affina serve`")
    g.add_argument("--db", help="request log database URL (default: sqlite in $AFFINA_HOME/serve)")
    g.add_argument("--model", help="only this model")
    g.add_argument("--since", help="from this time (ISO, UTC unless zoned)")
    g.add_argument("--until", help="before this time (ISO)")
    g.add_argument("--status", help="a status code (200) or class (4xx)")
    g.add_argument("--limit", type=int, help="at most this many rows")
    g.add_argument("--jsonl", nargs="?", const="-", metavar="FILE",
                   help="export as JSON lines (oldest first) to FILE, or stdout without one")
    g.set_defaults(func=_cmd_logs)
