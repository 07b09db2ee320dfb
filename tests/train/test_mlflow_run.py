"""A tracked run never stays RUNNING: SIGTERM ends it KILLED, a resumed run ends FINISHED."""

import os
import signal

import pytest

from affina.record.mlflow_log import MlflowRun, Terminated


def _status(uri, run_id):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.status


def test_sigterm_marks_the_run_killed_and_resume_finishes_it(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path}/ml.db"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with MlflowRun(True, uri, "exp", "run-a") as run:
            os.kill(os.getpid(), signal.SIGTERM)
    assert _status(uri, run.run_id) == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before

    # A process killed with SIGKILL leaves its run RUNNING; resuming it ends it properly.
    client = mlflow.MlflowClient(tracking_uri=uri)
    stale = client.create_run(client.get_experiment_by_name("exp").experiment_id).info.run_id
    assert _status(uri, stale) == "RUNNING"
    with MlflowRun(True, uri, "exp", "run-b", run_id=stale) as resumed:
        assert resumed.run_id == stale
    assert _status(uri, stale) == "FINISHED"
    with pytest.raises(ValueError):
        with MlflowRun(True, uri, "exp", "run-c", run_id=stale):
            raise ValueError("training failed")
    assert _status(uri, stale) == "FAILED"
