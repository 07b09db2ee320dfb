"""The retraining policy's decision and config, and redaction (no model needed)."""

from __future__ import annotations

import pytest

from affina.errors import ConfigError
from affina.monitor.loop import LoopPolicy, decide, load_policy, training_job
from affina.monitor.redact import redact_text


def _h(time, drifted):
    return {"time": time, "drifted": drifted, "report": f"/r/{time}.json", "figures": {}, "window": {}}


def test_retraining_is_due_only_after_n_drifted_windows_in_a_row_and_enough_feedback():
    policy = LoopPolicy(drift_windows=3, min_feedback=10)
    history = [_h("t1", True), _h("t2", False), _h("t3", True), _h("t4", True)]
    d = decide(history, 50, policy)
    assert not d.due and d.reason.startswith("2 drifted window(s) in a row")
    history.append(_h("t5", True))
    assert decide(history, 50, policy).due
    short = decide(history, 9, policy)
    assert not short.due and "only 9 usable feedback rows (10 needed)" in short.reason
    # A not-judged window (None) breaks the streak like a calm one.
    assert not decide(history + [_h("t6", None)], 50, policy).due
    # Windows before the last retraining do not count again.
    assert not decide(history, 50, policy, since="t4").due
    assert [h["time"] for h in decide(history, 50, policy).windows] == ["t3", "t4", "t5"]


def test_policy_files_are_checked(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("drift_windows: 2\nmin_feedback: 5\ntrain: [train.max_steps=10]\n")
    policy = load_policy(path, ["replay_fraction=0.5"])
    assert (policy.drift_windows, policy.min_feedback, policy.replay_fraction) == (2, 5, 0.5)
    with pytest.raises(ConfigError, match="unknown policy key 'drift_window'"):
        load_policy(None, ["drift_window=2"])
    with pytest.raises(ConfigError, match="replay_fraction"):
        load_policy(None, ["replay_fraction=1.5"])
    with pytest.raises(ConfigError, match="train"):
        load_policy(None, ["train=[max_steps]"])


def test_training_job_holds_out_a_seeded_evaluation_split(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             "lineage": {"request_id": f"r{i}"}} for i in range(10)]
    policy = LoopPolicy(eval_fraction=0.2, output_dir=str(tmp_path / "runs"), train=["train.max_steps=3"])
    job = training_job("shop", "shop@4", policy, rows, tmp_path / "loop" / "20261127-120000")
    assert job.continue_from == "shop@champion" and job.version == "shop@4"
    assert job.run_dir == tmp_path / "runs" / "shop-retrain-20261127-120000"
    train = (tmp_path / "loop" / "20261127-120000" / "feedback-train.jsonl").read_text().splitlines()
    held = (tmp_path / "loop" / "20261127-120000" / "feedback-eval.jsonl").read_text().splitlines()
    assert len(train) == 8 and len(held) == 2 and not set(train) & set(held)
    assert job.argv()[:4] == ["train", "--continue-from", "shop@4", "-q"]  # the version, pinned
    assert job.train_file.read_text().splitlines() == train and job.eval_file.read_text().splitlines() == held
    assert "train.max_steps=3" in job.overrides and "replay.fraction=0.25" in job.overrides
    again = training_job("shop", "shop@4", policy, rows, tmp_path / "loop" / "again")
    assert (tmp_path / "loop" / "again" / "feedback-eval.jsonl").read_text().splitlines() == held


@pytest.mark.parametrize("text, expected", [
    ("write to jo.doe+x@example.co.uk today", "write to [EMAIL] today"),
    ("call +44 20 7946 0958 or 555-123-4567", "call [PHONE] or [PHONE]"),
    ("card 4111 1111 1111 1111 please", "card [CARD] please"),
    ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN]"),
    ("from 192.168.1.20", "from [IP]"),
    ("order 12345, version 1.2.3, price $78.99, 2026-11-27", "order 12345, version 1.2.3, price $78.99, 2026-11-27"),
])
def test_redaction_replaces_personal_data_and_leaves_ordinary_numbers(text, expected):
    assert redact_text(text)[0] == expected
