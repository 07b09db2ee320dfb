"""DPO, ORPO and KTO through the one recipe on the tiny model: TRL's trainers, the base with the
adapter disabled as the reference, a plain PEFT artifact, and the preference evaluation."""

from __future__ import annotations

import json
import math

import pytest

from affina.config import load_config
from affina.data.loading import load_records
from affina.errors import DataError
from affina.methods import Sharing, get_method
from affina.train import train

PAIRS = [{"prompt": f"what is {i} plus one?", "chosen": f"{i + 1}.",
          "rejected": f"well, adding one to {i} is a long story, but it gives {i + 1} in the end"}
         for i in range(16)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """One 2-step run per method, with the trainer the recipe built (kept by a callback)."""
    from transformers import TrainerCallback

    root = tmp_path_factory.mktemp("preference")
    pairs = _write(root / "pairs.jsonl", PAIRS)
    out = {}
    for name in ("dpo", "orpo", "kto"):
        seen = {}

        class Keep(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                seen["model"] = model

        result = train(load_config(None, [
            f"model.spec={tiny_model_dir}", f"data.train={pairs}", "data.val_fraction=0.25",
            f"train.output_dir={root / 'runs'}", f"train.run_name={name}", "train.max_steps=2",
            "train.batch_size=4", "train.eval_steps=0", "train.save_steps=100", "track.mlflow=false",
            f"method.name={name}", "method.r=2", f"eval.data={pairs}"]), callbacks=(Keep(),), display="quiet")
        out[name] = (result, seen["model"])
    return out


@pytest.mark.parametrize("name", ["dpo", "orpo", "kto"])
def test_trains_two_steps_and_saves_a_plain_peft_lora_adapter(name, runs, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, model = runs[name]
    record = result.record
    assert record.method.name == name and record.train.global_step == 2
    assert record.method.options["beta"] == 0.1
    # No second copy of the model and no extra "ref" adapter: one adapter on the one base.
    assert list(model.peft_config) == ["default"]
    adapter = result.run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not (adapter / "ref").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert any("lora_A" in n for n, _ in loaded.named_parameters())
    method = get_method(name)
    assert method.sharing(None) is Sharing.PEFT_ADAPTER and method.task.compares_base


def test_reference_is_the_base_with_the_adapter_disabled(runs):
    """At the first step the fresh adapter is zero, so a reference equal to the base gives the
    closed-form initial losses: DPO −log σ(0) = ln 2 (Rafailov et al. eq. 7); KTO, with the
    rewards and KL estimate all zero, 1 − σ(0) = 0.5 (Ethayarajh et al. eq. 8)."""
    first = {n: next(h["loss"] for h in json.loads((r.run_dir / "history.json").read_text())
                     if "loss" in h) for n, (r, _) in runs.items()}
    assert first["dpo"] == pytest.approx(math.log(2), abs=1e-3)
    assert first["kto"] == pytest.approx(0.5, abs=1e-3)
    assert runs["dpo"][0].record.method.report["reference"] == "the base with the adapter disabled"


def test_preference_evaluation_before_and_after(runs):
    metrics = runs["dpo"][0].record.metrics
    for scores in (metrics.eval_before, metrics.eval_after):
        assert 0 <= scores["pref_win_rate"] <= 1 and 0 <= scores["pref_win_rate_per_token"] <= 1
    # The base has no reference to be rewarded against; the adapter's reference is the base.
    assert set(metrics.eval_before) == {"pref_win_rate", "pref_win_rate_per_token", "pref_margin"}
    assert set(metrics.eval_after) == {"pref_win_rate", "pref_win_rate_per_token", "pref_margin",
                                       "pref_reward_accuracy", "pref_reward_margin"}
    # Implicit reward margin = β·(margin under the adapter − margin under the reference): the
    # reference scored with the adapter disabled equals the base scored before training.
    before, after = metrics.eval_before, metrics.eval_after
    assert after["pref_reward_margin"] == pytest.approx(0.1 * (after["pref_margin"] - before["pref_margin"]),
                                                        rel=1e-3, abs=1e-5)
    assert 0 <= after["pref_reward_accuracy"] <= 1
    scored = json.loads((runs["dpo"][0].run_dir / "eval" / "after.json").read_text())
    assert scored["examples"] == len(PAIRS) and "reward_margin" in scored["predictions"][0]["scores"]


def test_formats_are_detected(tmp_path):
    pairs = load_records([_write(tmp_path / "p.jsonl", [
        PAIRS[0], {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                   "rejected": "b"}])])
    assert pairs.files[0]["format"] == "preference"
    assert [r.kind for r in pairs.records] == ["preference", "preference"]
    assert pairs.records[1].prompt == [{"role": "user", "content": "q"}] and pairs.records[1].chosen == "a"
    kto = load_records([_write(tmp_path / "k.jsonl", [{"prompt": "q", "completion": "a", "label": True},
                                                     {"prompt": "q", "completion": "b", "label": False}])])
    assert kto.files[0]["format"] == "kto"
    assert [(r.chosen, r.rejected, r.paired) for r in kto.records] == [("a", None, False), (None, "b", False)]


@pytest.mark.parametrize("rows, where, field", [
    ([PAIRS[0], {"prompt": "q", "chosen": "a"}], ":2", "rejected"),
    ([{"prompt": "q", "rejected": "b"}], ":1", "chosen"),
    ([{"prompt": "q", "completion": "a", "label": True}, {"prompt": "q", "completion": "a", "label": "false"}],
     ":2", "label"),
])
def test_field_errors_name_file_line_and_field(tmp_path, rows, where, field):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_records([path])
    assert f"{path}{where}" in str(e.value) and field in str(e.value)


def test_dpo_refuses_unpaired_rows_and_sft_refuses_preference_data(tmp_path, tiny_model_dir):
    kto_rows = _write(tmp_path / "k.jsonl", [{"prompt": f"q{i}", "completion": "a", "label": bool(i % 2)}
                                             for i in range(8)])
    pairs = _write(tmp_path / "p.jsonl", PAIRS)
    for method, data, message in (("dpo", kto_rows, "needs pairs"), ("lora", pairs, "preference method")):
        with pytest.raises(DataError, match=message):
            train(load_config(None, [f"model.spec={tiny_model_dir}", f"data.train={data}",
                                     f"train.output_dir={tmp_path / 'runs'}", "track.mlflow=false",
                                     f"method.name={method}"]), display="quiet")


def test_data_inspect_shows_the_format_and_both_replies(tmp_path, tiny_model_dir, capsys):
    from affina.data.inspect import inspect_data

    out = inspect_data([str(_write(tmp_path / "p.jsonl", PAIRS))], model_spec=str(tiny_model_dir))
    text = capsys.readouterr().out
    assert out["rows"] == len(PAIRS) and out["files"][0]["format"] == "preference"
    assert "preference" in text and f"chosen reply: {PAIRS[0]['chosen']}" in text
    assert f"rejected reply: {PAIRS[0]['rejected']}" in text
