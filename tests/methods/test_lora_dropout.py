"""LoRA's `method.dropout: auto`: resolved per device and profile when training starts (the GPU
branch by passing the device decision in), the number recorded in the run record and in the
saved PEFT adapter config."""

from __future__ import annotations

import json

import pytest

from affina.config import load_config
from affina.errors import ConfigError
from affina.methods import build_method_config, get_method
from affina.methods.lora import auto_dropout
from affina.record import read_record
from affina.train import train
from tests.helpers import method_rows


@pytest.mark.parametrize("device, profile, expected", [
    ("cuda", "speed", 0.0), ("cuda", "memory", 0.0), ("cuda", "default", 0.05),
    ("cpu", "default", 0.0), ("cpu", "speed", 0.0), (None, "default", 0.0),
])
def test_auto_dropout_per_device_and_profile(device, profile, expected):
    assert auto_dropout(device, profile) == expected


@pytest.mark.parametrize("name", ["lora", "dora", "rslora", "qlora", "dpo"])
def test_every_lora_family_method_resolves_auto(name):
    method = get_method(name)
    cfg = build_method_config(method, {})
    assert cfg.dropout == "auto"
    assert method.resolve_for_device(cfg, "cuda", "speed").dropout == 0.0
    assert method.resolve_for_device(cfg, "cuda", "default").dropout == 0.05
    assert method.resolve_for_device(cfg, "cpu", "default").dropout == 0.0
    assert cfg.dropout == "auto"  # resolving returns a copy


def test_a_number_is_kept_on_every_device():
    method = get_method("lora")
    cfg = build_method_config(method, {"dropout": 0})
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    for device, profile in (("cuda", "default"), ("cuda", "speed"), ("cpu", "default")):
        assert method.resolve_for_device(build_method_config(method, {"dropout": 0.1}), device, profile).dropout == 0.1


@pytest.mark.parametrize("value", ["sometimes", 1.0, -0.1, True])
def test_bad_dropout_is_a_config_error(value):
    with pytest.raises(ConfigError, match="method.dropout must be auto or a number in \\[0, 1\\)"):
        build_method_config(get_method("lora"), {"dropout": value})


def test_methods_without_device_options_are_unchanged():
    method = get_method("ia3")
    cfg = build_method_config(method, {})
    assert method.resolve_for_device(cfg, "cuda", "speed") is cfg


def test_a_cpu_run_records_the_resolved_dropout(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text(method_rows(classify=False))
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train=[{data}]", "model.device=cpu",
                             "data.val_fraction=0", f"train.output_dir={tmp_path}", "train.run_name=auto",
                             "train.max_steps=1", "train.batch_size=4", "method.r=2", "track.mlflow=false"])
    run_dir = train(cfg, display="quiet").run_dir
    assert read_record(run_dir).method.options["dropout"] == 0.0
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["lora_dropout"] == 0.0
