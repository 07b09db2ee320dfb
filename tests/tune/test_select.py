"""`affina select` on tiny models (a directory and a GGUF file), and on the default model (slow)."""

import json
from pathlib import Path

import pytest

from affina.cli import main
from affina.tune.select import memory_estimates, rank_candidates
from tests.helpers import make_tiny_model, write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]


def _data(tmp_path, n=8):
    rows = [{"messages": [{"role": "user", "content": f"say the number {i}"},
                          {"role": "assistant", "content": f"number {i}"}]} for i in range(n)]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_memory_estimates_count_linear_weights_at_4_bits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    c = model.config
    d, i, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim
    linear = c.num_hidden_layers * (d * d * 2 + d * kv * 2 + d * i * 3)
    total = sum(p.numel() for p in model.parameters())  # tied head counted once by parameters()
    est = memory_estimates(model)
    assert est["parameters"] == total and est["bf16_bytes"] == 2 * total
    assert est["int4_bytes"] == int(linear * 4.5 / 8 + (total - linear) * 2)


def test_select_profiles_and_ranks_tiny_candidates(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))  # the GGUF converts into it
    wider = make_tiny_model(tmp_path / "wider", seed=1, hidden_size=96, intermediate_size=192)
    gguf = write_tiny_gguf(Path(tiny_model_dir), tmp_path / "tiny.gguf")
    out = tmp_path / "select"
    code = main(["select", str(tiny_model_dir), str(wider), str(gguf), "--data", str(_data(tmp_path)),
                 "--fewshot", "2", "--metrics", "token_f1,exact_match", "--max-new-tokens", "4",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "select.json").read_text())
    assert report["examples"] == 6 and report["fewshot"] == 2 and report["ranked_by"] == "token_f1"
    by_label = {c["label"]: c for c in report["candidates"]}
    assert set(by_label) == {Path(tiny_model_dir).name, "wider", "tiny.gguf"}
    small, wide = by_label[Path(tiny_model_dir).name], by_label["wider"]
    assert small["architecture"] == "LlamaForCausalLM" and small["context_length"] == 512
    assert wide["parameters"] > small["parameters"] and wide["bf16_bytes"] > small["bf16_bytes"]
    assert small["int4_bytes"] < small["bf16_bytes"]
    # The GGUF file holds the same weights as the directory it was written from.
    assert by_label["tiny.gguf"]["parameters"] == small["parameters"]
    assert by_label["tiny.gguf"]["zero_shot"]["loss"] == pytest.approx(small["zero_shot"]["loss"], rel=1e-4)
    for c in report["candidates"]:
        assert c["zero_shot"]["loss"] > 0 and c["few_shot"]["shots"] == 2
        assert c["tokens_per_s"] and c["tokens_per_s"] > 0
        assert c["load_rss_bytes"] >= 0
    assert [c["rank"] for c in report["candidates"]] == [1, 2, 3]
    assert report["why"].startswith(report["candidates"][0]["label"])
    assert "base-model selection" in printed


def test_ranking_prefers_the_metric_then_the_loss():
    a = {"label": "a", "zero_shot": {"metrics": {"f": 0.2}, "loss": 1.0}, "few_shot": {"metrics": {"f": 0.6}},
         "tokens_per_s": 10.0, "bf16_bytes": 100}
    b = {"label": "b", "zero_shot": {"metrics": {"f": 0.5}, "loss": 0.5}, "tokens_per_s": 20.0,
         "bf16_bytes": 200}
    ranked, why = rank_candidates([b, a], "f")
    assert [p["label"] for p in ranked] == ["a", "b"]
    assert ranked[0]["best_setting"] == "few_shot"
    assert why.startswith("a wins on f: 0.600 (few_shot) against 0.500 for b (zero_shot)")
    assert "0.50x its generation speed" in why
    c = {"label": "c", "zero_shot": {"metrics": {"f": 0.6}, "loss": 0.4}, "tokens_per_s": 5.0, "bf16_bytes": 50}
    ranked, why = rank_candidates([a, c], "f")
    assert ranked[0]["label"] == "c" and "wins on validation loss" in why


def test_probe_finetune_scores_the_tuned_candidate(tmp_path, tiny_model_dir):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"say the number {i}"},
        {"role": "assistant", "content": f"number {i}"}]}) + "\n" for i in range(50, 66)))
    out = tmp_path / "select"
    code = main(["select", str(tiny_model_dir), "--data", str(_data(tmp_path, 3)), "--fewshot", "0",
                 "--metrics", "token_f1", "--max-new-tokens", "4", "--probe-steps", "2",
                 "--train", str(train_file), "--out", str(out)])
    assert code == 0
    (candidate,) = json.loads((out / "select.json").read_text())["candidates"]
    probe = candidate["probe"]
    assert probe["steps"] == 2 and Path(probe["run_dir"], "affina.json").is_file()
    assert "token_f1" in probe["metrics"] and probe["validation_loss"] > 0
    # The probe run was scored on the evaluation data, and training moved its loss.
    assert probe["loss"] != pytest.approx(candidate["zero_shot"]["loss"])


def test_probe_needs_separate_training_data(tmp_path, tiny_model_dir, capsys):
    assert main(["select", str(tiny_model_dir), "--data", str(_data(tmp_path)), "--probe-steps", "2"]) == 2
    assert "--train" in capsys.readouterr().err


@pytest.mark.slow
def test_select_default_model_on_sample_data(tmp_path, tiny_model_dir):
    sample = ROOT / "examples" / "product_json"
    code = main(["select", "default", str(tiny_model_dir), "--data", str(sample / "test.jsonl"),
                 "--limit", "2", "--fewshot", "1", "--max-new-tokens", "40", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "select.json").read_text())
    assert report["metrics"][0] == "json_valid"  # chosen from the data: JSON replies
    default = next(c for c in report["candidates"] if c["spec"] == "default")
    assert default["parameters"] == 134_515_008 and default["context_length"] == 8192
    assert default["rank"] == 1  # the real instruct model beats random weights
    assert default["zero_shot"]["loss"] < default["zero_shot"]["perplexity"]
    assert default["int4_bytes"] < default["bf16_bytes"] / 2
