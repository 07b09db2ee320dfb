"""Raw .txt sources, weighted data mixes, and the run's chat template / system prompt."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from transformers import AutoTokenizer

from affina.config import DataConfig, load_config
from affina.data.inspect import inspect_data
from affina.data.loading import load_records
from affina.data.mixing import load_mix, quotas
from affina.data.prepare import prepare_data
from affina.data.sources import read_rows
from affina.data.templates import configure_chat_template
from affina.data.tokenize import IGNORE_INDEX, FALLBACK_CHAT_TEMPLATE, render_chat, tokenize_record
from affina.errors import ConfigError, DataError

SMOL_DEFAULT = "You are a helpful AI assistant named SmolLM"
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _chat_file(path, n, tag):
    rows = [{"messages": [{"role": "user", "content": f"{tag} q{i}"},
                          {"role": "assistant", "content": f"{tag} a{i}"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


# -- .txt ---------------------------------------------------------------------------------------

def test_txt_paragraphs_are_raw_text_records(tmp_path, tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text("first para\nstill first\n\n  \n\nsecond para\n\n\nthird\n")
    assert list(read_rows(path)) == [(1, {"text": "first para\nstill first"}),
                                     (6, {"text": "second para"}), (9, {"text": "third"})]
    records = load_records([path]).records
    assert [r.kind for r in records] == ["text"] * 3 and records[1].line == 6
    ex = tokenize_record(records[0], tokenizer, 512)
    assert IGNORE_INDEX not in ex.labels  # raw text: loss on every token


def test_txt_mixed_with_chat_is_refused(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("some domain text\n")
    with pytest.raises(DataError, match="all files of a run must be one kind"):
        load_records([_chat_file(tmp_path / "c.jsonl", 2, "c"), txt])


def test_data_inspect_reads_txt(tmp_path, tiny_model_dir, capsys):
    txt = tmp_path / "notes.txt"
    txt.write_text("alpha beta\n\ngamma delta\n")
    out = inspect_data([str(txt)], model_spec=str(tiny_model_dir))
    assert out["rows"] == 2 and out["files"][0]["format"] == "text"
    example = capsys.readouterr().out.split("as the model sees it")[1]
    assert "alpha beta" in example and "⟦" not in example.split("no loss):", 1)[1]


# -- data.mix -----------------------------------------------------------------------------------

def test_quotas_add_up_and_follow_weights():
    assert quotas(10, [1, 1]) == [5, 5]
    assert quotas(10, [3, 1]) == [8, 2] or quotas(10, [3, 1]) == [7, 3]
    assert sum(quotas(7, [1, 1, 1])) == 7


def test_mix_draws_proportions_with_seed(tmp_path):
    a, b = _chat_file(tmp_path / "a.jsonl", 10, "a"), _chat_file(tmp_path / "b.jsonl", 4, "b")
    loaded, report = load_mix([(str(a), 1.0), (str(b), 3.0)], size=20, seed=1)
    counts = Counter(r.source for r in loaded.records)
    assert counts == {str(a): 5, str(b): 15}
    # b is repeated evenly: each of its 4 examples 3 or 4 times, none left out.
    per_example = Counter(r.key() for r in loaded.records if r.source == str(b))
    assert len(per_example) == 4 and set(per_example.values()) <= {3, 4}
    assert [(r["rows"], r["drawn"]) for r in report] == [(10, 5), (4, 15)]
    again, _ = load_mix([(str(a), 1.0), (str(b), 3.0)], size=20, seed=1)
    assert [r.key() for r in again.records] == [r.key() for r in loaded.records]
    other, _ = load_mix([(str(a), 1.0), (str(b), 3.0)], size=20, seed=2)
    assert [r.key() for r in other.records] != [r.key() for r in loaded.records]


def test_mix_default_size_is_the_files_total_and_without_replacement(tmp_path):
    a, b = _chat_file(tmp_path / "a.jsonl", 10, "a"), _chat_file(tmp_path / "b.jsonl", 10, "b")
    loaded, _ = load_mix([(str(a), 1.0), (str(b), 1.0)], size=None, seed=0)
    assert len(loaded.records) == 20 and len({r.key() for r in loaded.records}) == 20


def test_mix_config_forms_and_refusals(tmp_path):
    a, b = _chat_file(tmp_path / "a.jsonl", 3, "a"), _chat_file(tmp_path / "b.jsonl", 3, "b")
    as_map = load_config(None, [f"data.mix={{{a}: 2, {b}: 1}}"])
    as_list = load_config(None, [f"data.mix=[{{path: {a}, weight: 2}}, {{path: {b}, weight: 1}}]"])
    assert as_map.data.mix_entries() == as_list.data.mix_entries() == [(str(a), 2.0), (str(b), 1.0)]
    with pytest.raises(ConfigError, match="weight.*> 0"):
        load_config(None, [f"data.mix={{{a}: 0}}"])
    with pytest.raises(ConfigError, match="data.train or data.mix, not both"):
        load_config(None, [f"data.mix={{{a}: 1}}", f"data.train={b}"])
    with pytest.raises(ConfigError, match="path: FILE, weight: W"):
        load_config(None, [f"data.mix=[{{file: {a}}}]"])


def test_prepare_data_records_the_mix(tmp_path, tokenizer):
    a, b = _chat_file(tmp_path / "a.jsonl", 6, "a"), _chat_file(tmp_path / "b.jsonl", 6, "b")
    cfg = DataConfig(mix={str(a): 1, str(b): 2}, mix_size=9, val_fraction=0.0)
    data = prepare_data(cfg, tokenizer, seed=0, progress=False)
    assert len(data.train_records) == 9
    summary = data.summary()
    assert [(m["weight"], m["drawn"]) for m in summary["mix"]] == [(1.0, 3), (2.0, 6)]
    assert {f["role"] for f in summary["files"]} == {"mix"}


# -- chat template and system prompt ------------------------------------------------------------

def test_smollm_template_injects_its_default_system_prompt(tokenizer):
    # The fixture's template is SmolLM2's: the default appears unless a system message is first.
    assert SMOL_DEFAULT in render_chat(tokenizer, CHAT)[0]


def test_system_prompt_none_renders_no_default_system_text(tokenizer):
    configure_chat_template(tokenizer, None, "none")
    text, spans = render_chat(tokenizer, CHAT)
    assert SMOL_DEFAULT not in text and "hello" in text[spans[0][0]:spans[0][1]]
    # Also at generation time (prompt only) — what `generate` and the server render.
    prompt = tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert SMOL_DEFAULT not in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_system_prompt_text_is_used_unless_the_example_has_one(tokenizer):
    configure_chat_template(tokenizer, None, 'Answer "briefly" {{ not jinja }}\nplease')
    text = render_chat(tokenizer, CHAT)[0]
    assert 'Answer "briefly" {{ not jinja }}\nplease' in text and SMOL_DEFAULT not in text
    own = render_chat(tokenizer, [{"role": "system", "content": "mine"}, *CHAT])[0]
    assert "mine" in own and "briefly" not in own


def test_chat_template_builtin_file_and_inline(tmp_path, tokenizer):
    assert configure_chat_template(tokenizer, "chatml", None) == "builtin chatml"
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert SMOL_DEFAULT not in render_chat(tokenizer, CHAT)[0]
    custom = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    path = tmp_path / "mine.jinja"
    path.write_text(custom)
    assert configure_chat_template(tokenizer, str(path), None) == "file mine.jinja"
    assert render_chat(tokenizer, CHAT)[0] == "[user] hi\n[assistant] hello\n"
    configure_chat_template(tokenizer, custom, None)
    assert tokenizer.chat_template == custom


def test_builtin_template_names_match_their_texts():
    from affina import config
    from affina.data import templates

    assert set(config.BUILTIN_TEMPLATES) == set(templates.BUILTIN_TEMPLATES)


def test_chat_template_config_refusals(tmp_path):
    with pytest.raises(ConfigError, match="data.chat_template"):
        load_config(None, ["data.chat_template=no_such_builtin"])
    with pytest.raises(ConfigError, match="existing .jinja file"):
        load_config(None, [f"data.chat_template={tmp_path / 'missing.jinja'}"])
