"""`affina.json`: the one file affina adds beside a standard artifact.

It records what produced the artifact: base model spec and fingerprint, data fingerprints and
row counts, method and parameter counts, seed, library versions, git commit, final metrics.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from ..errors import AffinaError

__all__ = ["MANIFEST_NAME", "SCHEMA_VERSION", "write_manifest", "read_manifest", "library_versions",
           "git_commit"]

MANIFEST_NAME = "affina.json"
SCHEMA_VERSION = 1


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("affina", "torch", "transformers", "peft", "accelerate", "datasets", "mlflow",
                 "tokenizers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git work tree the run was started from (with `+dirty`), if any."""
    try:
        cwd = str(path or Path.cwd())
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST_NAME
    body = {"schema_version": SCHEMA_VERSION, **manifest}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)  # never leave a half-written manifest
    return path


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise AffinaError(f"{directory} is not an affina run (no {MANIFEST_NAME})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AffinaError(f"{path}: corrupt manifest ({e.msg} at line {e.lineno})") from None
