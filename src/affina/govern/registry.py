"""The model registry: `NAME@version` and `NAME@alias` over MLflow's model registry.

A version points at a run directory. Its files (the artifact, the manifest, the resolved
config) are hashed at registration and verified every time the version is resolved, so a file
changed after registration is refused instead of served.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import AffinaError
from ..record import MANIFEST_NAME, default_tracking_uri, file_sha256, quiet_mlflow, read_record
from ..record.datafiles import resolve_inputs

__all__ = ["ModelRef", "RegisteredVersion", "registry_uri", "parse_ref", "register_run", "lookup",
           "resolve_ref", "set_alias", "check_alias", "list_models", "show_model", "hash_run_files",
           "file_stamps", "verify_hashes", "resolve_model_ref", "eval_data_of", "TAG_HASHES",
           "TAG_EVAL_DATA", "TAG_METRIC", "record_alias_event", "alias_history"]

TAG_HASHES = "affina.hashes"
TAG_EVAL_DATA = "affina.eval_data"
TAG_METRIC = "affina.primary_metric"
TAG_RUN_DIR = "affina.run_dir"
TAG_PARENT = "affina.parent"  # the version a continued run started from (train.continue_from)
# One registered-model tag per alias move or promotion decision, numbered in order: the history
# survives later decisions (a single tag per alias would keep only the last one).
TAG_ALIAS_EVENT = "affina.alias_event."
# Always fullmatch: `$` would also accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_REF = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})@(?P<sel>[A-Za-z0-9._-]+)")


def registry_uri() -> str:
    """`$AFFINA_TRACKING_URI`, else the same sqlite store runs are tracked in."""
    return os.environ.get("AFFINA_TRACKING_URI") or default_tracking_uri()


def _client(uri: str | None = None):
    import mlflow

    quiet_mlflow()

    uri = uri or registry_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass(frozen=True)
class ModelRef:
    name: str
    selector: str  # a version number or an alias

    @property
    def is_version(self) -> bool:
        return self.selector.isdigit()

    def __str__(self) -> str:
        return f"{self.name}@{self.selector}"


@dataclass
class RegisteredVersion:
    name: str
    version: int
    run_dir: Path
    aliases: list[str]
    tags: dict
    run_id: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(text: str) -> ModelRef | None:
    """`name@version` or `name@alias`; None when the text is not of that shape."""
    m = _REF.fullmatch(text) if isinstance(text, str) else None
    return ModelRef(m["name"], m["sel"]) if m else None


# -- hashing --------------------------------------------------------------------------------


def _artifact_files(run_dir: Path) -> list[Path]:
    artifact = read_record(run_dir).artifact_dir(run_dir)
    files = [run_dir / MANIFEST_NAME]
    if (run_dir / "config.yaml").is_file():
        files.append(run_dir / "config.yaml")
    if artifact.is_dir():
        files += sorted(p for p in artifact.rglob("*") if p.is_file())
    elif artifact.is_file():
        files.append(artifact)
    return files


def hash_run_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every file a version is made of, by path relative to the run directory."""
    return {str(p.relative_to(run_dir)): file_sha256(p) for p in _artifact_files(run_dir)}


def file_stamps(run_dir: Path) -> tuple[tuple[str, int, int, int, int], ...]:
    """(path, size, mtime_ns, ctime_ns, inode) of every file a version is made of: when none of
    these changed, the files are the ones already verified. ctime cannot be set back by a user,
    so restoring an mtime after an edit still shows."""
    out = []
    for p in _artifact_files(run_dir):
        st = p.stat()
        out.append((str(p.relative_to(run_dir)), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(out)


def verify_hashes(run_dir: Path, expected: dict[str, str], ref: str) -> None:
    for rel, digest in expected.items():
        path = run_dir / rel
        if not path.is_file():
            raise AffinaError(f"{ref}: registered file {path} is missing; the version cannot be loaded")
        if file_sha256(path) != digest:
            raise AffinaError(f"{ref}: {path} was modified after registration (sha256 mismatch); "
                              "refusing to load it — register the changed run as a new version")
    current = set(hash_run_files(run_dir))
    extra = sorted(current - set(expected))
    if extra:
        raise AffinaError(f"{ref}: {run_dir / extra[0]} was added after registration; refusing to load")


# -- registry operations ----------------------------------------------------------------------


def register_run(run_dir: Path, name: str, *, eval_data: list[str] | None = None,
                 metric: str | None = None, uri: str | None = None) -> RegisteredVersion:
    """Create `name@<next version>` for a run directory, hashing its files."""
    run_dir = Path(run_dir).resolve()
    if not _NAME.fullmatch(name):
        raise AffinaError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
                          "(at most 100 characters, starting with a letter or digit)")
    record = read_record(run_dir)
    hashes = hash_run_files(run_dir)
    client = _client(uri)
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"registered by affina from {run_dir}")
    model_tags = client.get_registered_model(name).tags
    # The evaluation set and primary metric belong to the name: promotion compares versions on it.
    if eval_data or TAG_EVAL_DATA not in model_tags:
        data = [_eval_file(p) for p in (eval_data or _run_eval_data(run_dir))]
        if data:
            client.set_registered_model_tag(name, TAG_EVAL_DATA, json.dumps(data))
    if metric or TAG_METRIC not in model_tags:
        chosen = metric or _run_primary_metric(run_dir)
        if chosen:
            client.set_registered_model_tag(name, TAG_METRIC, chosen)
    tags = {TAG_HASHES: json.dumps(hashes), TAG_RUN_DIR: str(run_dir),
            "affina.base_fingerprint": record.base_model.fingerprint or "",
            "affina.train_fingerprint": record.data.train.fingerprint or ""}
    parent = (getattr(record, "continual", None) or {}).get("version")
    if parent:
        tags[TAG_PARENT] = parent
    version = client.create_model_version(name, source=str(run_dir),
                                          run_id=record.mlflow_run_id or None, tags=tags)
    return _version(client, name, int(version.version))


def _run_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _run_eval_data(run_dir: Path) -> list[str]:
    """The run's own evaluation files, found (and verified) from its run directory."""
    resolved = resolve_inputs(run_dir).get("eval")
    if resolved is not None:
        return resolved
    return list(_run_config(run_dir).get("eval", {}).get("data") or [])


def _eval_file(path: str) -> dict:
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise AffinaError(f"evaluation data {path} not found")
    return {"path": str(p), "sha256": file_sha256(p)}


def eval_data_of(model_tags: dict) -> list[str]:
    """The evaluation set registered with a model name, each file checked against its sha256."""
    out = []
    for item in json.loads(model_tags.get(TAG_EVAL_DATA, "[]")):
        entry = item if isinstance(item, dict) else {"path": item, "sha256": None}
        path = Path(entry["path"])
        if not path.exists():
            raise AffinaError(f"the registered evaluation set {path} is gone; restore it or pass --data")
        if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            raise AffinaError(f"the registered evaluation set {path} changed since it was registered "
                              "(sha256 mismatch); restore it, or pass --data to evaluate on other data")
        out.append(str(path))
    return out


def _run_primary_metric(run_dir: Path) -> str | None:
    """The run's first eval metric; else its task's first default metric (a classifier scores
    accuracy: it has no generation loss); else loss."""
    metrics = _run_config(run_dir).get("eval", {}).get("metrics") or []
    if metrics:
        return metrics[0]
    from ..runs import method_of_record

    method, _ = method_of_record(read_record(run_dir))
    return method.task.default_metrics[0] if method.task.default_metrics else "loss"


def _version(client, name: str, version: int) -> RegisteredVersion:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise AffinaError(f"{name}@{version} is not registered; see `affina registry show {name}`") from None
    aliases = [a for a, v in client.get_registered_model(name).aliases.items() if int(v) == version]
    return RegisteredVersion(name, version, Path(mv.tags.get(TAG_RUN_DIR, mv.source)), sorted(aliases),
                             dict(mv.tags), mv.run_id)


def lookup(ref: ModelRef, uri: str | None = None) -> RegisteredVersion:
    """The version a ref names, without touching its files."""
    client = _client(uri)
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(ref.name)
    except MlflowException:
        raise AffinaError(f"no registered model named {ref.name!r}; "
                          "register one with `affina registry register RUN --name NAME`") from None
    if ref.is_version:
        return _version(client, ref.name, int(ref.selector))
    try:
        mv = client.get_model_version_by_alias(ref.name, ref.selector)
    except MlflowException:
        aliases = ", ".join(sorted(client.get_registered_model(ref.name).aliases)) or "none"
        raise AffinaError(f"{ref}: no such alias (aliases of {ref.name}: {aliases})") from None
    return _version(client, ref.name, int(mv.version))


def resolve_ref(text: str, uri: str | None = None) -> RegisteredVersion:
    """Resolve `name@version|alias` and verify the version's files against their hashes."""
    ref = parse_ref(text)
    if ref is None:
        raise AffinaError(f"{text!r} is not a model reference; use NAME@VERSION or NAME@ALIAS")
    version = lookup(ref, uri)
    expected = json.loads(version.tags.get(TAG_HASHES, "{}"))
    verify_hashes(version.run_dir, expected, str(ref))
    return version


def resolve_model_ref(ref: str, uri: str | None = None) -> str:
    """What a user-given model reference names, as a path or spec `affina.runs.open_model`
    opens: a registered NAME@VERSION|ALIAS (preferred over a same-named directory, and verified
    against its hashes) → its run directory; anything else unchanged."""
    parsed = parse_ref(ref)
    if parsed is not None and (not Path(ref).exists() or _is_registered(parsed.name, uri)):
        return str(resolve_ref(ref, uri).run_dir)
    if not Path(ref).exists() and _looks_like_path(ref):
        raise AffinaError(f"{ref}: no such file or directory (a run directory, a model directory, "
                          "a .gguf file, `default` or NAME@VERSION)")
    return ref


def _looks_like_path(ref: str) -> bool:
    """A local path rather than a hub id (`org/name`): absolute, ./ ../ ~, a .gguf file, more
    than one separator, or a first component that is a directory here (`runs/lora-...`)."""
    first = ref.split("/", 1)[0]
    return (ref.startswith(("/", "./", "../", "~")) or ref.endswith(".gguf") or ref.count("/") > 1
            or ("/" in ref and Path(first).is_dir()))


def _is_registered(name: str, uri: str | None) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client(uri).get_registered_model(name)
        return True
    except MlflowException:
        return False


def check_alias(alias: str) -> str:
    """`alias` if it can name a version: an all-digit alias would read as a version number, so
    `NAME@7` could never reach it."""
    if not isinstance(alias, str) or alias.isdigit() or not _NAME.fullmatch(alias):
        raise AffinaError(f"invalid alias {alias!r}: use letters, digits, '.', '_' or '-', not only digits")
    return alias


def set_alias(text: str, alias: str, uri: str | None = None) -> RegisteredVersion:
    ref = parse_ref(text)
    if ref is None or not ref.is_version:
        raise AffinaError(f"{text!r}: give an exact version, e.g. {text.split('@')[0]}@3")
    check_alias(alias)
    version = lookup(ref, uri)
    client = _client(uri)
    previous = client.get_registered_model(ref.name).aliases.get(alias)
    client.set_registered_model_alias(ref.name, alias, str(version.version))
    record_alias_event(client, ref.name, {"kind": "alias", "alias": alias,
                                          "from": int(previous) if previous else None,
                                          "to": version.version})
    return lookup(ref, uri)


def record_alias_event(client, name: str, event: dict) -> dict:
    """Append one alias move or promotion decision to the model's history: who (the OS user),
    when (UTC), and the event's own facts (alias, from/to versions, decision...)."""
    import getpass
    import time

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (containers)
        who = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": who, **event}
    tags = client.get_registered_model(name).tags
    number = 1 + sum(1 for k in tags if k.startswith(TAG_ALIAS_EVENT))
    client.set_registered_model_tag(name, f"{TAG_ALIAS_EVENT}{number:06d}", json.dumps(event))
    return event


def alias_history(model_tags: dict) -> list[dict]:
    """Every recorded alias move and promotion decision, oldest first."""
    return [json.loads(v) for k, v in sorted(model_tags.items()) if k.startswith(TAG_ALIAS_EVENT)]


def list_models(uri: str | None = None) -> list[dict]:
    client = _client(uri)
    out = []
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name='{rm.name}'")
        out.append({"name": rm.name, "versions": len(versions),
                    "latest": max((int(v.version) for v in versions), default=None),
                    "aliases": {a: int(v) for a, v in rm.aliases.items()}})
    return sorted(out, key=lambda r: r["name"])


def show_model(name: str, uri: str | None = None) -> dict:
    client = _client(uri)
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        raise AffinaError(f"no registered model named {name!r}") from None
    versions = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        versions.append({
            "version": int(mv.version), "run_dir": mv.tags.get(TAG_RUN_DIR, mv.source),
            "created": mv.creation_timestamp, "run_id": mv.run_id,
            "aliases": sorted(a for a, v in rm.aliases.items() if int(v) == int(mv.version)),
            "parent": mv.tags.get(TAG_PARENT),
            "promotions": {k.split(".", 2)[2]: json.loads(v) for k, v in mv.tags.items()
                           if k.startswith("affina.promotion.")},
        })
    tags = {k: v for k, v in rm.tags.items() if not k.startswith(TAG_ALIAS_EVENT)}
    return {"name": name, "tags": tags, "aliases": {a: int(v) for a, v in rm.aliases.items()},
            "versions": versions, "history": alias_history(rm.tags)}
