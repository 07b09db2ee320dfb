"""Content fingerprints of model weights, so a run records exactly which base it started from.

Hashing a model's weights takes seconds per GB, so the result is cached in a small JSON file
beside them, valid while every weight file keeps its name, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from affina.errors import ModelError

__all__ = ["model_fingerprint", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
CACHE_NAME = ".affina-fingerprint.json"
_CACHE_FORMAT = 1
_CHUNK = 4 * 1024 * 1024


def model_fingerprint(path: Path | str) -> str:
    """`"sha256:<hex>"` over a model's weights.

    For a directory: its top-level weight files (*.safetensors, *.bin, *.gguf), in sorted
    order, each contributing its relative name, size and contents. For a single weight file
    (a .gguf): its contents only, so renaming the file keeps its fingerprint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if not files:
            raise ModelError(f"{path}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
        cache = path / CACHE_NAME
    elif path.is_file():
        files = [path]
        cache = path.parent / f".{path.name}{CACHE_NAME}"
    else:
        raise ModelError(f"{path}: no such file or directory")

    key = [[f.name, st.st_size, st.st_mtime_ns] for f in files for st in [f.stat()]]
    cached = _read_cache(cache)
    if cached is not None and cached.get("files") == key:
        return cached["fingerprint"]

    digest = hashlib.sha256()
    for f, (name, size, _) in zip(files, key):
        if path.is_dir():
            # Name and size first, so moving bytes from one shard to another changes the hash.
            digest.update(name.encode() + b"\0" + size.to_bytes(8, "little"))
        _hash_file(f, digest)
    fingerprint = f"sha256:{digest.hexdigest()}"
    _write_cache(cache, {"format": _CACHE_FORMAT, "files": key, "fingerprint": fingerprint})
    return fingerprint


def _hash_file(path: Path, digest) -> None:
    buffer = memoryview(bytearray(_CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])


def _read_cache(cache: Path) -> dict | None:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return None
    return data


def _write_cache(cache: Path, data: dict) -> None:
    # Write-then-rename so a concurrent reader never sees half a file. A read-only model
    # directory (a shared mount, a system cache) is fine: the fingerprint is just not kept.
    try:
        fd, tmp = tempfile.mkstemp(prefix=cache.name + ".", dir=cache.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, cache)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
