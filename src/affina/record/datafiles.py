"""Data paths that resolve from anywhere: a run directory names its data files by absolute path
and by path relative to itself, with each file's sha256, so it can be resumed, evaluated,
registered and promoted from any working directory, or copied to another machine with its data.

`inputs.json` is written when a run directory is created (before any training), so `--resume`
finds exactly the files the run started with and refuses changed ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..data.loading import file_sha256
from ..errors import AffinaError, ConfigError
from .run_record import DataFile, _build

__all__ = ["INPUTS_NAME", "artifact_version", "file_sha256", "data_file", "resolve_data_file", "write_inputs",
           "read_inputs", "resolve_inputs"]

INPUTS_NAME = "inputs.json"


def artifact_version(artifact_dir: Path) -> str:
    """`sha256:<12 hex>` of an artifact's weight files: which exact weights answered a request
    (the request log) or were trained (lineage)."""
    h = hashlib.sha256()
    artifact_dir = Path(artifact_dir)
    files = sorted(artifact_dir.glob("adapter_model.*")) or sorted(
        p for p in artifact_dir.rglob("*") if p.suffix in (".safetensors", ".bin", ".json")
        and p.is_file())
    for path in files:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:12]


def data_file(path: str | Path, role: str, run_dir: Path, *, sha256: str | None = None,
              format: str = "", rows: int = 0) -> DataFile:
    """The record of one data file as seen from `run_dir`."""
    absolute = Path(path).expanduser().resolve()
    if not absolute.exists():
        raise ConfigError(f"data file not found: {path}")
    relative = os.path.relpath(absolute, Path(run_dir).resolve())
    return DataFile(path=str(absolute), role=role, format=format, rows=rows,
                    sha256=sha256 or file_sha256(absolute), relative=Path(relative).as_posix())


def resolve_data_file(entry: DataFile, run_dir: Path) -> Path:
    """Where `entry` is now: its absolute path, else its path relative to the run directory;
    its sha256 must match in either case."""
    candidates = [Path(entry.path)]
    if entry.relative:
        candidates.append((Path(run_dir) / entry.relative).resolve())
    found = [p for p in candidates if p.exists()]
    if not found:
        raise AffinaError(f"{run_dir}: its {entry.role} data {entry.path} is gone (also not at "
                          f"{candidates[-1]}); put the file back or copy it beside the run")
    for path in found:
        if not entry.sha256 or file_sha256(path) == entry.sha256:
            return path
    raise AffinaError(f"{run_dir}: its {entry.role} data {found[0]} changed since the run started "
                      f"(sha256 {entry.sha256[:12]}… expected); restore it, or start a new run "
                      "on the changed data")


def write_inputs(run_dir: Path, files: list[DataFile]) -> Path:
    path = Path(run_dir) / INPUTS_NAME
    path.write_text(json.dumps([f.__dict__ for f in files], indent=1) + "\n", encoding="utf-8")
    return path


def read_inputs(run_dir: Path) -> list[DataFile] | None:
    path = Path(run_dir) / INPUTS_NAME
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AffinaError(f"{path}: corrupt ({e})") from None
    return [_build(DataFile, item, str(path)) for item in body]


def resolve_inputs(run_dir: Path) -> dict[str, list[str]]:
    """role → the resolved, verified paths of a run's data files (from `inputs.json`)."""
    out: dict[str, list[str]] = {}
    for entry in read_inputs(run_dir) or []:
        out.setdefault(entry.role, []).append(str(resolve_data_file(entry, run_dir)))
    return out
