"""Experiment trackers beside MLflow: TensorBoard event files and Weights & Biases, behind one
`Trackers` object that the recipe and `HistoryCallback` talk to as if it were one MlflowRun.

Both are optional packages (`pip install 'affina[trackers]'`), imported only when switched on;
`TrackConfig.validate` refuses a switched-on tracker whose package is missing before a run starts.
MLflow stays the tracker of record: its run id is the one the run record and resume use.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from ..config import TrackConfig
from ..errors import ConfigError
from .mlflow_log import MlflowRun, _flatten

__all__ = ["TensorBoardRun", "WandbRun", "Trackers", "open_trackers", "TB_DIR", "WANDB_DIR"]

TB_DIR, WANDB_DIR = "tb", "wandb"


def _summary_writer_class():
    """torch's SummaryWriter (needs the tensorboard package), else tensorboardX's."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError("track.tensorboard=true needs the tensorboard package: "
                              "pip install tensorboard") from None
    return SummaryWriter


class TensorBoardRun:
    """Scalars per step under `<run>/tb/`; params as one text summary (TensorBoard has no
    params table). Datasets, artifacts and tags stay in the run directory and MLflow."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self._writer = None

    def __enter__(self) -> "TensorBoardRun":
        self._writer = _summary_writer_class()(log_dir=str(self.log_dir))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()

    def log_params(self, params: dict) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in _flatten(params).items())
        self._writer.add_text("config", "| key | value |\n|---|---|\n" + rows)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def log_dataset(self, *args, **kwargs) -> None: ...
    def log_artifacts(self, *args, **kwargs) -> None: ...
    def log_artifact(self, *args, **kwargs) -> None: ...
    def set_tags(self, tags: dict) -> None: ...


class WandbRun:
    """One W&B run, offline by default (no network is assumed): files under `<run>/wandb/`,
    uploadable later with `wandb sync`. A WANDB_MODE set by the user wins."""

    def __init__(self, project: str, run_name: str, run_dir: Path):
        self.project, self.run_name, self.run_dir = project, run_name, Path(run_dir)
        self._run = None

    def __enter__(self) -> "WandbRun":
        try:
            import wandb
        except ImportError:
            raise ConfigError("track.wandb=true needs the wandb package: pip install wandb") from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The id is kept in the run directory, so a resumed training run continues its W&B run.
        marker = self.run_dir / ".wandb_run_id"
        run_id = marker.read_text().strip() if marker.is_file() else uuid.uuid4().hex[:8]
        marker.write_text(run_id)
        self._run = wandb.init(project=self.project, name=self.run_name, id=run_id, resume="allow",
                               dir=str(self.run_dir), mode=os.environ.get("WANDB_MODE", "offline"),
                               settings=wandb.Settings(silent=True))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._run is not None:
            self._run.finish(exit_code=1 if exc_type else 0)

    def log_params(self, params: dict) -> None:
        self._run.config.update(_flatten(params), allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if clean:  # W&B steps only go forward; end-of-run metrics ride on the last step
            self._run.log(clean, step=step if step is not None and step >= self._run.step else None)

    def set_tags(self, tags: dict) -> None:
        self._run.summary.update({k: str(v) for k, v in tags.items()})

    def log_dataset(self, *args, **kwargs) -> None: ...
    def log_artifacts(self, *args, **kwargs) -> None: ...
    def log_artifact(self, *args, **kwargs) -> None: ...


class Trackers:
    """Every call goes to each tracker; `run_id` is MLflow's (None with MLflow off)."""

    def __init__(self, mlflow: MlflowRun, others: list):
        self.mlflow, self.others = mlflow, others
        self._entered: list = []

    @property
    def run_id(self) -> str | None:
        return self.mlflow.run_id

    def __enter__(self) -> "Trackers":
        try:
            for tracker in (self.mlflow, *self.others):
                self._entered.append(tracker.__enter__())
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        while self._entered:
            self._entered.pop().__exit__(exc_type, exc, tb)

    def _each(self, call: str, /, *args, **kwargs) -> None:
        for tracker in self._entered:
            getattr(tracker, call)(*args, **kwargs)

    def log_params(self, params: dict) -> None:
        self._each("log_params", params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._each("log_metrics", metrics, step=step)

    def log_dataset(self, records, **kwargs) -> None:
        self._each("log_dataset", records, **kwargs)

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        self._each("log_artifacts", directory, artifact_path=artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._each("log_artifact", path, artifact_path=artifact_path)

    def set_tags(self, tags: dict) -> None:
        self._each("set_tags", tags)


def open_trackers(track: TrackConfig, run_dir: Path, *, mlflow_run_id: str | None = None) -> Trackers:
    """The trackers `track` switches on for the run in `run_dir` (enter it with `with`)."""
    run_dir = Path(run_dir)
    mlflow = MlflowRun(track.mlflow, track.uri, track.experiment, run_dir.name, run_id=mlflow_run_id)
    others: list = []
    if track.tensorboard:
        others.append(TensorBoardRun(run_dir / TB_DIR))
    if track.wandb:
        others.append(WandbRun(track.wandb_project, run_dir.name, run_dir))
    return Trackers(mlflow, others)
