"""Duplicate finding and removal, and the summary stats."""

from __future__ import annotations

from affina.data.checks import data_stats, dedupe, describe_duplicate, find_duplicates
from affina.data.records import Record


def chat(source, line, answer):
    return Record(source=source, line=line, format="chat",
                  messages=[{"role": "user", "content": "q"},
                            {"role": "assistant", "content": answer}])


def test_find_duplicates_pairs_each_repeat_with_its_first_copy():
    a, b, a2, a3 = chat("x.jsonl", 1, "A"), chat("x.jsonl", 2, "B"), chat("y.json", 1, "A"), \
        chat("x.jsonl", 9, "A")
    assert find_duplicates([a, b, a2, a3]) == [(a, a2), (a, a3)]
    assert describe_duplicate((a, a2)) == "y.json[item 1] repeats x.jsonl:1"


def test_duplicates_ignore_where_a_record_came_from_and_its_format():
    one = Record(source="a.csv", line=2, text="t", label="1", format="text_label")
    two = Record(source="b.parquet", line=1, text="t", label="1", format="text_label",
                 meta={"id": 5})
    other_label = Record(source="b.parquet", line=2, text="t", label="2")
    assert find_duplicates([one, two, other_label]) == [(one, two)]


def test_dedupe_keeps_first_copies_in_order():
    records = [chat("x.jsonl", i, ans) for i, ans in enumerate("ABACBA", 1)]
    kept, removed = dedupe(records)
    assert [r.line for r in kept] == [1, 2, 4]
    assert removed == 3


def test_dedupe_without_duplicates():
    records = [chat("x.jsonl", 1, "A"), chat("x.jsonl", 2, "B")]
    assert dedupe(records) == (records, 0)
    assert find_duplicates(records) == []


def test_data_stats():
    records = [chat("x.jsonl", 1, "AB"), Record(source="c.csv", line=2, text="hey", label="1",
                                                 format="text_label")]
    stats = data_stats(records)
    assert stats.n_records == 2
    assert stats.kinds == {"chat": 1, "label": 1}
    assert stats.formats == {"chat": 1, "text_label": 1}
    assert stats.labels == {"1": 1}
    assert stats.mean_turns == 2.0
    assert stats.mean_chars == (3 + 3) / 2
    assert data_stats([]).n_records == 0
