"""GGUF export round-trips through affina with the run's template and stop tokens, in every
weight type, and the parity check catches an exported form that would answer differently."""

from __future__ import annotations

import pytest

from affina.cli import main
from affina.parity import check_parity
from tests.methods.test_methods_recipe import _train


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    return _train(tmp_path_factory.mktemp("parity"), tiny_model_dir, "lora")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # `affina generate x.gguf` converts into the model cache: keep that out of the user's.
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))


def _export(run, out, *extra) -> int:
    return main(["export", str(run.run_dir), "--merged", str(out), "--gguf", *extra])


def test_gguf_carries_template_special_ids_and_generates_like_the_run(lora_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "m"
    assert _export(lora_run, out) == 0
    table = capsys.readouterr().out
    assert "gguf f32" in table and "4/4" in table
    # Read from a directory holding only the GGUF, so its own metadata is what is tested.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.gguf").symlink_to(out / "model.gguf")
    tok = AutoTokenizer.from_pretrained(alone, gguf_file="model.gguf")
    hf = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == hf.chat_template
    assert (tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 2, 0)
    assert tok("hello <|im_start|>user")["input_ids"] == hf("hello <|im_start|>user")["input_ids"]

    answers = []
    for ref in (lora_run.run_dir, out, out / "model.gguf"):
        assert main(["generate", str(ref), "--prompt", "hi"]) == 0
        answers.append(capsys.readouterr().out.strip().splitlines()[-1:])
    assert answers[0] == answers[1] == answers[2]


def test_gguf_types_shrink_the_file_and_load(lora_run, tmp_path, capsys):
    import gguf

    sizes = {}
    for kind in ("f32", "f16", "q8_0"):
        out = tmp_path / kind
        assert _export(lora_run, out, "--gguf-type", kind) == 0
        sizes[kind] = (out / "model.gguf").stat().st_size
        reader = gguf.GGUFReader(str(out / "model.gguf"))
        types = {t.tensor_type.name for t in reader.tensors}
        assert {"f32": {"F32"}, "f16": {"F16", "F32"}, "q8_0": {"Q8_0", "F32"}}[kind] == types
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]
    assert "gguf q8_0" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "q8_0" / "model.gguf"), "--prompt", "hi"]) == 0


def test_parity_fails_on_a_changed_chat_template(lora_run, tmp_path, capsys):
    out = tmp_path / "m"
    assert _export(lora_run, out, "--no-parity-check") == 0
    assert "parity with the run" not in capsys.readouterr().out
    result = check_parity(lora_run.run_dir, [out], max_new_tokens=4)
    assert result.ok and [f.form for f in result.forms] == ["adapter", "merged"]

    (out / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    result = check_parity(lora_run.run_dir, [out], max_new_tokens=4)
    merged = result.forms[1]
    assert not result.ok and not merged.template_match
    assert any("merged: chat template sha256" in p for p in result.problems())
    with pytest.raises(Exception) as err:
        result.raise_for_mismatch()
    assert getattr(err.value, "exit_code", None) == 1 and "parity check failed" in str(err.value)


def test_export_refuses_an_unknown_gguf_type(lora_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _export(lora_run, tmp_path / "m", "--gguf-type", "q2_k")
    assert exit_.value.code == 2
