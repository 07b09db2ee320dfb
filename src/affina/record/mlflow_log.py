"""MLflow tracking for a run: params, per-step metrics, dataset inputs with digests, artifacts.

Default store: sqlite under $AFFINA_HOME (`track.uri` points elsewhere, e.g. a team server).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from ..paths import affina_home

__all__ = ["MlflowRun", "Terminated", "default_tracking_uri", "quiet_mlflow"]


class Terminated(KeyboardInterrupt):
    """SIGTERM during a tracked run, raised so the run unwinds (and is marked KILLED) instead of
    the process vanishing and leaving the MLflow run RUNNING forever. A KeyboardInterrupt, so
    the CLI reports it the way it reports Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def quiet_mlflow() -> None:
    """MLflow configures its own INFO logger on import, and alembic logs every migration of a new
    sqlite store: keep both to warnings. Call after `import mlflow`."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def default_tracking_uri() -> str:
    return f"sqlite:///{affina_home() / 'mlflow.db'}"


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


class MlflowRun:
    """A thin context around one MLflow run; every call is a no-op when tracking is off."""

    def __init__(self, enabled: bool, uri: str | None, experiment: str, run_name: str,
                 run_id: str | None = None):
        """`run_id`: continue that MLflow run (a resumed training run) instead of a new one."""
        self.enabled = enabled
        self.uri = uri or default_tracking_uri()
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = run_id
        self._mlflow = None
        self._previous_sigterm = None

    def __enter__(self) -> "MlflowRun":
        if not self.enabled:
            return self
        # MLflow's alembic migrations log at INFO on every new sqlite store.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        quiet_mlflow()

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        if mlflow.get_experiment_by_name(self.experiment) is None and self.uri.startswith("sqlite:"):
            # Keep artifacts beside the sqlite store rather than in ./mlruns of wherever we run.
            mlflow.create_experiment(self.experiment,
                                     artifact_location=(affina_home() / "mlartifacts").as_uri())
        mlflow.set_experiment(self.experiment)
        started = None
        if self.run_id:
            # Continues a killed run's MLflow run (left RUNNING): it ends FINISHED or FAILED
            # with this attempt.
            try:
                started = mlflow.start_run(run_id=self.run_id)
            except Exception:  # noqa: BLE001 — the old run was deleted or lives elsewhere
                self.run_id = None
        if started is None:
            started = mlflow.start_run(run_name=self.run_name)
        self.run_id = started.info.run_id
        if threading.current_thread() is threading.main_thread():  # signals reach only that one
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if self._mlflow is not None:
            if exc_type is None:
                status = "FINISHED"
            elif issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C or SIGTERM
                status = "KILLED"
            else:
                status = "FAILED"
            self._mlflow.end_run(status=status)

    def log_params(self, params: dict) -> None:
        if self._mlflow:
            flat = _flatten(params)
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow caps params per batch
                self._mlflow.log_params(dict(items[i:i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow:
            clean = {k.replace("/", "_"): float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float))}
            if clean:
                self._mlflow.log_metrics(clean, step=step)

    def log_dataset(self, records, *, name: str, source: str, digest: str, context: str) -> None:
        """Record a dataset input with its fingerprint as the digest."""
        if not self._mlflow:
            return
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas

        import warnings

        frame = pd.DataFrame([{"key": r.key()} for r in records])
        with warnings.catch_warnings():  # a local path matches two equivalent source kinds
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=source, name=name, digest=digest.split(":")[-1][:36])
        self._mlflow.log_input(dataset, context=context)

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_artifacts(str(directory), artifact_path=artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict) -> None:
        if self._mlflow:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})
