"""Switching `method.name` on the command line (or in a sweep) drops the YAML's method fields that
the new method lacks, with a note; the user's own command-line method keys are still checked."""

from pathlib import Path

import pytest

from affina.config import load_config
from affina.errors import ConfigError
from affina.methods import build_method_config, get_method, method_field_names
from affina.tune.space import apply_params

DEMO = Path(__file__).resolve().parent.parent / "examples" / "product_json" / "run.yaml"


def _method_config(cfg):
    return build_method_config(get_method(cfg.method.name), cfg.method.options)


def test_switching_method_drops_fields_the_new_method_lacks_with_a_note(capsys):
    cfg = load_config(DEMO, method_fields=method_field_names, overrides=["method.name=ia3"])
    assert cfg.method.options == {"target_modules": ["all-linear"]}  # ia3 has target_modules
    _method_config(cfg)  # accepted
    err = capsys.readouterr().err.strip()
    assert err == ("affina: note: method.name=ia3 has no method.r, method.alpha, method.dropout; "
                   "dropped")


def test_fields_the_new_method_shares_are_kept(capsys):
    cfg = load_config(DEMO, method_fields=method_field_names, overrides=["method.name=dora"])
    assert cfg.method.options["r"] == 16 and cfg.method.options["alpha"] == 32
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("overrides", [["method.name=ia3", "method.r=4"],
                                       ["method.r=4", "method.name=ia3"]])
def test_command_line_method_keys_that_do_not_fit_are_still_refused(overrides, capsys):
    cfg = load_config(DEMO, overrides, method_field_names)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) for method 'ia3': method.r;"):
        _method_config(cfg)
    assert "method.alpha, method.dropout; dropped" in capsys.readouterr().err


def test_a_yaml_naming_ia3_with_lora_fields_is_still_refused(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("method: {name: ia3, r: 8}\n")
    with pytest.raises(ConfigError, match=r"method 'ia3': method.r"):
        _method_config(load_config(bad, method_fields=method_field_names))


def test_the_cli_drops_and_notes(tmp_path, capsys):
    from affina.cli import main

    # A missing data file stops the run after the config is built, before any model is loaded.
    assert main(["train", "-c", str(DEMO), "method.name=ia3", "data.train=/no/such.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "affina: note: method.name=ia3 has no method.r, method.alpha, method.dropout; dropped" in err
    assert "file not found" in err


def test_a_sweep_switching_method_drops_the_same_way(capsys):
    base = load_config(DEMO)
    cfg = apply_params(base, {"method.target_modules": ["q_proj"], "method.name": "ia3"})
    assert cfg.method.options == {"target_modules": ["q_proj"]}
    assert base.method.options["r"] == 16  # the base config is left as it was
    assert "method.name=ia3 has no method.r" in capsys.readouterr().err


def test_ia3_on_all_linear_layers_trains(tiny_model_dir, tmp_path):
    """The demo's `target_modules: [all-linear]` survives a switch to ia3, and ia3 accepts it."""
    import json

    from affina.train import train

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(6)))
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train={data}", "data.val_fraction=0",
                             f"train.output_dir={tmp_path}", "train.max_steps=1", "track.mlflow=false",
                             "method.target_modules=[all-linear]", "method.name=ia3"],
                      method_field_names)
    record = train(cfg).record
    assert record.method.name == "ia3" and record.method.trainable_params > 0
