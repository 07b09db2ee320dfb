import pytest
import yaml

from affina.config import apply_overrides, config_from_dict, config_to_dict, describe_keys, load_config
from affina.errors import ConfigError
from affina.methods import build_method_config, get_method


def test_yaml_then_overrides(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}\n")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("data:\n  train: [d.jsonl]\n  max_length: 128\nmethod:\n  name: lora\n  r: 4\n")
    cfg = load_config(cfg_file, ["train.lr=1e-4", "method.alpha=8", "data.packing=true"])
    assert cfg.data.train == [str(tmp_path / "d.jsonl")]  # resolved next to the YAML
    assert cfg.data.max_length == 128 and cfg.data.packing is True
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.method.options == {"r": 4, "alpha": 8}


def test_round_trip_through_dict():
    cfg = load_config(None, ["method.r=8", "train.seed=7"])
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("override, words", [
    ("train.lrr=1", ["unknown config key 'train.lrr'", "lr"]),
    ("trian.lr=1", ["unknown config section 'trian'"]),
    ("train.batch_size=abc", ["train.batch_size", "integer"]),
    ("data.packing=maybe", ["data.packing", "true or false"]),
    ("nonsense", ["section.key=value"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        apply_overrides(load_config(), [override])
    for w in words:
        assert w in str(e.value)


def test_bad_yaml_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  train: [a\n  other: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+"):
        load_config(f)


def test_method_options_validated_by_the_method():
    lora = get_method("lora")
    assert build_method_config(lora, {"r": 4}).r == 4
    with pytest.raises(ConfigError, match="method.rank"):
        build_method_config(lora, {"rank": 4})
    with pytest.raises(ConfigError, match="method.r must be >= 1"):
        build_method_config(lora, {"r": 0})
    with pytest.raises(ConfigError, match="unknown method 'lorax'"):
        get_method("lorax")


def test_every_key_is_documented():
    rows = describe_keys()
    assert len(rows) > 30
    assert all(help_text for _, _, help_text in rows)


def test_shipped_example_config_is_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in (root / "examples").rglob("*.yaml"):
        if "params" in (yaml.safe_load(path.read_text()) or {}):
            continue  # a search space for `affina sweep`, checked in tests/tune
        cfg = load_config(path)
        build_method_config(get_method(cfg.method.name), cfg.method.options)
        assert all(Path(p).exists() for p in cfg.data.train + cfg.eval.data)
