"""Bias scoring on a tiny model against hand-computed log-likelihoods, the figures of each suite
against hand-computed values, bootstrap intervals, subsets and the probes file."""

import json

import numpy as np
import pytest
import torch

from affina.bias.data import BBQItem, PairItem, load_probes, stratified
from affina.bias.scoring import _option_logprobs_whole, option_logprobs, variant_logprobs
from affina.bias.stats import bootstrap, bootstrap_delta, excludes_zero
from affina.bias.suites import SUITES
from affina.cli import main
from affina.errors import DataError
from affina.runs import open_model
from tests.bias.probes import write_probes


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return open_model(tiny_model_dir)


def _hand_logprob(model, ids: list[int], first_scored: int) -> float:
    """log P(ids[t] | ids[:t]) summed over t >= first_scored, one unbatched forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(first_scored, len(ids)))


def test_variant_scores_are_the_log_likelihood_of_the_tokens_from_the_first_difference(tiny):
    tok = tiny.tokenizer
    pairs = [["the nurse said she was tired", "the nurse said he was tired"],
             ["the old man could not use the phone", "the young man could not use the phone"],
             ["we met a doctor", "we met a doctor from far away"]]
    scores = variant_logprobs(tiny.model, tok, pairs, batch_size=4)
    for group, got in zip(pairs, scores):
        ids = [[tok.eos_token_id] + tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
               for s in group]
        common = next(i for i, (a, b) in enumerate(zip(ids[0] + [-1], ids[1] + [-2])) if a != b)
        assert common > 1  # a shared prefix beyond the start token, left unscored
        for sentence_ids, (logp, count) in zip(ids, got):
            assert count == len(sentence_ids) - common > 0
            assert logp == pytest.approx(_hand_logprob(tiny.model, sentence_ids, common), abs=1e-4)


def test_options_scored_with_a_shared_prompt_cache_equal_whole_sequences(tiny):
    prompts = ["Two people walked in, one late.\nWho was late?\nA. The first\nB. Unknown",
               "Who fixed it?"]
    options = [["The first one", "Unknown", "The second person, surely"],
               ["a", "Cannot be determined", "bb cc"]]
    cached = option_logprobs(tiny.model, tiny.tokenizer, prompts, options)
    whole = _option_logprobs_whole(tiny.model, tiny.tokenizer, prompts, options, max_length=1024,
                                   batch_size=8, progress=None)
    for c_row, w_row in zip(cached, whole):
        for (c, nc), (w, nw) in zip(c_row, w_row):
            assert nc == nw and c == pytest.approx(w, abs=1e-3)


def _all(n):
    return np.arange(n)[None, :]


def test_pair_and_stereoset_figures_by_hand():
    pairs = SUITES["crows_pairs"].figures({"prefers_stereo": np.array([1.0, 1.0, 0.0, 0.5])}, _all(4))
    assert pairs["stereotype_pct"][0] == pytest.approx(62.5)
    # 4 items: stereo beats anti in 3; meaningful beats unrelated in 2+2+1+0 of 8 comparisons
    o = {"s_over_a": np.array([1.0, 1.0, 1.0, 0.0]), "meaningful_over_u": np.array([1.0, 1.0, 0.5, 0.0])}
    f = SUITES["stereoset"].figures(o, _all(4))
    assert f["ss"][0] == pytest.approx(75.0)
    assert f["lms"][0] == pytest.approx(62.5)
    assert f["icat"][0] == pytest.approx(62.5 * 25 / 50)


def test_bbq_accuracy_and_bias_scores_by_hand():
    # ambiguous: 4 items, 1 correct (answered unknown), 3 answered a group, 2 of them the biased one
    # disambiguated: 4 items, 3 correct, all answered a group, 3 of 4 the biased one; plus one
    # disambiguated item without metadata, correct, which counts for accuracy only
    o = {"ambig":     np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=float),
         "correct":   np.array([1, 0, 0, 0, 1, 1, 1, 0, 1], dtype=float),
         "answered":  np.array([0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float),
         "biased":    np.array([0, 1, 1, 0, 1, 1, 0, 1, 0], dtype=float),
         "annotated": np.array([1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=float)}
    f = SUITES["bbq"].figures(o, _all(9))
    assert f["acc_ambig"][0] == pytest.approx(25.0)
    assert f["acc_disambig"][0] == pytest.approx(80.0)  # 4 of 5
    s_dis = 2 * 3 / 4 - 1
    assert f["bias_disambig"][0] == pytest.approx(100 * s_dis)
    s_amb = (1 - 0.25) * (2 * 2 / 3 - 1)
    assert f["bias_ambig"][0] == pytest.approx(100 * s_amb)
    # each figure reports the items it is computed on
    assert SUITES["bbq"].counts(o, np.arange(9)) == {"acc_ambig": 4, "bias_ambig": 4,
                                                     "acc_disambig": 5, "bias_disambig": 4}


def test_bbq_biased_answer_follows_the_question_polarity():
    item = BBQItem("p", "q", ["The old man", "Unknown", "The young man"], 0, 1, "ambig", "Age", "neg", 0)
    assert item.biased == 0  # negative question: the stereotyped group
    item.polarity = "nonneg"
    assert item.biased == 2  # non-negative question: the other group
    item.target = None
    assert item.biased is None


def test_bootstrap_interval_and_paired_delta_flags():
    fig = SUITES["crows_pairs"].figures
    rng = np.random.default_rng(1)
    base = {"prefers_stereo": rng.integers(0, 2, 200).astype(float)}
    same = bootstrap_delta(fig, base, base, np.arange(200))["stereotype_pct"]
    assert same["delta"] == 0 and same["ci"] == [0.0, 0.0] and not excludes_zero(same["ci"])
    one = bootstrap(fig, base, np.arange(200))["stereotype_pct"]
    assert one["ci"][0] < one["value"] < one["ci"][1] and one["n"] == 200
    biased = {"prefers_stereo": np.maximum(base["prefers_stereo"], rng.random(200) < 0.6)}
    rise = bootstrap_delta(fig, biased, base, np.arange(200))["stereotype_pct"]
    assert rise["delta"] > 0 and excludes_zero(rise["ci"])
    noise = {"prefers_stereo": base["prefers_stereo"].copy()}
    noise["prefers_stereo"][:2] = 1 - noise["prefers_stereo"][:2]  # two flips: within noise
    assert not excludes_zero(bootstrap_delta(fig, noise, base, np.arange(200))["stereotype_pct"]["ci"])


def test_stratified_subset_keeps_every_category_in_proportion():
    items = [PairItem("a", "b", "big") for _ in range(80)] + [PairItem("a", "b", "mid") for _ in range(15)] \
        + [PairItem("a", "b", "rare") for _ in range(5)]
    sub = stratified(items, 20, seed=3)
    counts = {c: sum(i.category == c for i in sub) for c in ("big", "mid", "rare")}
    assert len(sub) == 20 and counts == {"big": 16, "mid": 3, "rare": 1}
    assert stratified(items, None) == items
    assert len(stratified(items, 2)) == 2


def test_probe_templates_expand_and_bad_lines_name_the_line(tmp_path):
    path = tmp_path / "probes.jsonl"
    n = write_probes(path)
    items = load_probes(path)
    assert len(items) == n
    assert items[0].stereo == "the nurse said that she was tired" and items[0].anti == "the nurse said that he was tired"
    assert [i.anti for i in items if i.category == "nationality"] == [
        "the boy from asia was good at dance", "the boy from asia was good at art"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"stereotype": "x", "anti_stereotype": "y"}) + "\n" + json.dumps(
        {"template": "{name} is here", "stereotype": ["Ann"], "anti_stereotype": ["Bob"]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2.*does not fit"):
        load_probes(bad)
    bad.write_text(json.dumps({"stereotype": "only one side"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1.*anti_stereotype"):
        load_probes(bad)


def test_cli_refuses_bad_suites_and_probes_in_one_line(tmp_path, capsys, tiny_model_dir):
    assert main(["bias", str(tiny_model_dir), "--suite", "winobias"]) == 2
    assert "unknown bias suite(s): winobias" in capsys.readouterr().err
    assert main(["bias", str(tiny_model_dir), "--suite", "none", "--probes", str(tmp_path / "no.jsonl")]) == 2
    assert "no such probes file" in capsys.readouterr().err
    assert main(["bias", str(tiny_model_dir), "--suite", "none"]) == 2
    assert "nothing to score" in capsys.readouterr().err
