"""Run records: the manifest beside every artifact, and MLflow tracking."""

from .manifest import MANIFEST_NAME, library_versions, read_manifest, write_manifest
from .mlflow_log import MlflowRun

__all__ = ["MANIFEST_NAME", "library_versions", "read_manifest", "write_manifest", "MlflowRun"]
