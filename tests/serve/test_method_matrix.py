"""Every method, trained by the real recipe, served by a real server: each answer equals what
`affina generate` prints for the same run, prompt and seed."""

from __future__ import annotations

import json

import openai
import pytest

from affina.cli import main
from affina.config import load_config
from affina.methods import Sharing, get_method, method_names
from affina.runs import method_of_record
from affina.record import read_record
from affina.train import train
from tests.helpers import SMALL_METHOD_OPTIONS, make_tiny_model, method_rows
from tests.serve.conftest import start_server

PROMPT = "say the number 3"
MAX_TOKENS = 8
SAMPLED = dict(temperature=0.9, seed=7)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """(base dir, store dir, {method: sharing}): one run per method, named after it."""
    root = tmp_path_factory.mktemp("matrix")
    base = make_tiny_model(root / "tiny-base", seed=3, initializer_range=0.3)
    (root / "chat.jsonl").write_text(method_rows(False))
    (root / "labels.jsonl").write_text(method_rows(True))
    (root / "pairs.jsonl").write_text("".join(json.dumps(
        {"prompt": f"say the number {i}", "chosen": f"number {i}", "rejected": f"a long story about {i}"}) + "\n"
        for i in range(16)))
    store = root / "runs"
    for method in method_names():
        task = get_method(method).task
        data = root / ("labels.jsonl" if task.output == "label" else
                       "pairs.jsonl" if task.name == "prefer" else "chat.jsonl")
        train(load_config(None, [
            f"model.spec={base}", f"data.train={data}", "data.val_fraction=0.25",
            f"train.output_dir={store}", f"train.run_name={method}", "train.max_steps=2",
            "train.batch_size=4", "train.eval_steps=0", "train.save_steps=100",
            "track.mlflow=false", f"method.name={method}", *SMALL_METHOD_OPTIONS.get(method, [])]))
    sharing = {}
    for method in method_names():
        m, cfg = method_of_record(read_record(store / method))
        sharing[method] = m.sharing(cfg)
    # A run whose record names a method this version does not know: listed as unavailable.
    broken = store / "broken"
    broken.mkdir()
    record = json.loads((store / "lora" / "affina.json").read_text())
    record["method"]["name"] = "no-such-method"
    (broken / "affina.json").write_text(json.dumps(record))
    (broken / record["artifact"]).mkdir()
    return base, store, sharing


@pytest.fixture(scope="module")
def served(matrix, tmp_path_factory):
    base, store, _ = matrix
    thread, engine, _ = start_server(tmp_path_factory.mktemp("matrix-api"), base, store, max_models=2)
    with thread:
        yield engine, openai.OpenAI(base_url=thread.url + "/v1", api_key="unused", max_retries=0,
                                    timeout=120)
    engine.stop()


def _cli_reply(capsys, run_dir, **sampled) -> str:
    extra = [] if not sampled else ["--temperature", str(sampled["temperature"]),
                                    "--seed", str(sampled["seed"])]
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", PROMPT, "--max-new-tokens", str(MAX_TOKENS),
                 *extra]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def _served_reply(client, model, **sampled):
    kw = sampled or dict(temperature=0)
    return client.chat.completions.create(model=model, max_tokens=MAX_TOKENS,
                                          messages=[{"role": "user", "content": PROMPT}], **kw)


def test_every_method_is_served_and_answers_as_affina_generate(matrix, served, capsys):
    base, store, sharing = matrix
    engine, client = served
    assert [m.id for m in client.models.list().data] == ["base", *method_names()]
    assert [name for name, _ in engine.scan().unavailable] == ["broken"]
    assert "no-such-method" in engine.scan().unavailable[0][1]

    # Shared adapters first, so the base wrappers then run over a base that carries LoRA layers:
    # their answers must still be those of the unchanged base.
    order = sorted(method_names(), key=lambda m: list(Sharing).index(sharing[m]))
    answers = {}
    for method in order:
        reply = _served_reply(client, method)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        # `affina generate` prints the reply stripped of surrounding whitespace.
        assert text.strip() == _cli_reply(capsys, store / method), method
        if get_method(method).task.output == "label":
            assert text in ("neg", "pos") and finish == "stop"
        else:
            assert finish in ("stop", "length") and reply.usage.completion_tokens <= MAX_TOKENS
        answers[method] = text
    assert len(set(answers.values())) > 3  # the runs really answer differently
    assert engine.loaded_models() == [m for m in order if sharing[m] is Sharing.OWN_COPY][-2:]

    # Sampling with a seed: one shared adapter and one own-copy run.
    for method in ("lora", "full"):
        assert {sharing["lora"], sharing["full"]} == {Sharing.PEFT_ADAPTER, Sharing.OWN_COPY}
        reply = _served_reply(client, method, **SAMPLED)
        assert reply.choices[0].message.content.strip() == _cli_reply(capsys, store / method, **SAMPLED)


def test_label_run_streams_its_label_and_unknown_runs_get_openai_errors(served):
    _, client = served
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="head", messages=[{"role": "user", "content": "this is great"}], stream=True,
        temperature=0, max_tokens=1) if c.choices]
    assert "".join(pieces) in ("neg", "pos")
    with pytest.raises(openai.BadRequestError) as e:
        _served_reply(client, "broken")
    assert e.value.status_code == 400 and e.value.code == "model_not_servable"


def test_print_vllm_lists_the_shared_adapters_only(matrix):
    import shlex

    from affina.serve.server import ServeOptions, vllm_command

    base, store, sharing = matrix
    command = shlex.split(vllm_command(ServeOptions(store=store, base=str(base))))
    modules = command[command.index("--lora-modules") + 1:]
    assert {m.split("=")[0] for m in modules} == {m for m, s in sharing.items()
                                                    if s is Sharing.PEFT_ADAPTER}
