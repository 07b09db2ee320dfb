"""Where drift reports are kept: one directory per monitored model under
`$AFFINA_HOME/monitor/` (or `--monitor-dir`), with every report as JSON, an append-only
`history.jsonl` of their summaries (what the retraining policy and the over-time plot read) and
`latest.json` (what the server's /metrics shows)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..paths import affina_home
from .drift import DriftReport

__all__ = ["MonitorStore", "summary_of", "default_monitor_dir"]


def default_monitor_dir() -> Path:
    return affina_home() / "monitor"


def summary_of(report: DriftReport, path: Path | None = None) -> dict:
    """One history line: the window, every figure's value/threshold/flag/sizes, the verdict."""
    return {"time": report.time, "model": report.model, "run_dir": report.run_dir,
            "drifted": report.drifted, "window": report.window,
            "figures": {f.name: {"value": f.value, "threshold": f.threshold, "flagged": f.flagged,
                                 "p_value": f.p_value, "n_reference": f.n_reference,
                                 "n_window": f.n_window} for f in report.figures},
            "report": str(path) if path else None}


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]", "_", model)


class MonitorStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_monitor_dir()

    def directory(self, model: str) -> Path:
        return self.root / _slug(model)

    def save(self, report: DriftReport) -> Path:
        d = self.directory(report.model)
        (d / "reports").mkdir(parents=True, exist_ok=True)
        stamp = report.time.replace(":", "").replace("-", "")
        path = d / "reports" / f"{stamp}.json"
        n = 1
        while path.exists():  # two runs within a second
            path = d / "reports" / f"{stamp}-{n}.json"
            n += 1
        path.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False, default=str))
        summary = summary_of(report, path)
        with open(d / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(summary, default=str) + "\n")
        tmp = d / "latest.json.tmp"
        tmp.write_text(json.dumps(summary, default=str))
        os.replace(tmp, d / "latest.json")
        return path

    def history(self, model: str) -> list[dict]:
        path = self.directory(model) / "history.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
        return out

    def latest(self) -> list[dict]:
        """The latest summary of every monitored model."""
        out = []
        for path in sorted(self.root.glob("*/latest.json")) if self.root.is_dir() else []:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return out
