"""Where affina keeps its cache, converted models and tracking store."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["affina_home"]


def affina_home() -> Path:
    """`$AFFINA_HOME`, or `~/.cache/affina`. Created on first use."""
    home = Path(os.environ.get("AFFINA_HOME") or Path.home() / ".cache" / "affina").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
