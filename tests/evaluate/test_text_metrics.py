"""ROUGE-L, BLEU, chrF, accuracy, macro-F1 and user metrics against values worked out by hand."""

import sys
import textwrap

import pytest

from affina.errors import ConfigError
from affina.evaluate.metrics import (accuracy, bleu, check_metric_names, chrf, macro_f1, rouge_l,
                                     score_examples, score_predictions)


def test_rouge_l_is_the_lcs_f_measure():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is 5 words of 6 and 6: F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # 2 of 3 predicted words in order, reference 4 words: P 2/3, R 2/4 → F = 4/7.
    assert rouge_l("a b x", "a c b d") == pytest.approx(4 / 7)
    assert rouge_l("", "a b") == 0.0


def test_bleu_by_hand():
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty):
    # BLEU = (5/6 · 3/5 · 2/4 · 1/3) ** (1/4) = (1/12) ** 0.25.
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        (1 / 12) ** 0.25, abs=1e-6)
    assert bleu(["identical words here today"], ["identical words here today"]) == pytest.approx(1.0)
    assert bleu(["nothing shared"], ["completely different text"]) == 0.0


def test_chrf_by_hand():
    # Character n-gram precision = recall for n = 1..5: 4/5, 2/4, 1/3, 0/2, 0/1 (no 6-grams in
    # 5 letters); chrF = their mean = 0.32666...
    assert chrf(["hello"], ["hallo"]) == pytest.approx((4 / 5 + 2 / 4 + 1 / 3) / 5, abs=1e-6)
    assert chrf(["same text"], ["same text"]) == pytest.approx(1.0)


def test_accuracy_and_macro_f1():
    preds, refs = ["pos", "Pos ", "neg", "neg", "neutral"], ["pos", "neg", "neg", "neg", "pos"]
    assert score_predictions(preds, refs, ["accuracy"])["accuracy"] == pytest.approx(3 / 5)
    assert accuracy(" POS", "pos") == 1.0
    # pos: tp 1, fp 1, fn 1 → F1 1/2; neg: tp 2, fp 0, fn 1 → 4/5; macro = 0.65.
    assert macro_f1(preds, refs) == pytest.approx((1 / 2 + 4 / 5) / 2)
    assert macro_f1(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 3)


def test_corpus_metrics_are_not_averaged_per_example():
    preds, refs = ["the cat sat on the mat", "x"], ["the cat sat on a mat", "y"]
    assert score_predictions(preds, refs, ["bleu"])["bleu"] == pytest.approx(bleu(preds, refs))
    assert set(score_examples(preds, refs, ["bleu", "rouge_l"])) == {"rouge_l"}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(textwrap.dedent('''
        def starts_same(prediction, reference):
            return float(prediction[:1] == reference[:1])

        def share_long(predictions, references):
            return sum(len(p) > 3 for p in predictions) / len(predictions)
        share_long.corpus_level = True
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_metrics"
    sys.modules.pop("my_metrics", None)


def test_user_metric_by_dotted_path(user_module):
    preds, refs = ["apple", "kiwi", "fig"], ["avocado", "banana", "fig"]
    scores = score_predictions(preds, refs, ["my_metrics:starts_same", "my_metrics.share_long"])
    assert scores["my_metrics:starts_same"] == pytest.approx(2 / 3)
    assert scores["my_metrics.share_long"] == pytest.approx(2 / 3)


def test_bad_metric_names_are_config_errors(user_module):
    with pytest.raises(ConfigError, match="cannot import module 'no_such_mod'"):
        check_metric_names(["no_such_mod:f"])
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        check_metric_names(["my_metrics:missing"])
    with pytest.raises(ConfigError, match="unknown metric 'rouge9'"):
        check_metric_names(["rouge9"])
