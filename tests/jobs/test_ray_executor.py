"""The `ray` executor against a real Ray cluster: a head started by the test on loopback
(`ray start --head --block`, one CPU, a small object store), the jobs API server of
tests/jobs/conftest.py, and `affina jobs worker --executor ray` processes.

Through the official `openai` client: `affina serve --executor ray` trains a job on the cluster
to a registered, served fine-tuned model; a worker killed mid-job is replaced by one that reattaches to the still
running Ray job instead of submitting it again, and a pause stops that Ray job while a resume
submits the next one from the checkpoint; a cancel stops the Ray job; a job that fails on
the cluster reports the training's own error. Skipped when Ray is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.jobs.conftest import chat_rows, wait_for, wait_status
from tests.serve.conftest import free_port

ray_jobs = pytest.importorskip("ray.job_submission", reason="Ray is not installed: pip install 'affina[ray]'")

pytestmark = pytest.mark.timeout(420)

SHORT = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}},
         "affina": {"method": "lora", "options": {"r": 2}}}
LONG = {"type": "supervised", "affina": {"method": "lora", "options": {"r": 2},
                                         "train": {"max_steps": 3000, "save_steps": 10, "eval_steps": 10}}}


class RayHead:
    """`ray start --head --block` in its own process group; stopping it stops the cluster."""

    def __init__(self, root: Path):
        ray_cli = Path(sys.executable).with_name("ray")
        if not ray_cli.exists():
            ray_cli = shutil.which("ray")
            if ray_cli is None:
                pytest.skip("Ray's `ray` command is not installed beside this Python")
        self.dashboard_port = free_port()
        ports = {flag: free_port() for flag in ("--port", "--dashboard-agent-listen-port",
                                                "--ray-client-server-port", "--metrics-export-port",
                                                "--dashboard-agent-grpc-port", "--runtime-env-agent-port")}
        # The job's `python` is the first one on the head's PATH: this test's, with affina on
        # its PYTHONPATH (set by the jobs_env fixture).
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "RAY_USAGE_STATS_ENABLED": "0"}
        command = [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                   "--include-dashboard", "true", "--num-cpus", "1", "--num-gpus", "0",
                   "--object-store-memory", str(80 * 2**20), "--include-log-monitor", "false",
                   "--disable-usage-stats", "--temp-dir", str(root / "ray")]
        for flag, port in ports.items():
            command += [flag, str(port)]
        self.log = root / "ray-head.log"
        self.proc = subprocess.Popen(command, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.client = wait_for(self._client, 120, f"Ray's job API at {self.address}", interval=1.0)

    def _client(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"`ray start --head` exited: {self.log.read_text()[-2000:]}")
        try:
            return ray_jobs.JobSubmissionClient(self.address)
        except ConnectionError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head(jobs_env):
    head = RayHead(jobs_env.root)
    try:
        yield head
    finally:
        jobs_env.stop_workers()
        head.stop()


def _ray_worker(jobs_env, ray_head, lease_seconds: float = 30.0):
    return jobs_env.start_worker(lease_seconds, ["--executor", "ray", "--ray-address", ray_head.address,
                                                 "--ray-num-gpus", "0"])


def _ray_status(ray_head, submission_id: str) -> str:
    return ray_head.client.get_job_status(submission_id).value


def _messages(client, job_id) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


def test_serve_hands_a_job_to_the_ray_cluster_and_serves_the_result(jobs_env, ray_head, tmp_path):
    """`affina serve --workers 1 --executor ray` as a real process: its worker submits the job to
    the cluster, follows it to success, registers it, and the server answers with the result."""
    from openai import OpenAI

    port = free_port()
    env = {**os.environ, "AFFINA_HOME": str(tmp_path / "home")}
    server = subprocess.Popen(
        [sys.executable, "-m", "affina", "serve", "--base", str(jobs_env.base), "--store", str(tmp_path / "runs"),
         "--port", str(port), "--auth", "open", "--workers", "1", "--executor", "ray",
         "--ray-address", ray_head.address, "--ray-num-gpus", "0"],
        env=env, stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        wait_for(lambda: _answers(client, server), 120, "the server to answer")
        path = tmp_path / "train.jsonl"
        path.write_text(chat_rows())
        with open(path, "rb") as f:
            training = client.files.create(file=f, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="base", training_file=training.id, suffix="onray", seed=5,
                                             method=SHORT)
        done = wait_status(client, job.id, ("succeeded", "failed"), timeout=300)
        assert done.status == "succeeded", done.error
        submission = f"affina-{job.id}-1"
        assert _ray_status(ray_head, submission) == "SUCCEEDED"
        info = ray_head.client.get_job_info(submission)
        assert info.metadata["affina_job"] == job.id and "affina train --log-format jsonl" in info.entrypoint
        # The job's environment: affina's settings, never the service database's URL (the server
        # hands it to its workers in their environment), and the CPU threads it asked for.
        env_vars = info.runtime_env["env_vars"]
        assert env_vars["AFFINA_HOME"] == str(tmp_path / "home") and "AFFINA_SERVICE_DB" not in env_vars
        assert env_vars["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", "1")

        messages = _messages(client, job.id)
        assert any(f"as Ray job {submission}" in m for m in messages), messages
        assert messages[-1] == "The job has successfully completed"
        assert any(m.startswith("Registered as ") for m in messages)
        metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
        assert metrics and all(e.data["total_steps"] == 6 for e in metrics)
        assert [e for e in metrics if e.data.get("train_loss", 0) > 0]
        checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
        assert checkpoints and checkpoints[0].metrics.train_loss is not None
        assert done.trained_tokens

        reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=4,
                                               messages=[{"role": "user", "content": "say the number 3"}])
        assert reply.choices[0].message is not None
        # Ray's copy of the training's log is kept beside the run, as a local worker keeps stderr.
        assert "Running entrypoint for job" in (tmp_path / "runs" / ".jobs" / f"{job.id}.stderr").read_text()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
    log = " ".join((tmp_path / "serve.log").read_text().split())
    assert "1 local worker(s) on the queue in" in log and f"training on the Ray cluster at {ray_head.address}" in log


def _answers(client, server) -> bool:
    if server.poll() is not None:
        raise AssertionError("affina serve exited")
    try:
        client.models.list()
        return True
    except Exception:  # noqa: BLE001 — not listening yet
        return False


def test_a_new_worker_reattaches_and_pause_resume_submits_the_next_ray_job(jobs_env, ray_head):
    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    # The tiny model takes milliseconds a step: enough steps that the pause comes mid-training.
    method = {**LONG, "affina": {**LONG["affina"], "train": {"max_steps": 600, "save_steps": 20,
                                                             "eval_steps": 200}}}
    job = alice.fine_tuning.jobs.create(model="base", training_file=training.id, method=method)
    first = _ray_worker(jobs_env, ray_head, lease_seconds=3)
    submission = f"affina-{job.id}-1"
    try:
        wait_for(lambda: any(e.type == "metrics" for e in alice.fine_tuning.jobs.list_events(job.id, limit=100)),
                 240, "the first training step on the cluster")
        # The training is frozen (SIGSTOP) wherever the test acts, so it cannot finish its 600
        # steps before the test's next move, however fast or slow the machine is.
        training_process = _signal_training(job.id, signal.SIGSTOP)
        first.kill()  # no hand-back: the lease runs out, the Ray job keeps training
        first.wait(timeout=30)
        assert _ray_status(ray_head, submission) == "RUNNING"
        _ray_worker(jobs_env, ray_head, lease_seconds=3)
        wait_for(lambda: any(f"reattached to Ray job {submission}" in m for m in _messages(alice, job.id)),
                 60, "the new worker to reattach")
        # Reattached, not submitted again.
        with pytest.raises(RuntimeError, match="does not exist"):
            ray_head.client.get_job_info(f"affina-{job.id}-2")

        _signal_training(job.id, signal.SIGCONT)
        wait_for(lambda: any(c.step_number >= 20 for c in alice.fine_tuning.jobs.checkpoints.list(job.id)),
                 240, "a checkpoint at step 20", interval=0.1)
        assert _signal_training(job.id, signal.SIGSTOP) == training_process  # the same, reattached
        alice.fine_tuning.jobs.pause(job.id)
        wait_for(lambda: _ray_status(ray_head, submission) == "STOPPED", 60, "the paused Ray job to stop")
        wait_status(alice, job.id, "paused", timeout=30)
        alice.fine_tuning.jobs.resume(job.id)
        done = wait_status(alice, job.id, ("succeeded", "failed"), timeout=300)
    finally:
        jobs_env.stop_workers()
    assert done.status == "succeeded", done.error
    # The resumed job is the next Ray job, from the newest checkpoint.
    second = ray_head.client.get_job_info(f"affina-{job.id}-2")
    assert second.status.value == "SUCCEEDED" and "--resume" in second.entrypoint
    events = list(reversed(list(alice.fine_tuning.jobs.list_events(job.id, limit=100))))
    resumed = [e for e in events if e.message.startswith("Resuming from checkpoint-")]
    assert resumed, [e.message for e in events]
    resumed_at = int(resumed[-1].data["checkpoint"].rsplit("-", 1)[1])
    # What the second worker read again from the start was recorded once.
    logged = [(e.data["step"], "train_loss" in e.data, "valid_loss" in e.data)
              for e in events if e.type == "metrics" and e.data["step"] <= resumed_at]
    assert len(logged) == len(set(logged)) and (1, True, False) in logged, logged
    assert max(e.data["step"] for e in events if e.type == "metrics") == 600


def _signal_training(job_id: str, signum: int) -> list[int]:
    """Send `signum` to the job's `affina train` process, which Ray's job supervisor started on
    this machine (found by its command line, which names the job's directory); its pids."""
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "affina" in command and "train" in command and any(job_id in arg for arg in command):
            try:
                process.send_signal(signum)
                pids.append(process.pid)
            except psutil.NoSuchProcess:
                pass
    assert pids, f"no training process of {job_id} to signal"
    return sorted(pids)


def test_cancel_stops_the_ray_job(jobs_env, ray_head):
    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    job = alice.fine_tuning.jobs.create(model="base", training_file=training.id, method=LONG)
    _ray_worker(jobs_env, ray_head)
    submission = f"affina-{job.id}-1"
    try:
        wait_for(lambda: _known(ray_head, submission) == "RUNNING", 120, "the Ray job to run")
        wait_for(lambda: any(e.type == "metrics" for e in alice.fine_tuning.jobs.list_events(job.id, limit=100)),
                 240, "training on the cluster")
        cancelled = alice.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        wait_for(lambda: _ray_status(ray_head, submission) == "STOPPED", 60, "the Ray job to stop")
        assert "Training stopped for the cancellation" in wait_for(
            lambda: (m := _messages(alice, job.id)) and "Training stopped for the cancellation" in m and m,
            30, "the worker's cancellation event")
    finally:
        jobs_env.stop_workers()
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def _known(ray_head, submission_id: str) -> str | None:
    try:
        return _ray_status(ray_head, submission_id)
    except RuntimeError:  # not submitted yet
        return None


def test_a_job_failing_on_the_cluster_reports_the_trainings_error(jobs_env, ray_head):
    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    job = alice.fine_tuning.jobs.create(model="base", training_file=training.id, method=SHORT)
    wait_status(alice, job.id, "queued", timeout=30)
    # The data file is gone from the shared storage the cluster reads (the service still lists it).
    data_path = Path(jobs_env.service.store.get_file(training.id).path)
    data_path.unlink()
    _ray_worker(jobs_env, ray_head)
    try:
        failed = wait_status(alice, job.id, ("failed", "succeeded"), timeout=240)
    finally:
        jobs_env.stop_workers()
    assert failed.status == "failed"
    message = failed.error.message
    assert message.startswith(f"Ray job affina-{job.id}-1 failed on the cluster: "), message
    assert str(data_path) in message and "\n" not in message, message
    assert failed.error.code == "training_failed"
    assert _ray_status(ray_head, f"affina-{job.id}-1") == "FAILED"


def test_a_job_the_cluster_cannot_place_waits_says_so_and_cancels(jobs_env, ray_head):
    """The head has no GPU: a job asking for one stays pending on the cluster, its events say
    what it waits for, and a cancel ends the job at once (Ray queues the stop of a pending Ray job
    until the cluster places it)."""
    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    job = alice.fine_tuning.jobs.create(model="base", training_file=training.id, method=SHORT)
    jobs_env.start_worker(30.0, ["--executor", "ray", "--ray-address", ray_head.address, "--ray-num-gpus", "1"])
    submission = f"affina-{job.id}-1"
    try:
        note = wait_for(lambda: [m for m in _messages(alice, job.id) if m.startswith("Waiting for the Ray cluster")],
                        90, "the waiting event")
        assert f"Ray job {submission}: it asks for 1 CPU and 1 GPU" in note[0], note
        assert _ray_status(ray_head, submission) == "PENDING"
        alice.fine_tuning.jobs.cancel(job.id)
        messages = wait_for(lambda: (m := _messages(alice, job.id)) and "Training stopped for the cancellation" in m
                            and m, 20, "the worker to let go of the pending job")
        assert any(m.startswith(f"Ray job {submission} was still waiting for the cluster") for m in messages)
    finally:
        jobs_env.stop_workers()
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
