"""Terminal output: one-line status messages and summary tables (rich)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

__all__ = ["console", "info", "warn", "print_table"]

console = Console(stderr=False, highlight=False)
_err = Console(stderr=True, highlight=False)


def info(message: str) -> None:
    console.print(f"[bold cyan]affina[/] {message}")


def warn(message: str) -> None:
    _err.print(f"[bold yellow]warning[/] {message}")


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        # Fold rather than truncate: fingerprints and paths must stay whole and copyable.
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    console.print(table)
    sys.stdout.flush()
