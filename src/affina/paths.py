"""Where affina keeps its cache, converted models and tracking store."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["affina_home", "private_file"]


def affina_home() -> Path:
    """`$AFFINA_HOME`, or `~/.cache/affina`. Created on first use."""
    home = Path(os.environ.get("AFFINA_HOME") or Path.home() / ".cache" / "affina").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def private_file(path: Path) -> Path:
    """Make sure `path` exists, created readable by its owner only (0600), in a directory that is
    created 0700 when affina creates it. For files holding secrets or users' prompts (API key
    hashes, the request log); an existing file or directory keeps the mode it has."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(path, 0o600)
    return path
