"""Terminal output: one-line status messages and summary tables (rich)."""

from __future__ import annotations

import re
import sys

from rich.console import Console
from rich.table import Table

__all__ = ["console", "info", "warn", "print_table", "set_output"]

# Numbers, percentages, sizes and "-" for missing values line up on the right.
_NUMBER = re.compile(r"^\s*(-|[-+]?[\d,]*\.?\d+(e[-+]?\d+)?\s*(%|s|ms|MB|GB|B|x)?(\s*\(.*\))?)\s*$")

console = Console(stderr=False, highlight=False)
_err = Console(stderr=True, highlight=False)


PIPE_WIDTH = 200  # columns for tables written to a file or a pipe

_mode = "normal"  # "normal", "quiet" (no status lines) or "jsonl" (stdout is for JSON lines only)


def set_output(mode: str) -> None:
    """`quiet`: keep only warnings and the final tables; `jsonl`: status lines and tables go to
    stderr, so stdout carries only machine-readable JSON lines."""
    global _mode
    _mode = mode


def progress_bars() -> bool:
    """Whether progress bars (tokenising, evaluation) may be drawn: not under `--quiet`."""
    return _mode != "quiet"


def info(message: str) -> None:
    if _mode == "quiet":
        return
    (_err if _mode == "jsonl" else console).print(f"[bold cyan]affina[/] {message}")


def warn(message: str) -> None:
    _err.print(f"[bold yellow]warning[/] {message}")


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        cells = [str(row[i]) for row in rows if i < len(row)]
        numeric = i > 0 and cells and all(_NUMBER.match(c) for c in cells)
        # Fold rather than truncate: fingerprints and paths must stay whole and copyable.
        table.add_column(h, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    target = _err if _mode == "jsonl" else console
    # Piped into a file or another program there is no terminal width to respect, and rich would
    # assume 80 columns and fold keys and paths mid-word; give the table room instead.
    if not target.is_terminal:
        target = Console(file=target.file, width=PIPE_WIDTH, highlight=False)
    target.print(table)
    sys.stdout.flush()
