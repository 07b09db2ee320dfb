"""Scheduled drift monitoring inside `affina serve` (`--monitor-every 1h`).

A background thread of the API process wakes every interval and runs `affina monitor MODEL` for
each monitored model in a subprocess: the embedding model, the permutation tests and any
retraining (`--monitor-policy`, the loop) use another process's memory and CPU time, never the
event loop or the generation thread. Reports land in the monitor directory, which the server's
/metrics reads at scrape time (monitor/gauges.py). A failed run is logged and retried at the next
interval; stopping the server stops the thread and the run in progress.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import select

from ..errors import AffinaError
from ..monitor.commands import LOG_URL_ENV
from ..record.requestlog import RequestLog, requests_table

__all__ = ["MonitorScheduler", "parse_interval"]

logger = logging.getLogger("affina.serve.monitor")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_INTERVAL_S = 5.0


def parse_interval(text: str) -> float:
    """`90s`, `15m`, `1h`, `1d` or plain seconds → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m:
        raise AffinaError(f"--monitor-every {text!r}: use a number with s, m, h or d (e.g. 1h, 30m)")
    seconds = float(m[1]) * _UNITS[m[2] or "s"]
    if seconds < MIN_INTERVAL_S:
        raise AffinaError(f"--monitor-every {text!r}: at least {MIN_INTERVAL_S:.0f}s")
    return seconds


class MonitorScheduler:
    def __init__(self, every_s: float, *, store: Path, log: RequestLog, models: list[str] | None = None,
                 config: Path | None = None, policy: Path | None = None, monitor_dir: Path | None = None,
                 jobs=None):
        """`jobs`: the server's jobs service; the loop's retraining becomes a job in its queue
        (run by the server's workers, shown on the jobs page). None: `affina train` in a
        subprocess (a server started with --no-jobs)."""
        self.every_s, self.store, self.log = every_s, Path(store), log
        self.jobs = jobs
        self.models, self.config, self.policy, self.monitor_dir = models, config, policy, monitor_dir
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="affina-monitor", daemon=True)
        self.runs: list[dict] = []  # model, exit code, last line: what each pass did

    def start(self) -> "MonitorScheduler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        self._thread.join(timeout=30)

    def monitored(self) -> list[str]:
        """The models named on the command line, else every model name answered (2xx) in the
        log except the base's (which has no training data to compare with)."""
        if self.models:
            return list(self.models)
        t = requests_table
        stmt = select(t.c.model).where(t.c.status >= 200, t.c.status < 300).distinct()
        with self.log.engine.connect() as conn:
            names = sorted(n for (n,) in conn.execute(stmt) if n)
        return [n for n in names if "@" in n or (self.store / n / "affina.json").is_file()]

    def command(self, model: str) -> list[str]:
        # The log's URL travels in the environment (LOG_URL_ENV), not in argv: a database
        # password would otherwise show in every process listing.
        cmd = [sys.executable, "-m", "affina.cli", "monitor", model, "--store", str(self.store)]
        if self.config:
            cmd += ["-c", str(self.config)]
        if self.monitor_dir:
            cmd += ["--monitor-dir", str(self.monitor_dir)]
        if self.policy and "@" in model:
            cmd += ["--loop", "--policy", str(self.policy)]
        return cmd

    def jobs_env(self) -> dict:
        """Where the server's own queue is, for the loop in the monitor subprocess."""
        import json

        from ..jobs.loop_submit import LOOP_JOBS_ENV

        if self.jobs is None or self.jobs.store.url != self.log.url:
            return {}
        return {LOOP_JOBS_ENV: json.dumps({"files": str(self.jobs.files_dir), "store": str(self.jobs.models_dir),
                                           "base": self.jobs.base_spec, "names": list(self.jobs.base_names)})}

    def run_once(self) -> None:
        for model in self.monitored():
            if self._stop.is_set():
                return
            try:
                env = {**os.environ, LOG_URL_ENV: self.log.url, **self.jobs_env()}
                self._proc = subprocess.Popen(self.command(model), stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True, env=env)
                out, err = self._proc.communicate()
                code = self._proc.returncode
            except OSError as e:
                code, out, err = -1, "", str(e)
            finally:
                self._proc = None
            last = (err or out).strip().splitlines()[-1:] or [""]
            self.runs.append({"model": model, "exit": code, "last": last[0]})
            (logger.info if code == 0 else logger.warning)("drift monitor for %s: exit %s: %s", model,
                                                           code, last[0])

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.run_once()
            except Exception:  # a bug in one pass must not end scheduled monitoring
                logger.exception("scheduled drift monitoring failed; trying again next interval")
