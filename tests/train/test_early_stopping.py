"""Early stopping on a tiny model that overfits: training ends before max_steps and the saved
adapter is the best checkpoint's."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from affina.config import load_config
from affina.errors import ConfigError
from affina.train import train


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _overfit_config(tmp_path, model_dir, **extra):
    # 6 training rows that teach nonsense answers, validation rows that ask for something else:
    # a high learning rate memorises the training rows and validation loss turns upward.
    train_rows = [{"messages": [{"role": "user", "content": f"word {i}"},
                                {"role": "assistant", "content": f"zebra {i * 7} quartz {i}"}]}
                  for i in range(6)]
    val_rows = [{"messages": [{"role": "user", "content": f"word {i}"},
                              {"role": "assistant", "content": f"number {i}"}]} for i in range(20, 26)]
    overrides = [f"model.spec={model_dir}",
                 f"data.train={_write(tmp_path / 'train.jsonl', train_rows)}",
                 f"data.validation={_write(tmp_path / 'val.jsonl', val_rows)}",
                 f"train.output_dir={tmp_path / 'runs'}", "train.run_name=es",
                 "train.max_steps=200", "train.eval_steps=2", "train.save_steps=2",
                 "train.batch_size=6", "train.lr=3e-2", "train.warmup_ratio=0",
                 "train.scheduler=constant", "train.logging_steps=2",
                 "train.early_stopping_patience=2", "method.r=8", "track.mlflow=false"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def test_training_stops_early_and_keeps_the_best_checkpoint(tmp_path, tiny_model_dir):
    result = train(_overfit_config(tmp_path, tiny_model_dir))
    tr = result.record.train
    assert tr.stopped_early is True
    assert tr.stop_step < 200 and tr.global_step == tr.stop_step
    history = json.loads((result.run_dir / "history.json").read_text())
    val = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    best_step = min(val, key=val.get)
    assert tr.best_checkpoint == f"checkpoints/checkpoint-{best_step}"
    assert tr.best_metric == pytest.approx(val[best_step])
    assert best_step < tr.stop_step
    assert (result.run_dir / "learning_curve.png").stat().st_size > 0

    saved = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    best = load_file(str(result.run_dir / tr.best_checkpoint / "adapter_model.safetensors"))
    last = load_file(str(result.run_dir / "checkpoints" / f"checkpoint-{tr.stop_step}"
                         / "adapter_model.safetensors"))
    assert saved.keys() == best.keys()
    for key in saved:
        assert torch.equal(saved[key], best[key]), key
    assert any(not torch.equal(saved[k], last[k]) for k in saved)
    # The final validation loss is the restored checkpoint's.
    assert result.record.metrics.validation_loss == pytest.approx(val[best_step], rel=1e-4)


def test_early_stopping_needs_checkpoints_on_validation_steps(tmp_path, tiny_model_dir):
    # Refused when the config is built: nothing is loaded or written.
    with pytest.raises(ConfigError, match="save_steps a multiple of"):
        _overfit_config(tmp_path, tiny_model_dir, **{"train.save_steps": 3})
    assert not (tmp_path / "runs").exists()
