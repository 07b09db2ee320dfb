"""The "auto" hyperparameter policy on the sample data sets in examples/ (token lengths from the
tiny tokenizer, which has the default model's chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest

from affina.data.loading import load_records
from affina.jobs.auto import (ADAPTER_LR, FULL_WEIGHTS_LR, MAX_TOTAL_STEPS, PREFERENCE_FACTOR, TOKENS_PER_BATCH,
                              DataShape,
                              data_shape, resolve_hyperparameters)
from affina.methods import get_method
from tests.helpers import TINY_TOKENIZER_DIR

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AUTO = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def _shape(name: str, tokenizer, rows: int | None = None) -> DataShape:
    records = load_records([EXAMPLES / name / "train.jsonl"]).records[:rows]
    return data_shape(records, tokenizer, 512, val_fraction=0.1)


@pytest.mark.parametrize("task", ["product_json", "product_category"])
def test_sample_tasks_get_a_sane_budget(task, tokenizer):
    shape = _shape(task, tokenizer)
    assert shape.rows == 360 and 10 < shape.p90_tokens < 512
    hp = resolve_hyperparameters(AUTO, shape, get_method("lora"))
    # 360 rows: the default 3 epochs, a batch that fits the token budget, a few dozen steps.
    assert hp["n_epochs"] == 3
    assert hp["batch_size"] in (4, 8, 16) and hp["batch_size"] * shape.p90_tokens <= TOKENS_PER_BATCH
    assert hp["total_steps"] == -(-360 // hp["batch_size"]) * 3
    assert hp["learning_rate"] == pytest.approx(ADAPTER_LR * hp["learning_rate_multiplier"])


def test_small_sets_get_more_epochs_and_small_batches(tokenizer):
    small = _shape("product_json", tokenizer, rows=40)
    hp = resolve_hyperparameters(AUTO, small, get_method("lora"))
    assert hp["n_epochs"] > 3 and hp["batch_size"] <= small.rows // 4
    large = DataShape(rows=200_000, p90_tokens=100, mean_tokens=80)
    big = resolve_hyperparameters(AUTO, large, get_method("lora"))
    assert big["n_epochs"] == 1  # capped by the examples seen and the total-step budget
    long = DataShape(rows=5000, p90_tokens=100, mean_tokens=80)
    capped = resolve_hyperparameters(AUTO, long, get_method("lora"))
    assert capped["total_steps"] <= MAX_TOTAL_STEPS + -(-5000 // capped["batch_size"])


def test_method_sets_the_base_learning_rate(tokenizer):
    shape = _shape("product_json", tokenizer)
    lora = resolve_hyperparameters(AUTO, shape, get_method("lora"))
    full = resolve_hyperparameters(AUTO, shape, get_method("full"))
    assert lora["base_learning_rate"] == ADAPTER_LR and full["base_learning_rate"] == FULL_WEIGHTS_LR
    assert full["learning_rate"] < lora["learning_rate"]
    preference = _shape("preference", tokenizer)
    assert preference.preference
    dpo = resolve_hyperparameters(AUTO, preference, get_method("dpo"))
    assert dpo["base_learning_rate"] == pytest.approx(ADAPTER_LR * PREFERENCE_FACTOR)


def test_given_numbers_are_kept(tokenizer):
    shape = _shape("product_json", tokenizer)
    hp = resolve_hyperparameters({"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 0.5},
                                 shape, get_method("lora"))
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (1, 2, 0.5)
    assert hp["learning_rate"] == pytest.approx(ADAPTER_LR * 0.5)


def test_data_parallel_processes_take_fewer_steps(tokenizer):
    shape = _shape("product_json", tokenizer)
    given = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1}
    one = resolve_hyperparameters(given, shape, get_method("lora"))
    two = resolve_hyperparameters(given, shape, get_method("lora"), processes=2)
    assert one["total_steps"] == -(-shape.rows // 4) and two["total_steps"] == -(-shape.rows // 8)
    assert two["batch_size"] == 4  # a batch per process, as train.batch_size
