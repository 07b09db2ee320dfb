import pytest

from affina.evaluate.metrics import (exact_match, json_fields, json_valid, parse_json_object,
                                     score_predictions, token_f1)

REF = '{"brand": "Acme", "product": "kettle", "category": "kitchen", "color": "silver", "price": 39.5}'


def test_exact_match_normalises_space_and_case():
    assert exact_match("  Hello   World ", "hello world") == 1.0
    assert exact_match("hello", "hello world") == 0.0


def test_token_f1_known_value():
    # 2 common tokens; precision 2/3, recall 2/4 → F1 = 4/7
    assert token_f1("the cat sat", "the cat is here") == pytest.approx(4 / 7)
    assert token_f1("", "") == 1.0 and token_f1("a", "b") == 0.0


def test_json_fields_partial_credit_and_numeric_compare():
    pred = '{"brand": "acme", "product": "kettle", "category": "home", "color": "silver", "price": 39.50}'
    assert json_fields(pred, REF) == pytest.approx(4 / 5)
    assert json_fields(REF, REF) == 1.0
    assert json_fields("not json at all", REF) == 0.0
    assert json_fields('Sure! {"brand": "Acme"} hope this helps', REF) == pytest.approx(1 / 5)


def test_json_valid_and_parse():
    assert json_valid(REF, REF) == 1.0 and json_valid("{broken", REF) == 0.0
    assert parse_json_object("[1, 2]") is None


def test_score_predictions_means_and_unknown_metric():
    scores = score_predictions(["a", "b"], ["a", "c"], ["exact_match"])
    assert scores == {"exact_match": 0.5}
    from affina.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown metric"):
        score_predictions(["a"], ["a"], ["bleu9000"])
