"""The CLI's inspection and inference commands on tiny models."""

import io
import json

import pytest

from affina.cli import main
from affina.config import load_config
from affina.data.loading import dataset_fingerprint, load_records
from affina.train import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("cli-run")
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n"
                            for i in range(12)))
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train={data}",
                             f"train.output_dir={tmp}", "train.run_name=run", "train.max_steps=2",
                             "track.mlflow=false", "method.r=2"])
    return train(cfg).run_dir


def test_data_inspect_prints_format_stats_fingerprint_and_masked_example(tmp_path, tiny_model_dir, capsys):
    f = tmp_path / "d.jsonl"
    rows = [{"instruction": "name a colour", "output": "red"}] * 2 + \
           [{"instruction": "name a fruit", "input": "sweet", "output": "mango"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "inspect", str(f), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "alpaca" in out and "duplicate examples" in out
    assert dataset_fingerprint(load_records([f]).records) in out.replace("\n", "").replace("│", "").replace(" ", "")
    # The rendered example marks the prompt as masked and leaves the reply unmasked.
    example = out[out.index("as the model sees it"):]
    assert "⟦<|im_start|>system" in example and "⟧red<|im_end|>" in example


def test_data_inspect_bad_file_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    assert main(["data", "inspect", str(f), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty.jsonl" in err[0]


def _expected_reply(ref, prompt):
    """What greedy decoding of the opened model gives, computed without the CLI."""
    from affina.evaluate.generation import generate_texts
    from affina.runs import open_model

    opened = open_model(ref)
    text = opened.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                tokenize=False, add_generation_prompt=True)
    return generate_texts(opened.model, opened.tokenizer, [text], max_new_tokens=5)[0], opened


def test_generate_from_a_run_and_from_a_model(tiny_run, tiny_model_dir, capsys):
    for ref in (tiny_run, tiny_model_dir):
        assert main(["generate", str(ref), "--prompt", "q1", "--max-new-tokens", "5"]) == 0
        expected, opened = _expected_reply(str(ref), "q1")
        assert capsys.readouterr().out == expected + "\n"
    # A run opens as its adapter applied to the base named in its manifest.
    assert opened.record is None
    _, from_run = _expected_reply(str(tiny_run), "q1")
    assert from_run.record.base_model.spec == str(tiny_model_dir)
    assert type(from_run.model).__name__ == "PeftModelForCausalLM"


def test_chat_keeps_history_and_quits_on_empty_line(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand again\n\n"))
    assert main(["chat", str(tiny_run), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("model>") == 2


def test_unknown_model_path_is_one_line_exit_2(capsys):
    assert main(["generate", "./no/such/model", "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no/such/model" in err[0]


def test_methods_and_config_listings(capsys):
    assert main(["methods"]) == 0
    assert "lora" in capsys.readouterr().out
    assert main(["config"]) == 0
    assert "train.lr" in capsys.readouterr().out
