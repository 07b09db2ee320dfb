"""Lineage: the chain from source data to served requests, for one version or run.

source files → prepared data → run → artifact → registered versions and aliases → requests
served. And the reverse: every run and version trained on a given dataset fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AffinaError
from ..record import MANIFEST_NAME, artifact_version, read_record
from ..record.requestlog import usage_summary
from .registry import (TAG_HASHES, _client, hash_run_files, lookup, parse_ref, show_model)

__all__ = ["lineage", "format_lineage", "draw_lineage", "runs_for_dataset"]


def lineage(ref: str, *, uri: str | None = None, log_url: str | None = None) -> dict:
    """Everything known about how a version (NAME@VERSION|ALIAS) or a run directory came to be.
    `log_url`: the request log that counts its served requests (a server's --log-db; default the
    sqlite log in $AFFINA_HOME/serve)."""
    versions: list[dict] = []
    expected: dict[str, str] | None = None
    if parse_ref(ref) and not Path(ref).exists():
        version = lookup(parse_ref(ref), uri)
        run_dir = version.run_dir
        expected = json.loads(version.tags.get(TAG_HASHES, "{}"))
    else:
        run_dir = Path(ref)
        if not (run_dir / MANIFEST_NAME).is_file():
            raise AffinaError(f"{ref} is neither a registered NAME@VERSION nor a run directory")
    run_dir = run_dir.resolve()
    record = read_record(run_dir)
    config = _config(run_dir)
    current = hash_run_files(run_dir)
    versions = _versions_of_run(run_dir, uri)
    body = record.to_dict()
    data = record.data
    artifact_dir = record.artifact_dir(run_dir)
    return {
        "ref": ref,
        "sources": body["data"]["files"],
        "prepared": {
            "formats": sorted({f.format for f in data.files}),
            "chat_template": data.chat_template,
            "template_sha256": record.template.sha256 if record.template else None,
            "max_length": config.get("data", {}).get("max_length"),
            "packing": data.packing,
            "train_on_prompt": config.get("data", {}).get("train_on_prompt"),
            "train": _subset(data.train),
            "validation": _subset(data.validation),
        },
        "run": {
            "dir": str(run_dir), "mlflow_run_id": record.mlflow_run_id,
            "created": record.created, "seed": record.seed,
            "git_commit": record.git_commit, "versions": record.versions,
            "base_model": body["base_model"], "method": body["method"],
            "train": body["train"], "metrics": body["metrics"],
            "config": config,
            "eval_reports": sorted(str(p) for p in (run_dir / "eval").glob("*.json")),
            # continued training: the earlier model, the replay draw, forgetting per earlier
            # set, and what triggered it (the retraining loop: drift reports, feedback rows)
            "continual": body.get("continual"),
            "trigger": _trigger(run_dir),
        },
        "artifact": {
            "dir": str(artifact_dir), "kind": record.kind,
            "files": current,
            "verified": None if expected is None else expected == current,
        },
        "job": _job(run_dir),
        "bias": _bias(run_dir),
        "registry": versions,
        "served": _served([f"{v['name']}@{v['version']}" for v in versions] + [run_dir.name]
                          + ([_job(run_dir)["fine_tuned_model"]] if _job(run_dir) else []),
                          artifact_dir, log_url),
    }


def _job(run_dir: Path) -> dict | None:
    """The fine-tuning job that trained the run (`job.json`, written by the jobs worker): its
    id, owner and the uploaded files it trained on. None for a run started with `affina train`."""
    path = run_dir / "job.json"
    if not path.is_file():
        return None
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = ("job_id", "owner", "model", "training_file", "validation_file", "fine_tuned_model", "continues")
    return {k: job.get(k) for k in keys} if isinstance(job, dict) else None


def _bias(run_dir: Path) -> dict | None:
    """The run's last `affina bias` result (eval/bias.json): its overall figures and deltas."""
    path = run_dir / "eval" / "bias.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    label = report.get("run")
    model = next((m for m in report.get("models", []) if m.get("label") == label), {})
    return {"report": str(path), "created": report.get("created"), "against": model.get("base"),
            "items": {s: v.get("n") for s, v in report.get("items", {}).items()},
            "figures": [f for f in report.get("figures", []) if f["model"] == label and f["category"] == "all"],
            "deltas": [d for d in report.get("deltas", []) if d["category"] == "all"]}


def _subset(split) -> dict:
    out = {"rows": split.rows, "fingerprint": split.fingerprint}
    out.update({k: split.stats[k] for k in ("tokens", "loss_tokens", "truncated") if k in split.stats})
    return out


def _trigger(run_dir: Path) -> dict | None:
    """Why the retraining loop started this run (`trigger.json`, written by monitor/loop.py)."""
    path = run_dir / "trigger.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _versions_of_run(run_dir: Path, uri: str | None) -> list[dict]:
    out = []
    client = _client(uri)
    for rm in client.search_registered_models():
        info = show_model(rm.name, uri)
        for v in info["versions"]:
            if Path(v["run_dir"]).resolve() == run_dir:
                out.append({"name": rm.name, **v})
    return out


def _served(model_names: list[str], artifact_dir: Path, log_url: str | None) -> dict | None:
    """Counts and time range of logged requests answered by this artifact: by the exact adapter
    weights' hash (whatever name or alias the request used), or by run/version name."""
    version = artifact_version(artifact_dir) if artifact_dir.is_dir() else None
    return usage_summary(model_names, version, url=log_url)


def format_lineage(info: dict) -> str:
    lines = [f"lineage of {info['ref']}", ""]
    job = info.get("job")
    if job:
        files = f"training file {job['training_file']}" + (
            f", validation file {job['validation_file']}" if job.get("validation_file") else "")
        lines += ["fine-tuning job", f"  {job['job_id']} ({files}; key {job.get('owner') or '-'})",
                  f"  fine-tuned model {job['fine_tuned_model']}"]
        if job.get("continues"):
            lines.append(f"  continues {job['model']} ({job['continues']})")
    lines.append("source data")
    for f in info["sources"]:
        lines.append(f"  {f.get('role', '?'):<10} {f['path']}  ({f.get('format')}, {f.get('rows')} rows, "
                     f"sha256 {str(f.get('sha256', ''))[:16]}…)")
    p = info["prepared"]
    lines += ["prepared data",
              f"  formats {', '.join(p['formats'])}; template {p['chat_template']}; max_length "
              f"{p['max_length']}; packing {p['packing'] or 'off'}; train_on_prompt {p['train_on_prompt']}",
              f"  train      {p['train'].get('rows')} rows  {p['train'].get('fingerprint')}",
              f"  validation {p['validation'].get('rows')} rows  {p['validation'].get('fingerprint')}"]
    r = info["run"]
    base = r["base_model"] or {}
    method = r["method"] or {}
    lines += ["run", f"  {r['dir']}  (created {r['created']}, mlflow {r['mlflow_run_id']})",
              f"  base {base.get('spec')}  {base.get('fingerprint')}",
              f"  method {method.get('name')}: {method.get('trainable_params')} trainable of "
              f"{method.get('total_params')}; seed {r['seed']}; git {r['git_commit']}",
              "  versions " + ", ".join(f"{k} {v}" for k, v in (r["versions"] or {}).items()),
              f"  metrics {json.dumps(r['metrics'])}"]
    for report in r["eval_reports"]:
        lines.append(f"  eval report {report}")
    b = info.get("bias")
    if b:
        lines.append(f"bias  ({b['created']}, against {b['against']}; {b['report']})")
        for d in b["deltas"]:
            if d["delta"] is None:
                continue
            flag = "  rose" if d["flagged"] and d["delta"] > 0 else ("  fell" if d["flagged"] else "")
            lines.append(f"  {d['suite']} {d['figure']}: {d['delta']:+.1f} "
                         f"[{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}] (n {d['n']}){flag}")
    c = r.get("continual")
    if c:
        rp = c.get("replay") or {}
        lines.append(f"  continued from {c.get('version') or c.get('from')} ({c.get('run_dir')}): "
                     f"{rp.get('new_rows')} new rows + {rp.get('replay_rows')} replayed "
                     f"(fraction {rp.get('fraction')}, seed {rp.get('seed')})")
        for f in c.get("forgetting") or []:
            lines.append(f"    forgetting on {Path(f['path']).name}: " + ", ".join(
                f"{k} {v:+.4f}" for k, v in sorted(f.get("delta", {}).items())))
    t = r.get("trigger")
    if t:
        lines.append(f"  triggered by the retraining loop at {t.get('time')}: {t.get('reason')}; "
                     f"feedback {t.get('feedback', {}).get('rows')} rows "
                     f"({len(t.get('feedback', {}).get('request_ids', []))} request ids), "
                     f"{len(t.get('drift_reports', []))} drift reports")
    a = info["artifact"]
    state = {None: "not registered", True: "verified against registered hashes",
             False: "MODIFIED since registration"}[a["verified"]]
    lines += ["artifact", f"  {a['dir']} ({a['kind']}, {len(a['files'])} files, {state})"]
    lines.append("registry")
    if not info["registry"]:
        lines.append("  (not registered)")
    for v in info["registry"]:
        aliases = f"  aliases: {', '.join(v['aliases'])}" if v["aliases"] else ""
        lines.append(f"  {v['name']}@{v['version']}{aliases}")
        for alias, decision in v.get("promotions", {}).items():
            lines.append(f"    promotion to {alias}: {decision.get('decision')} ({decision.get('metric')}, "
                         f"margin {decision.get('margin')}, {decision.get('time')})")
    lines.append("served")
    s = info["served"]
    if s is None:
        lines.append("  (no request log available)")
    else:
        lines.append(f"  {s.get('requests', 0)} requests" + (f", {s['first']} → {s['last']}"
                                                             if s.get("requests") else ""))
    return "\n".join(lines)


def draw_lineage(info: dict, path: Path) -> Path:
    """A left-to-right chain of boxes: data → prepared → run → artifact → versions → served."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, r, a = info["prepared"], info["run"], info["artifact"]
    boxes = [
        ("source data", "\n".join(f"{Path(path).name} ({rows} rows)" for path, rows in
                                   list(dict.fromkeys((f["path"], f.get("rows")) for f in info["sources"]))[:4])),
        ("prepared data", f"train {p['train'].get('rows')} rows\n{str(p['train'].get('fingerprint'))[:19]}…\n"
                          f"max_length {p['max_length']}"),
        ("run", f"{Path(r['dir']).name}\n{(r['method'] or {}).get('name')} on {Path(str((r['base_model'] or {}).get('spec'))).name}\n"
                f"seed {r['seed']}"),
        ("artifact", f"{Path(a['dir']).name}/ ({len(a['files'])} files)\n"
                     + {None: "unregistered", True: "hashes verified", False: "MODIFIED"}[a["verified"]]),
        ("registry", "\n".join(f"{v['name']}@{v['version']}" + (f" [{', '.join(v['aliases'])}]" if v["aliases"] else "")
                               for v in info["registry"]) or "not registered"),
        ("served", "no request log" if info["served"] is None else f"{info['served'].get('requests', 0)} requests"),
    ]
    fig, ax = plt.subplots(figsize=(2.6 * len(boxes), 2.6), dpi=120)
    ax.set_xlim(0, len(boxes))
    ax.set_ylim(0, 1)
    ax.axis("off")
    for i, (title, body) in enumerate(boxes):
        ax.text(i + 0.5, 0.78, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(i + 0.5, 0.45, body, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.5", fc="#eef3fb", ec="#4a6fa5"))
        if i < len(boxes) - 1:
            ax.annotate("", xy=(i + 1.08, 0.45), xytext=(i + 0.92, 0.45),
                        arrowprops=dict(arrowstyle="->", color="#4a6fa5"))
    ax.set_title(f"lineage of {info['ref']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def runs_for_dataset(fingerprint: str, *, runs_dirs: list[Path] | None = None,
                     uri: str | None = None) -> list[dict]:
    """Every run (tracked in MLflow or found in `runs_dirs`) and registered version whose data
    has this fingerprint: its training files as a whole (role `source`: what `affina data
    inspect` prints), or its train or validation split. `runs_dirs` may name directories of runs
    (`runs`) or run directories themselves (`runs/*`)."""
    if not fingerprint.startswith("sha256:"):
        fingerprint = "sha256:" + fingerprint
    found: dict[str, dict] = {}
    client = _client(uri)
    for exp in client.search_experiments():
        for key in ("affina.data.source_fingerprint", "affina.data.train_fingerprint",
                    "affina.data.validation_fingerprint"):
            for run in client.search_runs([exp.experiment_id], f"tags.`{key}` = '{fingerprint}'"):
                run_dir = run.data.tags.get("affina.run_dir", "")
                entry = found.setdefault(run_dir or run.info.run_id, {
                    "run_dir": run_dir, "mlflow_run_id": run.info.run_id, "roles": set(), "versions": []})
                entry["roles"].add(key.split(".")[2].replace("_fingerprint", ""))
    for manifest_path in _manifests(runs_dirs or []):
        try:
            record = read_record(manifest_path.parent)
        except AffinaError:
            continue  # not a finished run
        for role, value in (("source", record.data.source_fingerprint),
                            ("train", record.data.train.fingerprint),
                            ("validation", record.data.validation.fingerprint)):
            if value == fingerprint:
                run_dir = str(manifest_path.parent.resolve())
                entry = found.setdefault(run_dir, {"run_dir": run_dir,
                                                   "mlflow_run_id": record.mlflow_run_id,
                                                   "roles": set(), "versions": []})
                entry["roles"].add(role)
    for rm in client.search_registered_models():
        for v in show_model(rm.name, uri)["versions"]:
            key = str(Path(v["run_dir"]).resolve())
            if key in found:
                found[key]["versions"].append(f"{rm.name}@{v['version']}")
    return [dict(e, roles=sorted(e["roles"])) for e in found.values()]


def _manifests(paths: list[Path]) -> list[Path]:
    """Run records in or under each path: a run directory itself, or a directory of runs."""
    out: dict[Path, None] = {}
    for path in map(Path, paths):
        if (path / MANIFEST_NAME).is_file():
            out[path / MANIFEST_NAME] = None
        else:
            out.update(dict.fromkeys(sorted(path.glob(f"*/{MANIFEST_NAME}"))))
    return list(out)
