"""`affina rag eval`: retrieval recall@k and MRR by hand on a labelled set; answers scored by
the one evaluator with and without the sources (tiny model)."""

from __future__ import annotations

import json

import pytest

from affina.errors import DataError
from affina.rag import Retriever
from affina.rag.evaluation import evaluate_rag, is_relevant, load_labelled, retrieval_scores

QUESTIONS = [
    ("How long does the battery last?", "battery.md", "eight hours"),
    ("What does the warranty cover?", "warranty.md", None),
    ("How do I reset the device?", "reset.md", "hold the red button"),
    ("When do orders ship?", "shipping.txt", None),
    ("Can I return a product?", "more.jsonl", "full refund"),
    ("What temperature should I store it at?", "faq.html", None),
]


def write_labelled(path):
    with open(path, "w") as f:
        for q, source, evidence in QUESTIONS:
            row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "see the manual"}],
                   "source": source}
            if evidence:
                row["evidence"] = evidence
            f.write(json.dumps(row) + "\n")
    return path


def test_recall_and_mrr_follow_the_ranks(built_kb, monkeypatch, tmp_path):
    home, _, name = built_kb
    monkeypatch.setenv("AFFINA_HOME", str(home))
    labelled = load_labelled([write_labelled(tmp_path / "q.jsonl")])
    retriever = Retriever.open(name)
    scores = retrieval_scores(retriever, labelled, k=3, modes=("hybrid", "bm25"))
    for mode in ("hybrid", "bm25"):
        ranks = []
        for item in labelled:
            hits = retriever.search(item.record.messages[0]["content"], k=3, mode=mode)
            ranks.append(next((n for n, h in enumerate(hits, 1)
                               if is_relevant(h.chunk, item.source, item.evidence)), None))
        assert scores[mode]["recall@3"] == pytest.approx(sum(r is not None for r in ranks) / 6)
        assert scores[mode]["mrr"] == pytest.approx(sum(1 / r for r in ranks if r) / 6)
    assert scores["hybrid"]["recall@3"] >= 5 / 6  # the documents answer these questions


def test_relevance_needs_the_file_and_the_evidence():
    from affina.rag.store import Chunk

    chunk = Chunk(1, "/docs/battery.md", "x" * 64, None, None, 0, 40, 0, 40,
                  "The battery lasts about eight hours of use")
    assert is_relevant(chunk, "battery.md", None) and is_relevant(chunk, "docs/battery.md", "eight  HOURS")
    assert not is_relevant(chunk, "tery.md", None) and not is_relevant(chunk, "battery.md", "two years")


def test_a_question_without_its_source_is_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "completion": "there"}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl:1 field 'source'"):
        load_labelled([path])


def test_answers_with_and_without_retrieval(built_kb, monkeypatch, tmp_path, tiny_model_dir):
    home, _, name = built_kb
    monkeypatch.setenv("AFFINA_HOME", str(home))
    report = evaluate_rag(name, [write_labelled(tmp_path / "q.jsonl")], model=str(tiny_model_dir), k=2,
                          max_new_tokens=4, max_length=1024, out_dir=tmp_path / "out")
    assert set(report["answers"]) == {"no retrieval", "with retrieval"}
    for scores in report["answers"].values():
        assert "token_f1" in scores and "loss" in scores
    # The sources make the scored prompts different, so the loss on the same replies moves.
    assert report["answers"]["no retrieval"]["loss"] != report["answers"]["with retrieval"]["loss"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    with_rag = [r for r in rows if r["setting"] == "with retrieval"]
    assert len(with_rag) == 6 and with_rag[0]["sources"][0]["file"].endswith("battery.md")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["retrieval"]["hybrid"]["n"] == 6


def test_raft_rows_hold_the_oracle_among_distractors(built_kb, monkeypatch, tmp_path):
    from affina.data.loading import load_records
    from affina.rag.raft import build_raft

    home, _, name = built_kb
    monkeypatch.setenv("AFFINA_HOME", str(home))
    data = write_labelled(tmp_path / "q.jsonl")
    report = build_raft(name, [data], tmp_path / "raft.jsonl", distractors=2, p_oracle=0.5, seed=1)
    rows = [json.loads(line) for line in (tmp_path / "raft.jsonl").read_text().splitlines()]
    assert report.rows == len(rows) == 6 and report.oracle_missing == 0
    assert report.with_oracle == sum(r["raft"]["oracle"] for r in rows) and 0 < report.with_oracle < 6
    kb = Retriever.open(name).kb
    for row, (q, source, evidence) in zip(rows, QUESTIONS):
        system, user, reply = row["messages"]
        assert system["role"] == "system" and user["content"] == q and reply["content"] == "see the manual"
        chunks = kb.chunks(row["raft"]["chunks"])
        relevant = [c for c in chunks.values() if is_relevant(c, source, evidence)]
        assert len(relevant) == (1 if row["raft"]["oracle"] else 0)
        assert len(chunks) == 2 + row["raft"]["oracle"]
        for n, cid in enumerate(row["raft"]["chunks"], 1):
            assert f"[{n}] " in system["content"] and chunks[cid].text.strip() in system["content"]
    # The rows are ordinary chat data for `affina train`.
    assert len(load_records([tmp_path / "raft.jsonl"]).records) == 6
    again = build_raft(name, [data], tmp_path / "again.jsonl", distractors=2, p_oracle=0.5, seed=1)
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "raft.jsonl").read_text() and again.rows == 6
