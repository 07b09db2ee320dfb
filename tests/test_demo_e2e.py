"""End to end on the embedded default model: the demo path with a few steps (slow)."""

import json
from pathlib import Path

import pytest
import torch

from affina.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_path_on_default_model(tmp_path, capsys):
    code = main(["train", "-c", str(ROOT / "examples/product_json/run.yaml"),
                 f"train.output_dir={tmp_path}", "train.run_name=demo", "train.max_steps=3",
                 "train.eval_steps=3", "train.save_steps=3", "data.val_fraction=0.02",
                 "eval.limit=4", "eval.max_new_tokens=40", f"track.uri=sqlite:///{tmp_path}/ml.db"])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out evaluation (before vs after)" in out and "json_fields" in out

    run = tmp_path / "demo"
    manifest = json.loads((run / "affina.json").read_text())
    from affina.models import default_model_dir, model_fingerprint

    assert manifest["base_model"]["fingerprint"] == model_fingerprint(default_model_dir())
    assert manifest["data"]["train"]["rows"] == 392 and manifest["data"]["validation"]["rows"] == 8
    assert manifest["metrics"]["eval_before"]["json_fields"] is not None
    assert manifest["metrics"]["eval_after"]["loss"] < manifest["metrics"]["eval_before"]["loss"]
    assert (run / "learning_curve.png").stat().st_size > 1000

    # The adapter is a plain PEFT directory on a plain transformers base.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(default_model_dir())
    model = PeftModel.from_pretrained(base, run / "adapter")
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == \
        manifest["method"]["trainable_params"]
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()

    assert main(["generate", str(run), "--prompt", "Extract the product as JSON with keys brand, "
                 "product, category, color, price.\n\nAcme kettle, red, $20.", "--max-new-tokens", "30"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
def test_transfer_learning_head_on_default_model(tmp_path, capsys):
    code = main(["train", "-c", str(ROOT / "examples/product_category/run.yaml"),
                 f"train.output_dir={tmp_path}", "train.run_name=head", "train.max_steps=3",
                 "train.eval_steps=3", "train.save_steps=3", "data.val_fraction=0.02",
                 "eval.limit=16", "track.mlflow=false"])
    assert code == 0
    manifest = json.loads((tmp_path / "head" / "affina.json").read_text())
    assert manifest["method"]["name"] == "head" and manifest["method"]["trainable_params"] < 10_000
    assert set(manifest["metrics"]["eval_after"]) == {"accuracy", "macro_f1"}
    assert main(["generate", str(tmp_path / "head"), "--prompt", "Acme kettle, red, $20."]) == 0
    label = capsys.readouterr().out.strip().splitlines()[-1]
    assert label in {"electronics", "clothing", "kitchen", "sports", "home", "toys", "office", "garden"}
