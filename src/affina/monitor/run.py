"""One monitoring pass: measure a window, alert when it drifted, keep the report."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..record.requestlog import RequestLog
from .alerts import send_alerts
from .drift import DriftReport, DriftSettings, MonitorTarget, measure_drift
from .history import MonitorStore, summary_of

__all__ = ["monitor_once"]


def monitor_once(target: MonitorTarget, settings: DriftSettings, *, log_url: str | None = None,
                 monitor_dir: Path | None = None, since: datetime | None = None,
                 until: datetime | None = None, save: bool = True,
                 embedder=None) -> tuple[DriftReport, Path | None]:
    log = RequestLog(log_url, create=False)
    try:
        report = measure_drift(target, log, settings, since=since, until=until, embedder=embedder)
    finally:
        log.close()
    if report.drifted and (settings.alert_webhook or settings.alert_command):
        report.alerts = send_alerts(summary_of(report), webhook=settings.alert_webhook,
                                    command=settings.alert_command)
    path = MonitorStore(monitor_dir).save(report) if save else None
    return report, path
