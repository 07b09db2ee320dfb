"""The Files and Fine-tuning APIs through the official `openai` client, against a real server on
loopback and real worker processes training a tiny model: upload, a bad upload, a job from
creation to a served fine-tuned model, cancel, pause/resume, a worker killed mid-job, a restart
with a queued job, and tenant isolation between API keys.

The tests share one server and run in file order: the tenant test uses the fine-tuned model the
first training test made (training is the slow part, so it is done once)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai
import psutil
import pytest

from tests.jobs.conftest import chat_rows, wait_for, wait_status

pytestmark = pytest.mark.timeout(300)

LONG = {"type": "supervised", "affina": {"method": "lora", "options": {"r": 2},
                                         "train": {"max_steps": 3000, "save_steps": 10, "eval_steps": 10}}}


def _training_children(worker) -> list:
    try:
        return psutil.Process(worker.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _events(client, job_id) -> list:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def test_files_upload_list_content_and_bad_file(jobs_env):
    alice = jobs_env.client(jobs_env.alice)
    uploaded = jobs_env.upload(alice)
    assert uploaded.id.startswith("file-") and uploaded.filename == "train.jsonl"
    assert uploaded.purpose == "fine-tune" and uploaded.bytes == len(chat_rows().encode())
    assert alice.files.retrieve(uploaded.id).id == uploaded.id
    assert uploaded.id in [f.id for f in alice.files.list()]
    assert alice.files.content(uploaded.id).read() == chat_rows().encode()

    files_dir = jobs_env.root / "files"
    before = sorted(p.name for p in files_dir.iterdir())
    bad = chat_rows(4) + "{not json\n"
    with pytest.raises(openai.BadRequestError) as e:
        jobs_env.upload(alice, "bad.jsonl", bad)
    message = e.value.body["message"]
    assert message.startswith("bad.jsonl:5") and "\n" not in message, message
    # Nothing half-written is kept: no new file, no staging directory.
    assert sorted(p.name for p in files_dir.iterdir()) == before
    with pytest.raises(openai.BadRequestError):
        jobs_env.upload(alice, "notes.docx", "hello")

    deleted = alice.files.delete(uploaded.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(uploaded.id)


def test_job_queued_across_a_restart_runs_to_a_served_fine_tuned_model(jobs_env):
    from affina.govern.lineage import format_lineage, lineage

    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    validation = jobs_env.upload(alice, "val.jsonl", chat_rows(4))
    job = alice.fine_tuning.jobs.create(
        model="base", training_file=training.id, validation_file=validation.id, suffix="numbers",
        seed=7, metadata={"team": "a"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
                "affina": {"method": "lora", "options": {"r": 2}}})
    assert job.status in ("validating_files", "queued") and job.seed == 7
    # No worker yet: the job waits in the queue, and a restarted server still has it.
    wait_status(alice, job.id, "queued", timeout=30)
    jobs_env.stop_server()
    jobs_env.start_server()
    alice = jobs_env.client(jobs_env.alice)
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "queued"
    jobs_env.start_worker()
    try:
        done = wait_status(alice, job.id, ("succeeded", "failed"), timeout=150)
        assert done.status == "succeeded", done.error
    finally:
        jobs_env.stop_workers()
    assert done.fine_tuned_model == f"ft:base:numbers:{job.id}"
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 4
    assert done.hyperparameters.learning_rate_multiplier not in (None, "auto")
    assert done.trained_tokens and done.finished_at >= done.created_at

    events = _events(alice, job.id)
    messages = [e.message for e in events]
    assert "Files validated, moving job to queued state" in messages
    assert any(m.startswith("Fine-tuning job started") for m in messages)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and metrics[0].data["train_loss"] > 0 and metrics[0].data["total_steps"] == 12
    assert messages[-1] == "The job has successfully completed"
    page = alice.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    following = alice.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert following.data[0].id != page.data[-1].id

    checkpoints = list(alice.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and checkpoints[0].step_number == max(c.step_number for c in checkpoints)
    newest = checkpoints[0]
    assert newest.metrics.train_loss is not None and newest.metrics.valid_loss is not None
    assert newest.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{newest.step_number}"

    # Served at once, under its name and each checkpoint's, by the same server.
    for model in (done.fine_tuned_model, newest.fine_tuned_model_checkpoint):
        reply = alice.chat.completions.create(model=model, max_tokens=4,
                                              messages=[{"role": "user", "content": "say the number 3"}])
        assert reply.choices[0].message is not None
    assert done.fine_tuned_model in [m.id for m in alice.models.list()]

    assert [j.id for j in alice.fine_tuning.jobs.list(metadata={"team": "a"})] == [job.id]
    assert list(alice.fine_tuning.jobs.list(metadata={"team": "b"})) == []

    # Registered with its lineage: file → job → run → version.
    row = jobs_env.service.store.get_job(job.id)
    assert row.registered_as and row.registered_as.endswith("@1")
    info = lineage(row.registered_as)
    assert info["job"]["job_id"] == job.id and info["job"]["training_file"] == training.id
    assert job.id in format_lineage(info) and training.id in format_lineage(info)


def test_a_distributed_job_trains_on_torchrun(jobs_env):
    """`method.affina.distributed`: the worker's `affina train` starts torchrun (2 CPU processes,
    gloo); rank 0's events reach the job and the record says two processes trained it."""
    from affina.record import read_record

    alice = jobs_env.client(jobs_env.alice)
    job = alice.fine_tuning.jobs.create(
        model="base", training_file=jobs_env.upload(alice).id, suffix="ddp",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}},
                "affina": {"method": "lora", "options": {"r": 2},
                           "distributed": {"strategy": "ddp", "nproc_per_node": 2}}})
    jobs_env.start_worker()
    try:
        done = wait_status(alice, job.id, ("succeeded", "failed"), timeout=240)
    finally:
        jobs_env.stop_workers()
    assert done.status == "succeeded", done.error
    assert [e for e in _events(alice, job.id) if e.type == "metrics"]
    run_dir = Path(jobs_env.service.store.get_job(job.id).run_dir)
    assert read_record(run_dir).train.world_size == 2


def test_a_dpo_job_trains_on_pairs_as_openais_api_asks(jobs_env):
    """`method: {"type": "dpo", "dpo": {"hyperparameters": {"beta": ...}}}` trains the dpo method;
    its first loss is DPO's ln 2 (a fresh adapter, the reference is the base)."""
    import json
    import math

    alice = jobs_env.client(jobs_env.alice)
    pairs = "".join(json.dumps({"prompt": f"what is {i} plus one?", "chosen": f"{i + 1}.",
                                "rejected": f"Well, let me think about {i} for a while first."}) + "\n"
                    for i in range(16))
    job = alice.fine_tuning.jobs.create(
        model="base", training_file=jobs_env.upload(alice, "pairs.jsonl", pairs).id, suffix="prefs",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 4}}})
    jobs_env.start_worker()
    try:
        done = wait_status(alice, job.id, ("succeeded", "failed"), timeout=240)
    finally:
        jobs_env.stop_workers()
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
    first = min((e for e in _events(alice, job.id) if e.type == "metrics"), key=lambda e: e.data["step"])
    assert first.data["train_loss"] == pytest.approx(math.log(2), abs=1e-3)


def test_cancel_stops_training_within_seconds(jobs_env):
    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    worker = jobs_env.start_worker()
    try:
        job = alice.fine_tuning.jobs.create(model="base", training_file=training.id, method=LONG)
        wait_for(lambda: any(e.type == "metrics" for e in _events(alice, job.id)), 90, "training to start")
        assert _training_children(worker)
        asked = time.monotonic()
        cancelled = alice.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        wait_for(lambda: not _training_children(worker), 15, "the training process to end", 0.1)
        assert time.monotonic() - asked < 10
        time.sleep(1.5)  # the worker must not overwrite the cancellation
        assert alice.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            alice.fine_tuning.jobs.cancel(job.id)
    finally:
        jobs_env.stop_workers()


def test_pause_resume_and_a_killed_worker_continue_from_checkpoints(jobs_env):
    # A tiny model trains hundreds of steps a second, faster than a heartbeat notices a pause:
    # the training process is frozen (SIGSTOP) at each point the test acts on, so a pause or a
    # kill always lands before the training could have finished.
    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    method = {**LONG, "affina": {**LONG["affina"], "train": {"max_steps": 200, "save_steps": 10,
                                                             "eval_steps": 10}}}
    worker = jobs_env.start_worker(lease_seconds=5)
    try:
        job = alice.fine_tuning.jobs.create(model="base", training_file=training.id, method=method)
        wait_for(lambda: list(alice.fine_tuning.jobs.checkpoints.list(job.id)), 180, "a checkpoint", 0.05)
        _freeze(_training_children(worker))
        # Pause: training stops, the checkpoint stays; resume queues it to continue from there.
        assert alice.fine_tuning.jobs.pause(job.id).status == "paused"
        wait_for(lambda: not _training_children(worker), 30, "the training process to end", 0.1)
        paused_at = max(c.step_number for c in alice.fine_tuning.jobs.checkpoints.list(job.id))
        assert paused_at < 200
        assert alice.fine_tuning.jobs.retrieve(job.id).status == "paused"
        assert alice.fine_tuning.jobs.resume(job.id).status == "queued"
        wait_for(lambda: max(c.step_number for c in alice.fine_tuning.jobs.checkpoints.list(job.id)) > paused_at,
                 180, "a checkpoint after the resume", 0.05)
        children = _training_children(worker)
        _freeze(children)
        # SIGKILL the worker mid-job: its training dies with it, and once the lease runs out
        # another worker resumes the job from its last checkpoint and finishes it.
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        wait_for(lambda: not any(_alive(c) for c in children), 10, "the orphaned training process to die", 0.1)
        assert alice.fine_tuning.jobs.retrieve(job.id).status == "running"
        jobs_env.start_worker(lease_seconds=5)
        done = wait_status(alice, job.id, ("succeeded", "failed"), timeout=150)
        assert done.status == "succeeded", done.error
    finally:
        jobs_env.stop_workers()
    messages = [e.message for e in _events(alice, job.id)]
    resumed = [m for m in messages if m.startswith("Resuming from checkpoint-")]
    assert len(resumed) == 2 and "attempt 3" in resumed[-1], messages
    assert messages.index("Training stopped for the pause; the last checkpoint is kept") < \
        messages.index(resumed[0]), messages
    assert jobs_env.service.store.get_job(job.id).attempts == 3
    assert max(c.step_number for c in alice.fine_tuning.jobs.checkpoints.list(job.id)) == 200


def _freeze(processes) -> None:
    assert processes, "no training process to freeze"
    for process in processes:
        try:
            process.send_signal(signal.SIGSTOP)
        except psutil.NoSuchProcess:
            pass


def _alive(process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_one_key_cannot_reach_anothers_files_jobs_or_models(jobs_env):
    alice, bob = jobs_env.client(jobs_env.alice), jobs_env.client(jobs_env.bob)
    admin = jobs_env.client(jobs_env.admin)
    alice_jobs = list(alice.fine_tuning.jobs.list())
    finished = next(j for j in alice_jobs if j.status == "succeeded")
    training = jobs_env.upload(alice)
    queued = alice.fine_tuning.jobs.create(model="base", training_file=training.id)

    for call in (lambda: bob.files.retrieve(training.id), lambda: bob.files.content(training.id),
                 lambda: bob.files.delete(training.id),
                 lambda: bob.fine_tuning.jobs.retrieve(queued.id),
                 lambda: bob.fine_tuning.jobs.cancel(queued.id),
                 lambda: bob.fine_tuning.jobs.list_events(queued.id),
                 lambda: bob.fine_tuning.jobs.checkpoints.list(finished.id),
                 lambda: bob.fine_tuning.jobs.create(model="base", training_file=training.id),
                 lambda: bob.chat.completions.create(model=finished.fine_tuned_model, max_tokens=2,
                                                     messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    assert training.id not in [f.id for f in bob.files.list()]
    assert list(bob.fine_tuning.jobs.list()) == []
    assert finished.fine_tuned_model not in [m.id for m in bob.models.list()]
    row = jobs_env.service.store.get_job(finished.id)
    with pytest.raises(openai.NotFoundError):  # nor through its registry name
        bob.chat.completions.create(model=row.registered_as, max_tokens=2,
                                    messages=[{"role": "user", "content": "hi"}])
    assert alice.fine_tuning.jobs.retrieve(queued.id).status in ("validating_files", "queued")

    # An admin key sees and manages every key's jobs.
    assert {j.id for j in alice_jobs} <= {j.id for j in admin.fine_tuning.jobs.list(limit=100)}
    assert admin.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    assert admin.files.retrieve(training.id).id == training.id


def test_bad_job_requests_answer_openai_errors(jobs_env):
    alice = jobs_env.client(jobs_env.alice)
    training = jobs_env.upload(alice)
    cases = [({"model": "gpt-4o", "training_file": training.id}, "model"),
             ({"model": "base", "training_file": "file-nope"}, "training_file"),
             ({"model": "base", "training_file": training.id, "hyperparameters": {"n_epochs": 0}},
              "hyperparameters.n_epochs"),
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"method": "nosuch"}}}, "method"),
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"method": "lora", "options": {"rank": 4}}}},
              "method"),
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"distributed": {"strategy": "zero3"}}}},
              "method.affina.distributed"),
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"method": "prefix",
                                                           "distributed": {"strategy": "fsdp"}}}},
              "method.affina.distributed"),
             # The training step's keys, checked with the method and the distributed settings.
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"train": {"fuse_projections": True},
                                                           "distributed": {"strategy": "fsdp"}}}}, "method"),
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"train": {"cuda_graphs": True}}}}, "method"),
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"method": "full", "train": {"mixed_precision": "fp8"}}}},
              "method"),
             ({"model": "base", "training_file": training.id,
               "method": {"type": "supervised", "affina": {"train": {"mixed_precision": "fp8"},
                                                           "distributed": {"strategy": "fsdp"}}}}, "method")]
    for body, param in cases:
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
            alice.fine_tuning.jobs.create(**body)
        assert e.value.body["param"] == param, (body, e.value.body)
    assert "set train.profile=speed" in _create_error(alice, cases[-3][0])
    assert "method full has none" in _create_error(alice, cases[-2][0])
    assert "train.fuse_projections lays" in _create_error(alice, cases[-4][0])
    step = {"profile": "speed", "mixed_precision": "fp8", "loss_chunk_tokens": 512, "fuse_projections": True}
    job = alice.fine_tuning.jobs.create(model="base", training_file=training.id,
                                        method={"type": "supervised", "affina": {"train": step}})
    assert jobs_env.service.store.get_job(job.id).method["affina"]["train"] == step
    alice.fine_tuning.jobs.cancel(job.id)
    # A DPO job on supervised data fails its validation with OpenAI's error object.
    job = alice.fine_tuning.jobs.create(model="base", training_file=training.id,
                                        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    failed = wait_status(alice, job.id, "failed", timeout=30)
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "preference" in failed.error.message
    stored = jobs_env.service.store.get_job(job.id)
    assert stored.method["affina"] == {"method": "dpo", "options": {"beta": 0.2}}


def _create_error(client, body) -> str:
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(**body)
    return e.value.body["message"]


def test_cli_mirrors_the_api(jobs_env, capsys):
    from affina.cli import main

    key_args = ["--url", jobs_env.server.url + "/v1", "--api-key", jobs_env.alice]
    data = jobs_env.root / "cli.jsonl"
    data.write_text(chat_rows(8))
    assert main(["jobs", "submit", "--model", "base", "--training-file", str(data), "--method", "dora",
                 "--option", "r=2", "--epochs", "1", "--suffix", "cli", "--metadata", "via=cli",
                 *key_args]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    alice = jobs_env.client(jobs_env.alice)
    job = alice.fine_tuning.jobs.retrieve(job_id)
    assert job.method.model_extra["affina"]["method"] == "dora" and job.metadata == {"via": "cli"}
    assert main(["jobs", "list", "--metadata", "via=cli", *key_args]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "show", job_id, "--json", *key_args]) == 0
    assert '"suffix": "cli"' in capsys.readouterr().out
    assert main(["jobs", "events", job_id, *key_args]) == 0
    assert "Created fine-tuning job" in capsys.readouterr().out
    assert main(["jobs", "cancel", job_id, *key_args]) == 0
    assert alice.fine_tuning.jobs.retrieve(job_id).status == "cancelled"
    # Bob's key cannot see it from the CLI either: one line, exit 2.
    assert main(["jobs", "show", job_id, "--url", jobs_env.server.url + "/v1", "--api-key", jobs_env.bob]) == 2
    assert "404" in capsys.readouterr().err


def test_admin_keys_and_older_key_files(tmp_path):
    import sqlite3

    from affina.cli import main
    from affina.serve.auth import KeyStore

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:  # a key file from before admin keys
        conn.execute("CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL, salt TEXT NOT NULL, "
                     "secret_hash TEXT NOT NULL, models TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)")
        conn.execute("INSERT INTO api_keys VALUES ('abc', 'old', '00', 'x', '[\"*\"]', '2026-01-01', NULL)")
    store = KeyStore(old)
    assert [(k.name, k.admin) for k in store.list()] == [("old", False)]
    assert main(["keys", "create", "--name", "ops", "--admin", "--keys-db", str(old)]) == 0
    assert {k.name: k.admin for k in store.list()} == {"old": False, "ops": True}
