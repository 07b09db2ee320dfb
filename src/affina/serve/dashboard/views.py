"""What each dashboard page shows, as plain JSON: runs from the model store, the registry, the
lineage graph of a version and the filtered request log. Blocking functions (files, MLflow, the
log database): the router calls them off the event loop."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ...errors import AffinaError
from ...record import MANIFEST_NAME, read_inputs, read_record, read_run_config
from ...record.requestlog import RequestLog, requests_table
from ..store import ModelStore, UnknownModel, check_model_name

__all__ = ["run_dir_of", "run_summary", "run_detail", "registry_view", "lineage_view",
           "lineage_graph", "request_rows", "request_models", "request_counts", "LOWER_IS_BETTER"]

LOWER_IS_BETTER = ("loss", "perplexity")
MAX_PREDICTIONS = 50  # example rows of the before/after evaluation shown on a run's page
MAX_SCAN = 20_000  # request-log rows read for one text search before it stops


# -- runs -----------------------------------------------------------------------------------------


def run_dir_of(store: ModelStore | None, name: str) -> Path:
    """The run directory called `name` directly inside the store: the name is checked before it
    touches the file system, and a symlink may not lead out of the store."""
    check_model_name(name)
    if store is None:
        raise UnknownModel("this server has no model store (it serves a base model alone)")
    root = store.root.resolve()
    run_dir = (store.root / name).resolve()
    if root not in run_dir.parents or not (run_dir / MANIFEST_NAME).is_file():
        raise UnknownModel(f"no run called {name!r} in the model store {store.root}")
    return run_dir


def _created(record, run_dir: Path) -> str:
    if record.created:
        return record.created
    try:
        return datetime.fromtimestamp((run_dir / MANIFEST_NAME).stat().st_mtime, timezone.utc).isoformat(
            timespec="seconds")
    except OSError:
        return ""


def run_summary(name: str, run_dir: Path) -> dict:
    """One row of the runs table."""
    record = read_record(run_dir)
    m = record.metrics
    return {"name": name, "created": _created(record, run_dir), "method": record.method.name,
            "kind": record.kind, "base": record.base_model.spec,
            "trainable_params": record.method.trainable_params,
            "trainable_percent": record.method.trainable_percent,
            "steps": record.train.global_step, "seconds": record.train.seconds,
            "train_loss": record.train.train_loss, "validation_loss": m.validation_loss,
            "eval_before": m.eval_before, "eval_after": m.eval_after}


def _evaluation_table(before: dict | None, after: dict | None) -> list[dict]:
    """One row per measure: before, after, the change, and whether the change is better."""
    rows = []
    for measure in dict.fromkeys([*(before or {}), *(after or {})]):
        b, a = (before or {}).get(measure), (after or {}).get(measure)
        delta = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        better = None
        if delta is not None and delta != 0:
            better = (delta < 0) if measure in LOWER_IS_BETTER else (delta > 0)
        rows.append({"measure": measure, "before": b, "after": a, "delta": delta, "better": better})
    return rows


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _predictions(run_dir: Path) -> list[dict]:
    """The evaluation's examples side by side: prompt, reference, the base's and the run's answers."""
    before = (_read_json(run_dir / "eval" / "before.json") or {}).get("predictions") or []
    after = (_read_json(run_dir / "eval" / "after.json") or {}).get("predictions") or []
    rows = []
    for i in range(min(max(len(before), len(after)), MAX_PREDICTIONS)):
        b = before[i] if i < len(before) else {}
        a = after[i] if i < len(after) else {}
        rows.append({"prompt": a.get("prompt", b.get("prompt")), "reference": a.get("reference", b.get("reference")),
                     "before": b.get("prediction"), "after": a.get("prediction"),
                     "scores_before": b.get("scores"), "scores_after": a.get("scores")})
    return rows


def _learning_curve(run_dir: Path) -> dict:
    from ...train.plots import loss_series

    history = _read_json(run_dir / "history.json")
    if not isinstance(history, list):
        return {"train": [], "validation": []}
    train, validation = loss_series([h for h in history if isinstance(h, dict)])
    return {"train": train, "validation": validation}


def run_detail(name: str, run_dir: Path, unavailable_reason: str | None) -> dict:
    """A run's page: its record, resolved config, before/after table and learning curve."""
    from ...config import config_to_dict

    record = read_record(run_dir)
    try:
        cfg = read_run_config(run_dir)
        config, config_error = (config_to_dict(cfg) if cfg else None), None
    except AffinaError as e:
        config, config_error = None, str(e)
    m = record.metrics
    return {**run_summary(name, run_dir), "record": record.to_dict(), "config": config,
            "config_error": config_error, "servable": unavailable_reason is None,
            "unavailable_reason": unavailable_reason,
            "evaluation": _evaluation_table(m.eval_before, m.eval_after),
            "predictions": _predictions(run_dir), "learning_curve": _learning_curve(run_dir),
            "best_step": record.train.best_step,
            "stop_step": record.train.stop_step if record.train.stopped_early else None}


# -- registry -------------------------------------------------------------------------------------


def _report(path: str | None) -> dict | None:
    """A promotion report, read only from the registry's own report directory (a tag is text
    anyone with registry access can set: it must not make the server read other files)."""
    from ...paths import affina_home

    if not path:
        return None
    reports = (affina_home() / "registry" / "reports").resolve()
    real = Path(path).resolve()
    if reports not in real.parents or real.suffix != ".json":
        return None
    body = _read_json(real)
    if not isinstance(body, dict):
        return None
    return {"gates": body.get("gates"), "settings": body.get("settings"),
            "results": {who: {k: v for k, v in (r or {}).items() if isinstance(v, (int, float))}
                        for who, r in (body.get("results") or {}).items()}}


def _store_name(store: ModelStore | None, run_dir: str) -> str | None:
    """The served name of a version's run, when that run lies in this server's store."""
    if store is None:
        return None
    path = Path(run_dir).resolve()
    return path.name if path.parent == store.root.resolve() else None


def registry_view(store: ModelStore | None, visible) -> list[dict]:
    """Every registered model `visible(name, version numbers, aliases)` lets through, with its
    versions, aliases and the history of alias moves and promotion decisions."""
    from ...govern.registry import list_models, show_model

    out = []
    for entry in list_models():
        info = show_model(entry["name"])
        if not visible(info["name"], [v["version"] for v in info["versions"]], list(info["aliases"])):
            continue
        for v in info["versions"]:
            v["store_name"] = _store_name(store, v["run_dir"])
            for decision in v["promotions"].values():
                decision["details"] = _report(decision.get("report"))
        for event in info["history"]:
            if event.get("kind") == "promotion":
                event["details"] = _report(event.get("report"))
        out.append(info)
    return out


# -- lineage --------------------------------------------------------------------------------------


def lineage_view(store: ModelStore | None, ref: str, log: RequestLog) -> dict:
    """`lineage` of a registered NAME@VERSION|ALIAS or of a run in the store (by its name only:
    a path from the network is never opened), with the served requests counted in this
    server's own request log, and the graph to draw."""
    from ...govern.lineage import lineage
    from ...govern.registry import parse_ref
    from ...record import artifact_version
    from ...record.requestlog import usage_summary

    if parse_ref(ref) is not None:
        from ...govern.registry import lookup

        try:
            version = lookup(parse_ref(ref))
        except AffinaError as e:  # an unknown name, version or alias
            raise UnknownModel(str(e)) from None
        info = lineage(str(version.run_dir))
        info["ref"] = ref
        from ...govern.registry import TAG_HASHES, hash_run_files

        expected = json.loads(version.tags.get(TAG_HASHES, "{}"))
        info["artifact"]["verified"] = expected == hash_run_files(version.run_dir.resolve())
    elif ref.startswith("ft:") and getattr(store, "fine_tuned", None) is not None:
        info = lineage(str(store.resolve(ref).run_dir))  # a fine-tuning job's model, by the jobs API
        info["ref"] = ref
    else:
        info = lineage(str(run_dir_of(store, ref)))
        info["ref"] = ref
    # Runs recorded before their records listed the evaluation files: inputs.json lists them.
    known = {f["path"] for f in info["sources"]}
    info["sources"] += [{"path": f.path, "role": f.role, "format": f.format or None, "rows": f.rows or None,
                         "sha256": f.sha256} for f in read_inputs(Path(info["run"]["dir"])) or []
                        if f.role == "eval" and f.path not in known]
    names = [f"{v['name']}@{v['version']}" for v in info["registry"]] + [Path(info["run"]["dir"]).name]
    if (info.get("job") or {}).get("fine_tuned_model"):
        names.append(info["job"]["fine_tuned_model"])
    artifact = Path(info["artifact"]["dir"])
    info["served"] = usage_summary(names, artifact_version(artifact) if artifact.is_dir() else None,
                                   url=log.url)
    info["store_name"] = _store_name(store, info["run"]["dir"])
    info["graph"] = lineage_graph(info)
    return info


def _short(fingerprint) -> str:
    text = str(fingerprint or "")
    return text.split(":", 1)[-1][:12] if text else "—"


def lineage_graph(info: dict) -> dict:
    """Nodes in columns (data → prepared → run → artifact → versions → aliases, requests) and
    the edges between them, for the page to draw."""
    nodes: list[dict] = []
    edges: list[dict] = []

    def node(node_id: str, kind: str, column: int, label: str, detail: list[str]) -> str:
        nodes.append({"id": node_id, "kind": kind, "column": column, "label": label,
                      "detail": [d for d in detail if d]})
        return node_id

    def edge(a: str, b: str, label: str = "") -> None:
        edges.append({"from": a, "to": b, "label": label})

    run, prepared, artifact = info["run"], info["prepared"], info["artifact"]
    base = run.get("base_model") or {}
    method = run.get("method") or {}
    run_id = node("run", "run", 2, Path(run["dir"]).name,
                  [f"{method.get('name')} · seed {run.get('seed')}",
                   f"{(run.get('train') or {}).get('global_step', 0)} steps",
                   str(run.get("created") or "")[:16].replace("T", " ")])
    base_id = node("base", "base", 1, Path(str(base.get("spec"))).name or "base model",
                   [f"fingerprint {_short(base.get('fingerprint'))}"])
    edge(base_id, run_id, "base")
    train_id = node("prepared:train", "prepared", 1, "train split",
                    [f"{prepared['train'].get('rows')} rows", f"fp {_short(prepared['train'].get('fingerprint'))}",
                     f"max_length {prepared.get('max_length')}"])
    edge(train_id, run_id, "trains")
    val_rows = prepared["validation"].get("rows")
    val_id = None
    if val_rows:
        val_id = node("prepared:validation", "prepared", 1, "validation split",
                      [f"{val_rows} rows", f"fp {_short(prepared['validation'].get('fingerprint'))}"])
        edge(val_id, run_id, "validates")
    continual = run.get("continual")
    if continual:  # continued training: the version (or run) it started from, and the replay
        replay = continual.get("replay") or {}
        parent = continual.get("version") or Path(str(continual.get("run_dir") or continual.get("from"))).name
        edge(node("parent", "version", 1, parent,
                  ["continued from", f"{replay.get('new_rows')} new + {replay.get('replay_rows')} replayed rows",
                   f"replay fraction {replay.get('fraction')}"]), run_id, "continues")
    job = info.get("job")
    if job:  # trained by a fine-tuning job: the uploaded files and the model name it gave
        edge(node("job", "job", 1, job.get("job_id") or "fine-tuning job",
                  [f"training file {job.get('training_file')}",
                   f"validation file {job['validation_file']}" if job.get("validation_file") else "",
                   str(job.get("fine_tuned_model") or "")]), run_id, "trained")
    has_validation_file = any(f.get("role") == "validation" for f in info["sources"])
    for i, f in enumerate(info["sources"]):
        role = f.get("role", "train")
        sid = node(f"source:{i}", "source", 0, Path(f["path"]).name,
                   [f"{role} · {f.get('format') or 'data'}" + (f" · {f['rows']} rows" if f.get("rows") else ""),
                    f"sha256 {_short(f.get('sha256'))}"])
        if role in ("train", "mix"):
            edge(sid, train_id)
            if val_id and not has_validation_file:
                edge(sid, val_id, "split")
        elif role == "validation" and val_id:
            edge(sid, val_id)
        else:  # eval files score the run; they do not train it
            edge(sid, run_id, "evaluates")
    state = {None: "not registered", True: "hashes verified", False: "MODIFIED since registration"}
    art_id = node("artifact", "artifact", 3, Path(artifact["dir"]).name + "/",
                  [f"{artifact.get('kind')} · {len(artifact.get('files') or {})} files",
                   state[artifact.get("verified")]])
    edge(run_id, art_id, "saves")
    aliases: list[tuple[str, str]] = []
    for v in info["registry"]:
        vid = node(f"version:{v['name']}@{v['version']}", "version", 4, f"{v['name']}@{v['version']}",
                   [f"registered {_when(v.get('created'))}",
                    f"parent {v['parent']}" if v.get("parent") else ""] +
                   [f"{alias}: {d.get('decision')}" for alias, d in (v.get("promotions") or {}).items()])
        edge(art_id, vid, "registered")
        aliases += [(vid, f"{v['name']}@{a}") for a in v.get("aliases") or []]
    for vid, alias in aliases:
        edge(node(f"alias:{alias}", "alias", 5, alias, ["alias"]), vid, "points to")
    served = info.get("served")
    if served is not None:
        count = served.get("requests", 0)
        sid = node("served", "served", 5, f"{count} request{'' if count == 1 else 's'} served",
                   [f"from {str(served['first'])[:19]}" if served.get("first") else "",
                    f"to {str(served['last'])[:19]}" if served.get("last") else ""])
        edge(art_id, sid, "answered")
    return {"nodes": nodes, "edges": edges}


def _when(millis) -> str:
    if not isinstance(millis, (int, float)):
        return ""
    return datetime.fromtimestamp(millis / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


# -- request log ----------------------------------------------------------------------------------


def _text_of(row: dict) -> str:
    prompt = row.get("prompt")
    prompt = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    return f"{prompt}\n{row.get('response') or ''}".lower()


def request_rows(log: RequestLog, *, model: str | None, status: str | None, since: datetime | None,
                 until: datetime | None, text: str | None, limit: int, visible) -> dict:
    """Newest first: rows matching every filter that `visible(model)` lets through. A text
    search reads at most MAX_SCAN rows and says so when it stopped there."""
    needle = (text or "").strip().lower()
    rows, scanned = [], 0
    for row in log.query(model=model or None, status=status or None, since=since, until=until,
                         newest_first=True, limit=None if needle else limit * 4 + 100):
        scanned += 1
        if scanned > MAX_SCAN:
            break
        if not visible(row.get("model")) or (needle and needle not in _text_of(row)):
            continue
        row["created_at"] = row["created_at"].isoformat()
        rows.append(row)
        if len(rows) >= limit:
            break
    return {"object": "list", "data": rows, "scanned": min(scanned, MAX_SCAN),
            "truncated": scanned > MAX_SCAN}


def request_models(log: RequestLog) -> list[str]:
    """Every model name the log holds a row for (the page's model filter)."""
    from sqlalchemy import distinct, select

    t = requests_table
    with log.engine.connect() as conn:
        return sorted(m for (m,) in conn.execute(select(distinct(t.c.model))) if m)


def request_counts(log: RequestLog, hours: int = 24) -> dict:
    """Requests and errors (status ≥ 400) in the last `hours`, and their median latency."""
    from sqlalchemy import case, func, select

    t = requests_table
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    with log.engine.connect() as conn:
        total, errors = conn.execute(select(func.count(), func.sum(case((t.c.status >= 400, 1), else_=0)))
                                     .where(t.c.created_at >= since)).one()
        median = conn.execute(select(t.c.latency_ms).where(t.c.created_at >= since).order_by(t.c.latency_ms)
                              .limit(1).offset(int(total or 0) // 2)).scalar() if total else None
    return {"hours": hours, "requests": int(total or 0), "errors": int(errors or 0),
            "median_latency_ms": median}
