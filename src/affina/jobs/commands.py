"""CLI: `affina jobs worker` (claim and run jobs) and `affina jobs submit|list|show|events|cancel|
pause|resume`, which mirror the HTTP API.

The client commands talk to a running `affina serve` over HTTP (`--url`, `--api-key`), not to
the database: the server is the one place that checks requests, scopes them to the caller's key
and validates files, so the CLI behaves exactly as the OpenAI client does against the same
server, works from any machine that can reach it, and needs no database credentials.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from ..errors import AffinaError

__all__ = ["register", "ApiClient"]

_TERMINAL = ("succeeded", "failed", "cancelled")


class ApiClient:
    """A small client for the server's /v1 files and fine-tuning endpoints."""

    def __init__(self, url: str, api_key: str | None):
        self.url = url.rstrip("/")
        self.api_key = api_key

    def request(self, method: str, path: str, body: dict | None = None, *, data: bytes | None = None,
                content_type: str | None = None) -> dict:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise AffinaError(f"{method} {path}: {e.code} {message}") from None
        except urllib.error.URLError as e:
            raise AffinaError(f"cannot reach {self.url} ({e.reason}): is `affina serve` running? "
                              "pass --url") from None

    def upload(self, path: Path) -> dict:
        boundary = uuid.uuid4().hex
        content = path.read_bytes()
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n".encode(),
                 (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n").encode(), content,
                 f"\r\n--{boundary}--\r\n".encode()]
        return self.request("POST", "/files", data=b"".join(parts),
                            content_type=f"multipart/form-data; boundary={boundary}")


def _client(args) -> ApiClient:
    key = args.api_key or os.environ.get("AFFINA_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return ApiClient(args.url or os.environ.get("AFFINA_URL") or "http://127.0.0.1:8000/v1", key)


def _value(text: str):
    """`8` → 8, `0.5` → 0.5, `true` → True, `[q_proj, v_proj]` → a list: YAML scalars."""
    import yaml

    return yaml.safe_load(text)


def _pairs(items: list[str] | None, flag: str, parse=_value) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AffinaError(f"{flag} {item!r}: use KEY=VALUE")
        out[key] = parse(value)
    return out


def _file_id(client: ApiClient, value: str | None) -> str | None:
    """A file id as is; a local file is uploaded first."""
    if value is None or value.startswith("file-"):
        return value
    path = Path(value)
    if not path.is_file():
        raise AffinaError(f"{value}: no such file (give a local data file or an uploaded file id)")
    uploaded = client.upload(path)
    print(f"uploaded {path} as {uploaded['id']}", file=sys.stderr)
    return uploaded["id"]


def _cmd_submit(args) -> int:
    client = _client(args)
    hp = {}
    for key, value in (("n_epochs", args.epochs), ("batch_size", args.batch_size),
                       ("learning_rate_multiplier", args.lr_multiplier)):
        if value is not None:
            hp[key] = value if value == "auto" else _value(value)
    kind = "dpo" if args.method == "dpo" else "supervised"
    method = {"type": kind, kind: {"hyperparameters": hp} if hp else {},
              "affina": {**({"method": args.method} if args.method else {}),
                         "options": _pairs(args.option, "--option"),
                         **({"train": _pairs(args.train, "--train")} if args.train else {}),
                         **({"replay_fraction": args.replay_fraction} if args.replay_fraction is not None else {})}}
    body = {"model": args.model, "training_file": _file_id(client, args.training_file),
            "validation_file": _file_id(client, args.validation_file), "method": method,
            "suffix": args.suffix, "seed": args.seed,
            "metadata": _pairs(args.metadata, "--metadata", str) or None}
    job = client.request("POST", "/fine_tuning/jobs", {k: v for k, v in body.items() if v is not None})
    print(job["id"])
    print(f"created job {job['id']} ({job['status']}); follow it with `affina jobs events "
          f"{job['id']} --follow`", file=sys.stderr)
    if args.follow:
        return _follow(client, job["id"])
    return 0


def _cmd_list(args) -> int:
    from ..ui import print_table

    client = _client(args)
    query = f"?limit={args.limit}" + "".join(f"&metadata[{k}]={v}" for k, v in
                                              _pairs(args.metadata, "--metadata", str).items())
    jobs = client.request("GET", f"/fine_tuning/jobs{query}")["data"]
    print_table("fine-tuning jobs (newest first)",
                ["job", "status", "model", "method", "created (UTC)", "fine-tuned model"],
                [[j["id"], j["status"], j["model"], (j.get("method") or {}).get("affina", {}).get("method", ""),
                  time.strftime("%Y-%m-%d %H:%M", time.gmtime(j["created_at"])),
                  j.get("fine_tuned_model") or ""] for j in jobs])
    return 0


def _cmd_show(args) -> int:
    from ..ui import print_table

    client = _client(args)
    job = client.request("GET", f"/fine_tuning/jobs/{args.job_id}")
    if args.json:
        print(json.dumps(job, indent=1))
        return 0
    hp = job["hyperparameters"]
    rows = [["status", job["status"]], ["model", job["model"]],
            ["method", json.dumps((job.get("method") or {}).get("affina", {}))],
            ["training file", job["training_file"]], ["validation file", job.get("validation_file") or ""],
            ["epochs / batch / lr multiplier",
             f"{hp.get('n_epochs')} / {hp.get('batch_size')} / {hp.get('learning_rate_multiplier')}"],
            ["seed", job["seed"]], ["fine-tuned model", job.get("fine_tuned_model") or ""],
            ["trained tokens", job.get("trained_tokens") or ""],
            ["error", (job.get("error") or {}).get("message", "")]]
    print_table(f"job {job['id']}", ["", "value"], rows)
    checkpoints = client.request("GET", f"/fine_tuning/jobs/{args.job_id}/checkpoints")["data"]
    if checkpoints:
        print_table("checkpoints", ["step", "train loss", "validation loss", "model"],
                    [[c["step_number"], _num(c["metrics"].get("train_loss")),
                      _num(c["metrics"].get("valid_loss")), c["fine_tuned_model_checkpoint"]]
                     for c in checkpoints])
    return 0


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _all_events(client: ApiClient, job_id: str) -> list[dict]:
    """Every event of a job, oldest first (the API pages newest first)."""
    events, after = [], None
    while True:
        page = client.request("GET", f"/fine_tuning/jobs/{job_id}/events?limit=100"
                              + (f"&after={after}" if after else ""))
        events += page["data"]
        if not page["has_more"] or not page["data"]:
            return list(reversed(events))
        after = page["data"][-1]["id"]


def _follow(client: ApiClient, job_id: str) -> int:
    """Print events as they come, with a progress bar over the job's steps, until it ends."""
    from tqdm.auto import tqdm

    seen: set[str] = set()
    bar = None
    while True:
        for event in _all_events(client, job_id):
            if event["id"] in seen:
                continue
            seen.add(event["id"])
            data = event.get("data") or {}
            if event.get("type") == "metrics" and data.get("total_steps"):
                if bar is None:
                    bar = tqdm(total=data["total_steps"], unit="step", desc=job_id, file=sys.stderr)
                bar.total = data["total_steps"]
                bar.update(max(0, (data.get("step") or 0) - bar.n))
                loss = data.get("train_loss")
                if loss is not None:
                    bar.set_postfix_str(f"loss {loss:.4f}")
                continue
            (bar.write if bar else print)(_format_event(event))
        job = client.request("GET", f"/fine_tuning/jobs/{job_id}")
        if job["status"] in _TERMINAL or job["status"] == "paused":
            if bar is not None:
                bar.close()
            print(f"job {job_id} {job['status']}" + (f": {job['fine_tuned_model']}" if job.get("fine_tuned_model")
                                                      else f": {(job.get('error') or {}).get('message', '')}"
                                                      if job["status"] == "failed" else ""))
            return 0 if job["status"] in ("succeeded", "paused") else 1
        time.sleep(1.0)


def _format_event(event: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.gmtime(event["created_at"]))
    level = "" if event["level"] == "info" else f"[{event['level']}] "
    return f"{stamp} {level}{event['message']}"


def _cmd_events(args) -> int:
    client = _client(args)
    if args.follow:
        return _follow(client, args.job_id)
    for event in _all_events(client, args.job_id):
        print(_format_event(event))
    return 0


def _cmd_action(action: str):
    def run(args) -> int:
        job = _client(args).request("POST", f"/fine_tuning/jobs/{args.job_id}/{action}")
        print(f"job {job['id']}: {job['status']}")
        return 0
    return run


def _cmd_worker(args) -> int:
    from ..record.requestlog import default_log_url
    from ..ui import info
    from .store import JobStore
    from .worker import DEFAULT_LEASE_SECONDS, Worker

    executor = executor_from_args(args)
    store = JobStore(args.db or os.environ.get("AFFINA_SERVICE_DB") or default_log_url())
    worker = Worker(store, lease_seconds=args.lease_seconds or DEFAULT_LEASE_SECONDS,
                    register=not args.no_register, executor=executor)
    where = f"; training on the Ray cluster at {executor.address}" if executor.name == "ray" else ""
    info(f"worker {worker.worker_id} on the queue in {store.display_url}{where}")
    worker.run_forever(once=args.once)
    return 0


def executor_arguments(p) -> None:
    """--executor and the Ray options, shared by `affina jobs worker` and `affina serve`."""
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="where a worker "
                   "trains its job: local (a subprocess on this machine) or ray (a job on an existing "
                   "Ray cluster, through its job submission API; docs/jobs.md) (default: local)")
    p.add_argument("--ray-address", metavar="URL", help="with --executor ray: the cluster's job "
                   "submission address, its dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--ray-num-cpus", type=float, default=1.0, metavar="N", help="with --executor ray: "
                   "CPUs each training asks the cluster for (default: 1)")
    p.add_argument("--ray-num-gpus", type=float, default=1.0, metavar="N", help="with --executor ray: "
                   "GPUs each training asks the cluster for; a distributed job asks for its "
                   "nproc_per_node; 0 on a cluster without GPUs (default: 1)")


def executor_from_args(args):
    """The executor the flags name; a Ray one checks the cluster answers (one line if not)."""
    from .executors import make_executor

    return make_executor(args.executor, ray_address=args.ray_address
                         or os.environ.get("RAY_API_SERVER_ADDRESS"),
                         ray_num_cpus=args.ray_num_cpus, ray_num_gpus=args.ray_num_gpus)


def executor_flags(args) -> list[str]:
    """The same flags again, for the worker processes `affina serve` starts."""
    if args.executor == "local":
        return []
    return ["--executor", args.executor, "--ray-num-cpus", f"{args.ray_num_cpus:g}",
            "--ray-num-gpus", f"{args.ray_num_gpus:g}"] + (
        ["--ray-address", args.ray_address] if args.ray_address else [])


def register(subparsers) -> None:
    j = subparsers.add_parser("jobs", help="fine-tuning jobs: run a worker, or submit, list, show, "
                              "follow and cancel jobs on a running `affina serve`")
    sub = j.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")

    w = sub.add_parser("worker", help="claim queued jobs from the service database and train them")
    w.add_argument("--db", help="service database URL, the server's --log-db (default: "
                   "$AFFINA_SERVICE_DB, else sqlite in $AFFINA_HOME/serve)")
    w.add_argument("--store", default="runs", help="unused by the worker itself (each job carries its "
                   "run directory); kept for symmetry with `affina serve` (default: runs)")
    w.add_argument("--lease-seconds", type=float, help="how long a claimed job stays this worker's "
                   "without a heartbeat (default: 30)")
    w.add_argument("--once", action="store_true", help="stop when the queue is empty")
    w.add_argument("--no-register", action="store_true", help="do not register results in the registry")
    executor_arguments(w)
    w.set_defaults(func=_cmd_worker)

    def client_args(p):
        p.add_argument("--url", help="the server's /v1 URL (default: $AFFINA_URL or http://127.0.0.1:8000/v1)")
        p.add_argument("--api-key", help="API key (default: $AFFINA_API_KEY or $OPENAI_API_KEY)")

    s = sub.add_parser("submit", help="create a fine-tuning job (local data files are uploaded first)")
    s.add_argument("--model", default="default", help="the base to fine-tune, as the server names it "
                   "(default: default), or a fine-tuned model to continue: ft:... or a registry reference "
                   "NAME@ALIAS|VERSION of a run on the server's base")
    s.add_argument("--training-file", required=True, help="a local data file or an uploaded file id")
    s.add_argument("--validation-file", help="a local data file or an uploaded file id")
    s.add_argument("--method", help="any method of `affina methods` (default: lora; a continued model "
                   "keeps its own)")
    s.add_argument("--replay-fraction", type=float, metavar="F", help="continuing a fine-tuned model: the "
                   "share of examples replayed from its earlier training data (default: 0.25)")
    s.add_argument("--option", action="append", metavar="KEY=VALUE", help="a method option (repeatable)")
    s.add_argument("--train", action="append", metavar="KEY=VALUE", help="a train key such as "
                   "save_steps or max_steps (repeatable)")
    s.add_argument("--epochs", help="n_epochs, or auto")
    s.add_argument("--batch-size", help="batch_size, or auto")
    s.add_argument("--lr-multiplier", help="learning_rate_multiplier, or auto")
    s.add_argument("--suffix", help="part of the fine-tuned model's name")
    s.add_argument("--seed", type=int)
    s.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    s.add_argument("--follow", action="store_true", help="then follow its events until it ends")
    client_args(s)
    s.set_defaults(func=_cmd_submit)

    ls = sub.add_parser("list", help="list jobs (newest first)")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="only jobs with this metadata")
    client_args(ls)
    ls.set_defaults(func=_cmd_list)

    sh = sub.add_parser("show", help="one job: status, hyperparameters, checkpoints")
    sh.add_argument("job_id")
    sh.add_argument("--json", action="store_true", help="print the job object as JSON")
    client_args(sh)
    sh.set_defaults(func=_cmd_show)

    ev = sub.add_parser("events", help="a job's events, oldest first")
    ev.add_argument("job_id")
    ev.add_argument("--follow", action="store_true", help="keep printing until the job ends, with a "
                    "progress bar over its steps")
    client_args(ev)
    ev.set_defaults(func=_cmd_events)

    for action, helptext in (("cancel", "stop a job for good"),
                             ("pause", "stop a job, keeping its last checkpoint"),
                             ("resume", "queue a paused job again; it continues from its checkpoint")):
        a = sub.add_parser(action, help=helptext)
        a.add_argument("job_id")
        client_args(a)
        a.set_defaults(func=_cmd_action(action))
