"""Prometheus gauges of the latest drift report of every monitored model, read from the monitor
directory at scrape time: a report made by the server's scheduled run and one made on demand
by `affina monitor` show up alike on the server's /metrics."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from .history import MonitorStore

__all__ = ["DriftCollector"]


class DriftCollector:
    def __init__(self, root: Path | None = None):
        self.root = root

    def describe(self):
        return []  # collected at scrape time: nothing to check at registration

    def collect(self):
        value = GaugeMetricFamily("affina_drift_value", "Latest drift figure", labels=["model", "figure"])
        threshold = GaugeMetricFamily("affina_drift_threshold", "Threshold the drift figure is judged against",
                                      labels=["model", "figure"])
        flagged = GaugeMetricFamily("affina_drift_flagged", "1 when the figure is over its threshold, "
                                    "0 when not, -1 when not judged (too few samples)", labels=["model", "figure"])
        samples = GaugeMetricFamily("affina_drift_samples", "Sample sizes behind the figure",
                                    labels=["model", "figure", "side"])
        drifted = GaugeMetricFamily("affina_drift_drifted", "1 when the latest window drifted, 0 when "
                                    "not, -1 when not judged", labels=["model"])
        when = GaugeMetricFamily("affina_drift_report_timestamp_seconds", "When the latest report was made",
                                 labels=["model"])
        from datetime import datetime

        for s in MonitorStore(self.root).latest():
            model = str(s.get("model"))
            for name, f in (s.get("figures") or {}).items():
                if f.get("value") is not None:
                    value.add_metric([model, name], float(f["value"]))
                if f.get("threshold") is not None:
                    threshold.add_metric([model, name], float(f["threshold"]))
                flagged.add_metric([model, name], -1.0 if f.get("flagged") is None else float(bool(f["flagged"])))
                samples.add_metric([model, name, "reference"], float(f.get("n_reference") or 0))
                samples.add_metric([model, name, "window"], float(f.get("n_window") or 0))
            d = s.get("drifted")
            drifted.add_metric([model], -1.0 if d is None else float(bool(d)))
            try:
                when.add_metric([model], datetime.fromisoformat(s["time"].replace("Z", "+00:00")).timestamp())
            except (KeyError, ValueError, AttributeError):
                pass
        yield from (value, threshold, flagged, samples, drifted, when)
