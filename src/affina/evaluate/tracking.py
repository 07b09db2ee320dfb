"""Log an evaluation to the tracking record of each evaluated run: the run's own MLflow run (its
record's `mlflow_run_id`, in the store its config names) gets the scores and the report files."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import yaml

from ..ui import warn

__all__ = ["log_eval_to_run", "tracking_uri_of_run"]


def tracking_uri_of_run(run_dir: Path) -> str:
    from ..record import default_tracking_uri

    config = Path(run_dir) / "config.yaml"
    if config.is_file():
        uri = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("track") or {}).get("uri")
        if uri:
            return uri
    return default_tracking_uri()


def log_eval_to_run(run_dir: Path, record, scores: dict[str, float], report_dir: Path,
                    name: str) -> str | None:
    """Add `eval_<name>_<measure>` metrics and the report files (under `eval/<name>/`) to the
    run's MLflow run. Returns the run id, or None when the run was not tracked."""
    run_id = record.mlflow_run_id
    if not run_id:
        return None
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri_of_run(run_dir))
    tag = re.sub(r"[^\w.-]+", "_", name).strip("_") or "data"
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval_{tag}_{k}", float(v), now, 0) for k, v in scores.items()
               if isinstance(v, (int, float))]
    try:
        client.log_batch(run_id, metrics=metrics)
        client.log_artifacts(run_id, str(report_dir), artifact_path=f"eval/{tag}")
    except MlflowException as e:
        # The report files are written either way; a moved or deleted tracking store is not
        # worth failing an evaluation for.
        warn(f"could not log the evaluation to {run_dir}'s tracking run {run_id}: {e.message}")
        return None
    return run_id
