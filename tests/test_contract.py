"""The contracts between the layers, pinned: the Method base class and registry, the run record
(old and new), config refusal before anything is written, one macro-F1, and run-name reuse.

Each test names what would break if the contract did. None loads a model except where it says so.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from affina.cli import main
from affina.methods import Method, get_method
from affina.methods.base import _REGISTRY, register


# -- Method base class and registry ----------------------------------------------------------


@dataclass
class _Cfg:
    pass


def _method_class(name="contract-test", **attrs):
    body = dict(name=name, description="a test method", config_class=_Cfg, artifact_kind="adapter",
                apply=lambda self, model, cfg: model, save=lambda self, model, d: None,
                load=lambda self, base, d: base)
    body.update(attrs)
    return type("ContractMethod", (Method,), body)


def test_register_refuses_a_duplicate_name_with_a_different_class():
    lora = get_method("lora")
    impostor = _method_class(name="lora")()
    with pytest.raises(ValueError, match="already registered"):
        register(impostor)
    assert get_method("lora") is lora
    register(lora)  # the same class again is harmless (re-import)
    with pytest.raises(TypeError, match="not a Method"):
        register(object())


def test_a_method_missing_apply_cannot_be_instantiated():
    body = dict(name="no-apply", description="d", config_class=_Cfg, artifact_kind="adapter",
                save=lambda self, model, d: None, load=lambda self, base, d: base)
    cls = type("NoApply", (Method,), body)
    with pytest.raises(TypeError, match="apply"):
        cls()


def test_a_method_missing_name_fails_at_class_definition():
    with pytest.raises(TypeError, match="must set `name`"):
        type("Nameless", (Method,), dict(description="d", config_class=_Cfg, artifact_kind="adapter",
                                        apply=lambda self, m, c: m, save=lambda self, m, d: None,
                                        load=lambda self, b, d: b))
    with pytest.raises(TypeError, match="artifact_kind"):
        _method_class(artifact_kind="weights")
    assert "contract-test" not in _REGISTRY  # defining a class registers nothing


# -- head: data preparation does not mutate the config ----------------------------------------


def test_head_prepare_data_leaves_the_config_and_resolve_config_returns_labels(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from affina.config import DataConfig
    from affina.methods import build_method_config

    rows = [{"text": f"item {i}", "label": ["spam", "ham", "eggs"][i % 3]} for i in range(9)]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = get_method("head")
    cfg = build_method_config(head, {})
    before = copy.deepcopy(cfg)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = head.prepare_data(cfg, DataConfig(train=[str(path)], val_fraction=0.0), tokenizer, 0)
    assert cfg == before and list(cfg.labels) == []
    assert data.labels == ["eggs", "ham", "spam"]
    resolved = head.resolve_config(cfg, data)
    assert resolved is not cfg and resolved.labels == ["eggs", "ham", "spam"]
    assert cfg == before


# -- the run record -------------------------------------------------------------------------


SCHEMA_1 = {
    "schema_version": 1,
    "kind": "adapter", "artifact": "adapter", "created": "2026-01-02T03:04:05+00:00",
    "base_model": {"spec": "default", "path": "/models/smollm2", "fingerprint": "sha256:abc",
                   "class": "LlamaForCausalLM"},
    "data": {"files": [{"path": "/data/train.jsonl", "format": "chat", "rows": 24,
                        "sha256": "f" * 64, "role": "train"}],
             "train": {"rows": 18, "fingerprint": "sha256:t", "tokens": 900, "truncated": 0},
             "validation": {"rows": 6, "fingerprint": "sha256:v", "tokens": 300, "truncated": 0},
             "packing": None, "chat_template": "tokenizer", "warnings": []},
    "method": {"name": "lora", "r": 4, "alpha": 16, "dropout": 0.0,
               "trainable_params": 1234, "total_params": 99999, "trainable_percent": 1.234,
               "trainable_bytes": 4936, "adapted_modules": 14},
    "seed": 42, "device": "cpu", "versions": {"torch": "2.13"}, "git_commit": None,
    "mlflow_run_id": "abc123",
    "train": {"global_step": 8, "epochs": 1.0, "train_loss": 2.5, "seconds": 3.2,
              "best_checkpoint": None, "best_metric": None, "best_step": None,
              "stopped_early": False, "stop_step": 8},
    "metrics": {"validation_loss": 2.4, "eval_before": None, "eval_after": {"exact_match": 0.5}},
}


def test_a_schema_1_record_loads_into_the_typed_record(tmp_path):
    from affina.record import read_record
    from affina.record.run_record import SCHEMA_VERSION, BaseModelInfo, MethodInfo

    (tmp_path / "affina.json").write_text(json.dumps(SCHEMA_1))
    record = read_record(tmp_path)
    assert record.schema_version == SCHEMA_VERSION
    assert isinstance(record.base_model, BaseModelInfo)
    assert record.base_model.model_class == "LlamaForCausalLM"
    assert isinstance(record.method, MethodInfo) and record.method.name == "lora"
    assert record.method.options == {"r": 4, "alpha": 16, "dropout": 0.0}
    assert record.method.report == {"adapted_modules": 14}
    assert (record.method.trainable_params, record.method.total_params) == (1234, 99999)
    assert record.data.train.rows == 18 and record.data.train.stats["tokens"] == 900
    assert record.data_files("train")[0].sha256 == "f" * 64
    assert record.train.global_step == 8 and record.metrics.eval_after == {"exact_match": 0.5}


def test_a_record_round_trips_write_then_read(tmp_path):
    from affina.record import read_record
    from affina.record.run_record import record_from_dict, write_record

    record = record_from_dict(copy.deepcopy(SCHEMA_1))
    write_record(tmp_path, record)
    again = read_record(tmp_path)
    assert again == record
    assert json.loads((tmp_path / "affina.json").read_text())["schema_version"] == 2


# -- config values refused before a run directory or a model ---------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    import affina.train.recipe as recipe

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a config that should have been refused")
    monkeypatch.setattr(recipe, "load_model", refuse)


@pytest.mark.parametrize("override,key", [
    ("train.lr=-1e-3", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("model.device=tpu", "model.device"),
    ("model.dtype=float16", "model.dtype"),
    ("model.dtype=float64", "model.dtype"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"),
])
def test_a_bad_config_value_is_refused_in_one_line_before_anything_is_written(
        override, key, tmp_path, capsys, no_model_load):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    out = tmp_path / "runs"
    code = main(["train", "model.spec=/nonexistent/model", f"data.train={data}",
                 f"train.output_dir={out}", "train.run_name=bad", "track.mlflow=false", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0], err
    assert not out.exists()


def test_a_run_that_failed_before_its_first_checkpoint_can_rerun_under_its_name(
        tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": f"n {i}"}) + "\n"
                            for i in range(8)))
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{}")  # a directory that only fails when loaded
    args = [f"data.train={data}", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=again",
            "data.val_fraction=0", "train.max_steps=1", "train.batch_size=4", "method.r=2",
            "track.mlflow=false"]
    assert main(["train", "-q", f"model.spec={bad_model}", *args]) == 2
    run = tmp_path / "runs" / "again"
    assert (run / "config.yaml").is_file() and not (run / "affina.json").exists()
    capsys.readouterr()
    assert main(["train", f"model.spec={tiny_model_dir}", *args]) == 0
    assert (run / "affina.json").is_file()
    assert "reusing" in capsys.readouterr().out
    # ...but a finished run is never overwritten
    assert main(["train", "-q", f"model.spec={tiny_model_dir}", *args]) == 2


# -- one macro-F1 ---------------------------------------------------------------------------


def test_macro_f1_agrees_between_evaluation_and_the_classification_head():
    from affina.evaluate.metrics import macro_f1
    from affina.methods.head_model import classification_scores

    labels = ["neg", "pos", "neutral"]
    gold = ["neg", "neg", "pos", "pos", "neg", "pos"]
    predicted = ["neg", "neutral", "pos", "neg", "neutral", "pos"]  # "neutral" is never gold
    as_int = {name: i for i, name in enumerate(labels)}
    expected = classification_scores([as_int[p] for p in predicted], [as_int[g] for g in gold],
                                     len(labels))["macro_f1"]
    assert macro_f1(predicted, gold) == pytest.approx(expected)
    # mean over the two gold classes: neg F1 = 2*1/(2+1+2) = 0.4, pos F1 = 2*2/(4+0+1) = 0.8
    assert expected == pytest.approx((0.4 + 0.8) / 2)
