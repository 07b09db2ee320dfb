"""Errors a user can cause. The CLI prints them as one line and exits with `exit_code`.

Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["AffinaError", "ConfigError", "DataError", "ModelError"]


class AffinaError(Exception):
    """A problem with the user's input, reported in one line. Exit code 2."""

    exit_code = 2


class ConfigError(AffinaError):
    """A bad config file, key or value."""


class DataError(AffinaError):
    """A bad data file: names the file, the line and the field where it can."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = ""
        if source is not None:
            where = str(source)
            if line is not None:
                where += f":{line}"
            if field is not None:
                where += f" field '{field}'"
            where += ": "
        super().__init__(where + message)
        self.source, self.line, self.field = source, line, field


class ModelError(AffinaError):
    """A model spec that cannot be resolved or loaded."""
