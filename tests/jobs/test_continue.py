"""Continuing a fine-tuned model through the jobs API (OpenAI's `model: "ft:..."`), on a real
server with the official client and real worker processes: replay from the earlier model's
training data, the new task scored before and after, forgetting on the earlier evaluation sets,
the parent version in the lineage, a checkpoint continued by its `ckpt-step-N` name; and the refusals (unknown, another key's, another base, a
method that cannot continue, replay on a base job, another method)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.jobs.conftest import chat_rows, wait_status

SHORT = {"max_steps": 4, "save_steps": 2, "eval_steps": 2}
EVAL = {"max_new_tokens": 4}  # the evaluations before and after: short replies


def word_rows(n: int, offset: int = 0) -> str:
    """A second task: spell words, not say numbers."""
    words = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "lemon", "eagle"]
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"spell {words[(i + offset) % 10]}"},
                                            {"role": "assistant", "content": " ".join(words[(i + offset) % 10])}]})
                   + "\n" for i in range(n))


def _local_run(jobs_env, name: str, base, method: str = "lora", *extra: str):
    """A run trained with `affina train` (not a job) on `base`, with an evaluation set."""
    from affina.config import load_config
    from affina.train import train

    data = jobs_env.root / f"{name}.jsonl"
    data.write_text(chat_rows(12))
    evalset = jobs_env.root / f"{name}-eval.jsonl"
    evalset.write_text(chat_rows(4))
    cfg = load_config(None, [f"model.spec={base}", f"data.train={data}", f"eval.data={evalset}",
                             f"train.output_dir={jobs_env.root / 'local-runs'}", f"train.run_name={name}",
                             "train.max_steps=2", f"method.name={method}", "eval.max_new_tokens=4",
                             "eval.compare_base=false", "track.mlflow=false", *extra])
    return train(cfg, display="quiet").run_dir, evalset


def test_continuing_a_fine_tuned_model_and_a_registry_reference(jobs_env):
    from affina.govern.lineage import format_lineage, lineage
    from affina.govern.registry import register_run, set_alias, show_model
    from affina.serve.dashboard.views import lineage_graph

    alice = jobs_env.client(jobs_env.alice)
    first_file = jobs_env.upload(alice, "numbers.jsonl", chat_rows(24))
    first = alice.fine_tuning.jobs.create(model="base", training_file=first_file.id, seed=3, suffix="v1",
                                          method={"type": "supervised",
                                                  "affina": {"options": {"r": 2}, "train": SHORT, "eval": EVAL}})
    jobs_env.start_worker()
    try:
        done = wait_status(alice, first.id, ("succeeded", "failed"), timeout=180)
        assert done.status == "succeeded", done.error

        # OpenAI's shape: `model` is the fine-tuned model; affina's extension sets the replay.
        new_file = jobs_env.upload(alice, "words.jsonl", word_rows(20))
        new_eval = jobs_env.upload(alice, "words-eval.jsonl", word_rows(4, offset=3))
        cont = alice.fine_tuning.jobs.create(
            model=done.fine_tuned_model, training_file=new_file.id, validation_file=new_eval.id, seed=5,
            method={"type": "supervised", "affina": {"replay_fraction": 0.5, "train": SHORT, "eval": EVAL}})
        assert cont.model == done.fine_tuned_model
        stored = jobs_env.service.store.get_job(cont.id)
        first_row = jobs_env.service.store.get_job(first.id)
        assert stored.method["affina"]["method"] == "lora" and stored.method["affina"]["options"]["r"] == 2
        assert stored.method["affina"]["continue"]["ref"] == first_row.registered_as

        # A registry reference of a run trained on this base, with an evaluation set registered.
        run, evalset = _local_run(jobs_env, "shop-v1", jobs_env.base)
        register_run(run, "shop", eval_data=[str(evalset)], metric="loss")
        set_alias("shop@1", "champion")
        by_ref = alice.fine_tuning.jobs.create(
            model="shop@champion", training_file=new_file.id, seed=5,
            method={"type": "supervised", "affina": {"replay_fraction": 0.25, "train": SHORT, "eval": EVAL}})

        # One of the first job's checkpoints, by the name it is served under.
        checkpoint = alice.fine_tuning.jobs.checkpoints.list(first.id).data[-1]  # the earliest kept
        by_checkpoint = alice.fine_tuning.jobs.create(
            model=checkpoint.fine_tuned_model_checkpoint, training_file=new_file.id, seed=5,
            method={"type": "supervised", "affina": {"replay_fraction": 0.25, "train": SHORT, "eval": EVAL}})

        cont_done = wait_status(alice, cont.id, ("succeeded", "failed"), timeout=240)
        assert cont_done.status == "succeeded", cont_done.error
        ref_done = wait_status(alice, by_ref.id, ("succeeded", "failed"), timeout=240)
        assert ref_done.status == "succeeded", ref_done.error
        checkpoint_done = wait_status(alice, by_checkpoint.id, ("succeeded", "failed"), timeout=240)
        assert checkpoint_done.status == "succeeded", checkpoint_done.error
    finally:
        jobs_env.stop_workers()

    # Continuing a checkpoint: its weights (not the first job's last ones), named after the base.
    assert checkpoint_done.fine_tuned_model == f"ft:base::{by_checkpoint.id}"
    step = checkpoint.step_number
    plan = lineage(jobs_env.service.store.get_job(by_checkpoint.id).registered_as)["run"]["continual"]
    assert plan["artifact"] == f"checkpoints/checkpoint-{step}" and plan["version"] is None
    assert Path(plan["run_dir"]) == Path(jobs_env.service.store.get_job(first.id).run_dir).resolve()

    # Named after the base (not ft:ft:...), served at once.
    assert cont_done.fine_tuned_model == f"ft:base::{cont.id}"
    reply = alice.chat.completions.create(model=cont_done.fine_tuned_model, max_tokens=4,
                                          messages=[{"role": "user", "content": "spell apple"}])
    assert reply.choices[0].message is not None

    # The continued run: started from the first job's version, half of its rows replayed from
    # the first job's training file, the new task scored before (the earlier model) and after.
    row = jobs_env.service.store.get_job(cont.id)
    info = lineage(row.registered_as)
    continual = info["run"]["continual"]
    assert continual["version"] == first_row.registered_as
    replay = continual["replay"]
    assert replay["fraction"] == 0.5 and replay["seed"] == 5 and replay["replay_rows"] > 0
    assert [f["path"] for f in replay["replay_files"]] == [jobs_env.service.store.get_file(first_file.id).path]
    run_dir = info["run"]["dir"]
    before = json.loads(open(f"{run_dir}/eval/before.json").read())
    after = json.loads(open(f"{run_dir}/eval/after.json").read())
    assert before["label"] != after["label"]
    assert info["job"]["continues"] == first_row.registered_as
    assert f"continues {done.fine_tuned_model}" in format_lineage(info)
    # The new version records its parent; the graph draws job → run → version and the parent.
    assert info["registry"][0]["parent"] == first_row.registered_as
    graph = lineage_graph(info)
    edges = {(e["from"], e["to"]) for e in graph["edges"]}
    version_node = f"version:{row.registered_as}"
    assert {("job", "run"), ("parent", "run"), ("run", "artifact"), ("artifact", version_node)} <= edges
    assert next(n for n in graph["nodes"] if n["id"] == "parent")["label"] == first_row.registered_as

    # Continuing a registry reference: pinned to its version, forgetting measured on the
    # evaluation set registered with the name.
    ref_row = jobs_env.service.store.get_job(by_ref.id)
    assert ref_row.method["affina"]["continue"]["ref"] == "shop@1"
    ref_info = lineage(ref_row.registered_as)
    forgetting = ref_info["run"]["continual"]["forgetting"]
    assert [f["path"] for f in forgetting] == [str(evalset.resolve())]
    assert "loss" in forgetting[0]["before"] and "loss" in forgetting[0]["after"]
    assert show_model(ref_row.registered_as.split("@")[0])["versions"][0]["parent"] == "shop@1"


def test_continuation_refusals_are_clear_400s(jobs_env, tmp_path):
    from affina.govern.registry import register_run
    from tests.helpers import make_tiny_model

    alice, bob = jobs_env.client(jobs_env.alice), jobs_env.client(jobs_env.bob)
    training = jobs_env.upload(alice)
    other_base = make_tiny_model(tmp_path / "other-base", seed=11)
    other_run, _ = _local_run(jobs_env, "other-base-run", other_base)
    register_run(other_run, "elsewhere")
    bottleneck_run, _ = _local_run(jobs_env, "bottleneck-run", jobs_env.base, "adapter")
    register_run(bottleneck_run, "bottleneck")
    lora_run, _ = _local_run(jobs_env, "lora-run", jobs_env.base)
    register_run(lora_run, "mine")

    cases = [
        ({"model": "ft:base::ftjob-000000000000000000000000"}, "model_not_found", "model"),
        ({"model": "ft:base::ftjob-000000000000000000000000:ckpt-step-2"}, "model_not_found", "model"),
        ({"model": "nosuch@champion"}, "model_not_found", "model"),
        ({"model": "elsewhere@1"}, "model_not_supported", "model"),
        ({"model": "bottleneck@1"}, "model_not_supported", "model"),
        ({"model": "mine@1", "method": {"type": "supervised", "affina": {"method": "dora"}}},
         "model_not_supported", "method"),
        ({"model": "mine@1", "method": {"type": "supervised", "affina": {"replay_fraction": 1.5}}},
         "invalid_request", "method.affina.replay_fraction"),
        ({"model": "base", "method": {"type": "supervised", "affina": {"replay_fraction": 0.5}}},
         "invalid_request", "method.affina.replay_fraction"),
    ]
    for body, code, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            alice.fine_tuning.jobs.create(training_file=training.id, **body)
        assert (e.value.body["code"], e.value.body["param"]) == (code, param), (body, e.value.body)
        assert e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        alice.fine_tuning.jobs.create(training_file=training.id, model="elsewhere@1")
    assert f"trained on base {other_base}" in e.value.body["message"]

    # Another key's fine-tuned model is unknown to bob, by its ft: name and its registry name.
    file_of_bob = jobs_env.upload(bob)
    done = [j for j in alice.fine_tuning.jobs.list(limit=100) if j.status == "succeeded"]
    if done:
        row = jobs_env.service.store.get_job(done[0].id)
        for model in (done[0].fine_tuned_model, row.registered_as):
            with pytest.raises(openai.BadRequestError) as e:
                bob.fine_tuning.jobs.create(model=model, training_file=file_of_bob.id)
            assert e.value.body["code"] == "model_not_found"


def test_cli_submit_continues_with_replay(jobs_env, capsys):
    from affina.cli import main
    from affina.govern.registry import register_run

    run, _ = _local_run(jobs_env, "cli-run", jobs_env.base)
    register_run(run, "clishop")
    data = jobs_env.root / "cli-words.jsonl"
    data.write_text(word_rows(8))
    key_args = ["--url", jobs_env.server.url + "/v1", "--api-key", jobs_env.alice]
    assert main(["jobs", "submit", "--model", "clishop@1", "--training-file", str(data),
                 "--replay-fraction", "0.3", "--train", "max_steps=2", *key_args]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    stored = jobs_env.service.store.get_job(job_id)
    assert stored.method["affina"]["continue"] == {**stored.method["affina"]["continue"], "ref": "clishop@1",
                                                   "replay_fraction": 0.3, "method": "lora"}
    alice = jobs_env.client(jobs_env.alice)
    assert alice.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    # A method that would not continue is one line, exit 2.
    assert main(["jobs", "submit", "--model", "clishop@1", "--training-file", str(data), "--method", "dora",
                 *key_args]) == 2
    assert "trained with method lora" in capsys.readouterr().err
