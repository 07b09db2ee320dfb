"""Training options on the tiny model: optimizer, attention, NEFTune, chat template and system
prompt saved with the artifact, data mixes in the record, a chosen resume checkpoint, and the
TensorBoard / W&B trackers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, TrainerCallback

from affina.cli import main
from affina.config import load_config
from affina.errors import AffinaError, ConfigError
from affina.train import train

CUSTOM = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _data(path: Path, n=16, tag="x"):
    rows = [{"messages": [{"role": "user", "content": f"{tag} say {i}"},
                          {"role": "assistant", "content": f"{tag} number {i}"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path, model_dir, name, data=True, **extra):
    overrides = [f"model.spec={model_dir}", "data.val_fraction=0.25",
                 f"train.output_dir={tmp_path / 'runs'}", f"train.run_name={name}",
                 "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2", "train.logging_steps=1",
                 "train.batch_size=4", "train.lr=5e-3", "method.r=4", "track.mlflow=false"]
    if data:
        overrides.append(f"data.train={_data(tmp_path / 'train.jsonl')}")
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


class _Spy(TrainerCallback):
    def __init__(self):
        self.optimizer = self.args = self.model = None
        self.losses = []

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.optimizer, self.args, self.model = optimizer, args, model

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def test_optimizer_attention_and_neftune_reach_the_trainer(tmp_path, tiny_model_dir):
    spy = _Spy()
    train(_config(tmp_path, tiny_model_dir, "opt", **{"train.optimizer": "sgd",
                                                     "model.attn_implementation": "eager",
                                                     "train.neftune_alpha": 5}), callbacks=(spy,))
    assert isinstance(spy.optimizer.optimizer if hasattr(spy.optimizer, "optimizer") else spy.optimizer,
                      torch.optim.SGD)
    assert spy.args.optim == "sgd" and spy.args.neftune_noise_alpha == 5
    assert spy.model.config._attn_implementation == "eager"

    # NEFTune adds noise to the embeddings while training, so the first loss differs from the
    # same run without it (same seed, same data).
    plain, noisy = _Spy(), _Spy()
    train(_config(tmp_path, tiny_model_dir, "plain"), callbacks=(plain,))
    train(_config(tmp_path, tiny_model_dir, "noisy", **{"train.neftune_alpha": 15}), callbacks=(noisy,))
    assert plain.losses[0] != pytest.approx(noisy.losses[0], rel=1e-6)


@pytest.mark.parametrize("name,cls", [("adafactor", "transformers.optimization.Adafactor"),
                                      ("adamw_bnb_8bit", "bitsandbytes.optim.adamw.AdamW")])
def test_other_optimizers_train_on_cpu(tmp_path, tiny_model_dir, name, cls):
    spy = _Spy()
    train(_config(tmp_path, tiny_model_dir, name, **{"train.optimizer": name, "train.max_steps": 2,
                                                      "train.eval_steps": 0}), callbacks=(spy,))
    inner = getattr(spy.optimizer, "optimizer", spy.optimizer)
    assert f"{type(inner).__module__}.{type(inner).__name__}" == cls and spy.losses
    if name == "adamw_bnb_8bit":  # bitsandbytes' AdamW with 8-bit optimizer state
        assert inner.args.optim_bits == 8


@pytest.mark.parametrize("key,value,match", [
    ("train.optimizer", "lion", "train.optimizer"),
    ("train.neftune_alpha", -1, "train.neftune_alpha"),
    ("model.attn_implementation", "fast", "model.attn_implementation"),
    ("model.attn_implementation", "flash_attention_2", "flash-attn"),
])
def test_bad_training_options_stop_before_anything_is_written(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"train.output_dir={tmp_path / 'runs'}", f"{key}={value}"])
    assert not (tmp_path / "runs").exists()


def test_template_system_prompt_and_mix_are_saved_with_the_run(tmp_path, tiny_model_dir):
    a, b = _data(tmp_path / "a.jsonl", 12, "a"), _data(tmp_path / "b.jsonl", 4, "b")
    template = tmp_path / "custom.jinja"
    template.write_text(CUSTOM)
    cfg = _config(tmp_path, tiny_model_dir, "tmpl", data=False, **{
        "data.mix": f"{{{a}: 1, {b}: 1}}", "data.mix_size": 16,
        "data.chat_template": str(template), "data.system_prompt": "none"})
    run = train(cfg).run_dir
    saved = AutoTokenizer.from_pretrained(run / "adapter")
    assert CUSTOM in saved.chat_template  # the custom template, with the system-prompt prefix
    prompt = saved.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                       add_generation_prompt=True)
    assert prompt == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    from affina.runs import open_model  # what generate, chat and the server open

    assert open_model(run).tokenizer.chat_template == saved.chat_template
    record = json.loads((run / "affina.json").read_text())
    assert record["data"]["chat_template"] == "file custom.jinja, no default system prompt"
    assert [(m["weight"], m["rows"], m["drawn"]) for m in record["data"]["mix"]] == [(1.0, 12, 8), (1.0, 4, 8)]
    assert [f["role"] for f in record["data"]["files"]] == ["mix", "mix"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["chat_template"] == CUSTOM  # inlined: the run does not need the file
    assert [m["weight"] for m in config["data"]["mix"]] == [1.0, 1.0]
    assert Path(config["data"]["mix"][0]["path"]).is_absolute()


def test_resume_from_a_chosen_checkpoint(tmp_path, tiny_model_dir, capsys):
    run = train(_config(tmp_path, tiny_model_dir, "res", **{"train.save_total_limit": 3})).run_dir
    assert (run / "checkpoints" / "checkpoint-2").is_dir()
    final = json.loads((run / "affina.json").read_text())["train"]["global_step"]

    spy = _Spy()
    from affina.train.rundir import chosen_checkpoint

    assert chosen_checkpoint(run, "checkpoint-2").endswith("checkpoint-2")
    train(None, resume=run / "checkpoints" / "checkpoint-2", callbacks=(spy,))
    # Steps 3..4 were trained again from checkpoint-2: two logged losses, same end step.
    assert len(spy.losses) == 2
    assert json.loads((run / "affina.json").read_text())["train"]["global_step"] == final

    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--checkpoint", "checkpoint-9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint-9 not found" in err[0] and "checkpoint-2" in err[0]
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{trunc")
    with pytest.raises(AffinaError, match="checkpoint-2: it is incomplete or corrupt"):
        train(None, resume=run, checkpoint="checkpoint-2")


def test_tensorboard_writes_scalars(tmp_path, tiny_model_dir):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is an optional tracker (pip install tensorboard)")
    run = train(_config(tmp_path, tiny_model_dir, "tb", **{"track.tensorboard": "true"})).run_dir
    acc = event_accumulator.EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train_loss" in tags and "eval_loss" in tags
    assert [e.step for e in acc.Scalars("train_loss")][:2] == [1, 2]


def test_wandb_logs_offline(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional tracker (pip install wandb)")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(_config(tmp_path, tiny_model_dir, "wb", **{"track.wandb": "true",
                                                          "track.wandb_project": "p"})).run_dir
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert (run / ".wandb_run_id").read_text() in offline[0].name


@pytest.mark.parametrize("key,package", [("track.wandb", "wandb"), ("track.tensorboard", "tensorboard")])
def test_missing_tracker_package_is_one_line_naming_it(monkeypatch, key, package):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=true"])
    assert f"pip install {package}" in str(e.value) and "\n" not in str(e.value)
