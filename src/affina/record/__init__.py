"""The run record (the typed, versioned `affina.json`), self-contained data paths, and MLflow
tracking: the layer every recipe writes to and everything above reads from."""

from .datafiles import (INPUTS_NAME, artifact_version, data_file, file_sha256, read_inputs,
                        resolve_data_file, write_inputs)
from .mlflow_log import MlflowRun, default_tracking_uri, quiet_mlflow
from .run_record import (MANIFEST_NAME, RUN_CONFIG_NAME, SCHEMA_VERSION, BaseModelInfo, DataFile, DataInfo,
                         MethodInfo, MetricsInfo, RunRecord, SplitInfo, TemplateInfo, TrainInfo,
                         git_commit, is_run_dir, library_versions, read_record, read_run_config,
                         write_record)

__all__ = ["INPUTS_NAME", "MANIFEST_NAME", "RUN_CONFIG_NAME", "read_run_config", "artifact_version", "SCHEMA_VERSION", "BaseModelInfo", "DataFile", "DataInfo",
           "MethodInfo", "MetricsInfo", "MlflowRun", "RunRecord", "SplitInfo", "TemplateInfo",
           "TrainInfo", "data_file", "default_tracking_uri", "file_sha256", "git_commit",
           "is_run_dir", "library_versions", "quiet_mlflow", "read_inputs", "read_record",
           "resolve_data_file", "write_inputs", "write_record"]
