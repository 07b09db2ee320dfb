"""Every method through the one SFT recipe on a tiny model, then opened, generated from,
classified with and exported the way users do it."""

from __future__ import annotations

import pytest
import torch

from affina.cli import main
from affina.config import load_config
from affina.methods import get_method, method_names
from affina.runs import open_model
from affina.train import train
from tests.helpers import SMALL_METHOD_OPTIONS, method_rows

METHODS = ["full", "partial", "lora", "dora", "rslora", "qlora", "ia3", "prefix", "prompt",
           "adapter", "head", "fewshot"]
def _data(tmp_path, classify: bool):
    path = tmp_path / ("labels.jsonl" if classify else "chat.jsonl")
    path.write_text(method_rows(classify))
    return path


def _train(tmp_path, model_dir, method: str):
    overrides = [f"model.spec={model_dir}", f"data.train={_data(tmp_path, method == 'head')}",
                 "data.val_fraction=0.25", f"train.output_dir={tmp_path / 'runs'}",
                 f"train.run_name={method}", "train.max_steps=2", "train.batch_size=4",
                 "train.eval_steps=0", "train.save_steps=100", "track.mlflow=false",
                 f"method.name={method}", *SMALL_METHOD_OPTIONS.get(method, [])]
    return train(load_config(None, overrides))


PREFERENCE = ["dpo", "orpo", "kto"]  # preference data: trained in test_preference.py


def test_registry_lists_every_method_and_the_cli_uses_it(capsys):
    assert set(method_names()) == set(METHODS + PREFERENCE)
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in METHODS)
    assert main(["train", "method.name=nope", "track.mlflow=false"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "adapter" in err and "fewshot" in err


def test_methods_with_model_reports_trainable_counts(tiny_model_dir, capsys):
    assert main(["methods", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert name in out
    assert "MiB" in out and "%" in out


@pytest.mark.parametrize("method", METHODS)
def test_recipe_trains_saves_opens_and_exports(method, tmp_path, tiny_model_dir):
    result = _train(tmp_path, tiny_model_dir, method)
    m = result.record
    assert m.method.name == method
    assert m.train.global_step == (0 if method == "fewshot" else 2)
    assert m.metrics.validation_loss is not None
    assert (m.method.trainable_params == 0) == (method == "fewshot")
    if method == "head":
        assert m.method.options["labels"] == ["neg", "pos"]

    opened = open_model(str(result.run_dir))
    prompt = opened.tokenizer.apply_chat_template([{"role": "user", "content": "say the number 3"}],
                                                  tokenize=False, add_generation_prompt=True)
    from affina.evaluate.generation import generate_texts

    reply = generate_texts(opened.model, opened.tokenizer, [prompt], max_new_tokens=4)[0]
    if method == "head":
        assert opened.task.output == "label" and reply in ("neg", "pos")
        assert set(opened.classify(["this is great", "this is awful"])) <= {"neg", "pos"}
    else:
        assert opened.task.output == "text" and isinstance(reply, str)

    out = tmp_path / "merged"
    if not get_method(method).can_merge:
        assert main(["export", str(result.run_dir), "--merged", str(out)]) == 2
        return
    assert main(["export", str(result.run_dir), "--merged", str(out)]) == 0
    import transformers

    cls = (transformers.AutoModelForSequenceClassification if method == "head"
           else transformers.AutoModelForCausalLM)
    plain = cls.from_pretrained(out)
    # The artifact on a full-precision base (a qlora run opens on its 4-bit base; the export
    # folds the adapter into the full-precision weights).
    from affina.models import load_model

    unmerged = get_method(method).load(load_model(str(tiny_model_dir), device="cpu", dtype="float32").model,
                                       result.run_dir / m.artifact)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = unmerged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert torch.allclose(plain(ids).logits, expected, atol=1e-4)


def test_export_gguf_round_trips_through_the_gguf_loader(tmp_path, tiny_model_dir):
    from affina.models import load_model

    result = _train(tmp_path, tiny_model_dir, "lora")
    out = tmp_path / "merged"
    assert main(["export", str(result.run_dir), "--merged", str(out), "--gguf"]) == 0
    assert (out / "model.gguf").is_file()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    back = load_model(str(out / "model.gguf"), device="cpu", dtype="float32").model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, merged(ids).logits, atol=1e-4)


def test_export_gguf_refuses_other_architectures_clearly(tmp_path, tiny_model_dir, capsys):
    result = _train(tmp_path, tiny_model_dir, "head")
    capsys.readouterr()  # the training's own output
    code = main(["export", str(result.run_dir), "--merged", str(tmp_path / "m"), "--gguf"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "GGUF export supports LlamaForCausalLM" in err[0] and "LlamaForSequenceClassification" in err[0]
    assert (tmp_path / "m" / "config.json").is_file()  # the HF directory was still written
