"""The alert hook: when a window drifts, POST its summary to a webhook and/or run a command
with the summary as JSON on stdin. A failing hook is reported in the report (and warned about),
never allowed to stop monitoring."""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.error
import urllib.request

__all__ = ["send_alerts"]


def send_alerts(summary: dict, *, webhook: str | None = None, command: str | None = None,
                timeout: float = 15.0) -> list[dict]:
    """One result per hook: {"hook", "ok", "detail"}."""
    body = json.dumps({"event": "affina.drift", **summary}, default=str).encode("utf-8")
    results = []
    if webhook:
        request = urllib.request.Request(webhook, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                results.append({"hook": "webhook", "ok": 200 <= response.status < 300,
                                "detail": f"HTTP {response.status}"})
        except (urllib.error.URLError, OSError, ValueError) as e:
            results.append({"hook": "webhook", "ok": False, "detail": f"{type(e).__name__}: {e}"})
    if command:
        try:
            done = subprocess.run(shlex.split(command), input=body, capture_output=True, timeout=timeout)
            results.append({"hook": "command", "ok": done.returncode == 0,
                            "detail": f"exit {done.returncode}" + (
                                f": {done.stderr.decode(errors='replace').strip()[-200:]}" if done.returncode else "")})
        except (OSError, subprocess.TimeoutExpired, ValueError) as e:
            results.append({"hook": "command", "ok": False, "detail": f"{type(e).__name__}: {e}"})
    return results
