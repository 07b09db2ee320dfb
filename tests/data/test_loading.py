"""Loading files end to end: formats per file, kinds, duplicates, fingerprint, split."""

from __future__ import annotations

import hashlib
import json

import pytest

from affina.data.loading import dataset_fingerprint, load_records, split_records
from affina.data.records import Record
from affina.errors import ConfigError, DataError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ALPACA = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(3)]
CHAT = [{"messages": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]}]


def test_load_one_file_records_format_rows_and_sha(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ALPACA)
    result = load_records([path])
    assert len(result.records) == 3 and result.records[0].format == "alpaca"
    assert result.files == [{"path": str(path), "format": "alpaca", "rows": 3,
                             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    json.dumps(result.files)  # goes into the run record as is
    assert result.n_duplicates == 0 and result.warnings == []


def test_files_of_different_formats_but_one_kind_mix(tmp_path):
    pd = pytest.importorskip("pandas")
    a = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"data": CHAT}))
    c = tmp_path / "c.parquet"
    pd.DataFrame([{"prompt": "p", "completion": "c"}]).to_parquet(c)
    result = load_records([a, str(b), c])
    assert [f["format"] for f in result.files] == ["alpaca", "chat", "prompt_completion"]
    assert len(result.records) == 5
    assert {r.kind for r in result.records} == {"chat"}


def test_csv_and_hf_dir_text_label(tmp_path):
    datasets = pytest.importorskip("datasets")
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("text,label\ngood film,pos\nbad film,neg\n")
    datasets.Dataset.from_list([{"text": "ok film", "label": 1}]).save_to_disk(
        str(tmp_path / "hf"))
    result = load_records([csv_path, tmp_path / "hf"])
    assert [r.label for r in result.records] == ["pos", "neg", "1"]
    assert [(r.source, r.line) for r in result.records] == [
        (str(csv_path), 2), (str(csv_path), 3), (str(tmp_path / "hf"), 1)]
    assert len(result.files[1]["sha256"]) == 64


def test_mixed_kinds_across_files_is_refused(tmp_path):
    a = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    b = write_jsonl(tmp_path / "raw.jsonl", [{"text": "domain text"}])
    with pytest.raises(DataError) as e:
        load_records([a, b])
    message = str(e.value)
    assert "chat.jsonl" in message and "raw.jsonl" in message and "one kind" in message


def test_forced_format(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": "a"},
                                              {"text": "y", "label": "b"}])
    assert load_records([path]).records[0].kind == "label"
    forced = load_records([path], format="text")
    assert forced.records[0].kind == "text" and forced.files[0]["format"] == "text"


def test_forced_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match="unknown data format 'txt'; choose one of: alpaca"):
        load_records([path], format="txt")


def test_mixed_formats_in_one_file_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", ALPACA + CHAT)
    with pytest.raises(DataError, match=r"mixed\.jsonl:4: format changes from 'alpaca'"):
        load_records([path])


def test_bad_row_error_names_file_line_and_field(tmp_path):
    rows = [*CHAT, {"messages": [{"role": "user", "content": "a"},
                                 {"role": "assistant", "content": ["b"]}]}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_records([path])
    assert str(e.value).startswith(f"{path}:2 field 'messages[1].content': must be a string")


def test_no_paths():
    with pytest.raises(DataError, match="no data files"):
        load_records([])


def test_duplicates_warned_or_dropped(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    b = write_jsonl(tmp_path / "b.jsonl", ALPACA[:2])
    warned = load_records([a, b])
    assert len(warned.records) == 5 and warned.n_duplicates == 2
    [warning] = warned.warnings
    assert warning.startswith("2 duplicate examples")
    assert f"{b}:1 repeats {a}:1" in warning and "data.dedupe=true" in warning

    dropped = load_records([a, b], dedupe=True)
    assert len(dropped.records) == 3 and dropped.n_duplicates == 2
    assert dropped.warnings == ["2 duplicate examples dropped (data.dedupe=true)"]
    assert [f["rows"] for f in dropped.files] == [3, 2]


def test_single_label_warning(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": "x"},
                                              {"text": "b", "label": "x"}])
    assert any("same label 'x'" in w for w in load_records([path]).warnings)


def test_fingerprint_ignores_file_names_and_types(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    b = tmp_path / "renamed" / "other.json"
    b.parent.mkdir()
    b.write_text(json.dumps(ALPACA))
    fp_a = dataset_fingerprint(load_records([a]).records)
    assert fp_a.startswith("sha256:") and len(fp_a) == len("sha256:") + 64
    assert fp_a == dataset_fingerprint(load_records([b]).records)


def test_fingerprint_changes_with_content_and_order(tmp_path):
    base = dataset_fingerprint(load_records([write_jsonl(tmp_path / "a.jsonl", ALPACA)]).records)
    changed = [*ALPACA[:2], {"instruction": "Q2", "output": "A2!"}]
    assert base != dataset_fingerprint(
        load_records([write_jsonl(tmp_path / "b.jsonl", changed)]).records)
    assert base != dataset_fingerprint(
        load_records([write_jsonl(tmp_path / "c.jsonl", ALPACA[::-1])]).records)


def texts(n, prefix="t"):
    return [Record(source="x.jsonl", line=i + 1, text=f"{prefix}{i}") for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete():
    records = texts(50)
    train, val = split_records(records, 0.2, seed=3)
    assert (len(train), len(val)) == (40, 10)
    assert split_records(records, 0.2, seed=3) == (train, val)
    assert {id(r) for r in train}.isdisjoint({id(r) for r in val})
    assert sorted(r.line for r in train + val) == list(range(1, 51))
    assert [r.line for r in val] == sorted(r.line for r in val)  # original order kept
    assert split_records(records, 0.2, seed=4)[1] != val


def test_split_small_sets_keep_one_on_each_side():
    assert [len(s) for s in split_records(texts(2), 0.01, seed=0)] == [1, 1]
    assert [len(s) for s in split_records(texts(3), 0.9, seed=0)] == [1, 2]
    assert split_records(texts(1), 0.5, seed=0) == (texts(1), [])
    assert split_records(texts(5), 0.0, seed=0) == (texts(5), [])


def test_split_never_puts_copies_on_both_sides():
    records = texts(20) + texts(20)  # every example twice
    train, val = split_records(records, 0.25, seed=1)
    assert val and train
    assert {r.key() for r in train}.isdisjoint({r.key() for r in val})


def test_split_all_identical_still_gives_both_sides():
    same = [Record(source="x.jsonl", line=i, text="same") for i in range(1, 5)]
    train, val = split_records(same, 0.25, seed=0)
    assert (len(train), len(val)) == (3, 1)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan")])
def test_split_fraction_out_of_range(fraction):
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        split_records(texts(4), fraction, seed=0)
