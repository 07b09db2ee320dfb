"""The SFT recipe on a tiny model: artifacts, manifest, resume after a crash, CLI errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from affina.cli import main
from affina.config import config_to_dict, load_config
from affina.train import train

ROOT = Path(__file__).resolve().parents[2]


def _data(tmp_path, n=24):
    rows = [{"messages": [{"role": "user", "content": f"say the number {i}"},
                          {"role": "assistant", "content": f"number {i}"}]} for i in range(n)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path, model_dir, name, **extra):
    overrides = [f"model.spec={model_dir}", f"data.train={_data(tmp_path)}", "data.val_fraction=0.25",
                 f"train.output_dir={tmp_path / 'runs'}", f"train.run_name={name}",
                 "train.max_steps=8", "train.save_steps=4", "train.eval_steps=4",
                 "train.batch_size=4", "train.lr=5e-3", "method.r=4", "track.mlflow=false"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def _adapter(run_dir):
    return load_file(str(Path(run_dir) / "adapter" / "adapter_model.safetensors"))


def test_run_directory_holds_standard_artifacts(tmp_path, tiny_model_dir):
    result = train(_config(tmp_path, tiny_model_dir, "a", **{"track.mlflow": "true",
                                                              "track.uri": f"sqlite:///{tmp_path}/ml.db"}))
    run = result.run_dir
    for name in ("config.yaml", "affina.json", "learning_curve.png", "history.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name

    # The adapter loads with plain peft and changes the base model's output.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = base(x).logits
        tuned = PeftModel.from_pretrained(base, run / "adapter")(x).logits
    assert not torch.allclose(plain, tuned)

    m = json.loads((run / "affina.json").read_text())
    assert m["base_model"]["fingerprint"].startswith("sha256:")
    assert m["data"]["train"]["rows"] == 18 and m["data"]["validation"]["rows"] == 6
    assert m["data"]["train"]["fingerprint"].startswith("sha256:")
    assert m["method"]["name"] == "lora" and m["method"]["trainable_params"] > 0
    assert m["seed"] == 42 and m["train"]["global_step"] == 8
    assert {"torch", "transformers", "peft"} <= set(m["versions"])
    assert m["metrics"]["validation_loss"] is not None
    # evaluated at steps 4 and 8, once each: the last step's evaluation is the final one
    history = json.loads((run / "history.json").read_text())
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [4, 8]
    assert m["metrics"]["validation_loss"] == evals[-1]["eval_loss"]
    # LoRA count in closed form: r * (d_in + d_out) per adapted linear layer.
    cfg = base.config
    d, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim
    per_layer = 4 * ((d + d) + (d + kv) + (d + kv) + (d + d)) + 4 * ((d + i) * 2 + (i + d))
    assert m["method"]["trainable_params"] == per_layer * cfg.num_hidden_layers

    # MLflow holds the run with per-step metrics and the dataset inputs.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/ml.db")
    mrun = client.get_run(m["mlflow_run_id"])
    assert mrun.data.params["method.r"] == "4"
    assert len(client.get_metric_history(mrun.info.run_id, "train_loss")) >= 2
    assert {d.dataset.digest for d in mrun.inputs.dataset_inputs}
    assert "run/affina.json" in [a.path for a in client.list_artifacts(mrun.info.run_id, "run")]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    full = train(_config(tmp_path, tiny_model_dir, "full")).run_dir

    cfg = _config(tmp_path, tiny_model_dir, "crashed")
    cfg_file = tmp_path / "crashed.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    proc = subprocess.run([sys.executable, "-m", "tests.train.kill", str(cfg_file), "4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    crashed = tmp_path / "runs" / "crashed"
    assert (crashed / "checkpoints" / "checkpoint-4").is_dir()
    assert not (crashed / "adapter").exists()

    assert main(["train", "--resume", str(crashed)]) == 0
    a, b = _adapter(full), _adapter(crashed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert json.loads((crashed / "affina.json").read_text())["train"]["global_step"] == 8


def test_packing_run_trains(tmp_path, tiny_model_dir):
    result = train(_config(tmp_path, tiny_model_dir, "packed", **{"data.packing": "true",
                                                                   "data.max_length": 256}))
    packing = result.record.data.packing
    assert packing["rows"] < packing["examples"]
    history = json.loads((result.run_dir / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]


def _run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_errors_are_one_line_with_exit_2(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    code, err = _run_cli(["train", f"model.spec={tiny_model_dir}", f"data.train={bad}",
                          "track.mlflow=false", f"train.output_dir={tmp_path}"], capsys)
    assert code == 2 and len(err) == 1 and "bad.jsonl:2" in err[0]

    code, err = _run_cli(["train", "train.lrr=1"], capsys)
    assert code == 2 and "train.lrr" in err[0]

    code, err = _run_cli(["train", "--resume", str(tmp_path / "nope")], capsys)
    assert code == 2 and "cannot resume" in err[0]


def test_existing_run_name_is_refused(tmp_path, tiny_model_dir):
    train(_config(tmp_path, tiny_model_dir, "same", **{"train.max_steps": 1}))
    from affina.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        train(_config(tmp_path, tiny_model_dir, "same", **{"train.max_steps": 1}))


def test_head_run_reports_classification_scores_on_eval_data(tmp_path, tiny_model_dir):
    """A classification run's held-out evaluation uses its labels, not generation."""
    rows = [{"text": f"item {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
            for i in range(16)]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"model.spec={tiny_model_dir}", f"data.train={data}", "method.name=head",
                             f"train.output_dir={tmp_path}", "train.run_name=head", "train.max_steps=4",
                             "train.batch_size=4", "track.mlflow=false", f"eval.data={data}"])
    result = train(cfg)
    scores = result.record.metrics.eval_after
    assert set(scores) == {"accuracy", "macro_f1"} and 0 <= scores["accuracy"] <= 1
    assert result.record.metrics.eval_before is None
    after = json.loads((result.run_dir / "eval" / "after.json").read_text())
    assert {p["prediction"] for p in after["predictions"]} <= {"pos", "neg"}
