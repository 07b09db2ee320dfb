"""Reading every supported file type into (position, row) pairs, and every way it can fail."""

from __future__ import annotations

import json

import pytest

from affina.data.sources import data_error, read_rows, where
from affina.errors import DataError

ROWS = [{"text": "first", "label": "a"}, {"text": "second", "label": "b"}]


def test_jsonl_keeps_real_line_numbers_and_skips_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n', encoding="utf-8")
    assert list(read_rows(path)) == [(1, {"text": "a"}), (4, {"text": "b"})]


def test_ndjson_with_bom_and_crlf(tmp_path):
    path = tmp_path / "train.ndjson"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [row["text"] for _, row in read_rows(path)] == ["a", "b"]


def test_json_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert list(read_rows(path)) == [(1, ROWS[0]), (2, ROWS[1])]


def test_json_object_with_one_list_field(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"version": 2, "data": ROWS}), encoding="utf-8")
    assert [row for _, row in read_rows(path)] == ROWS


def test_json_single_example_is_refused(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    with pytest.raises(DataError, match="single example") as e:
        list(read_rows(path))
    assert "one.json" in str(e.value)


def test_json_item_that_is_not_an_object_names_the_item(tmp_path):
    path = tmp_path / "items.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}, "oops"]))
    with pytest.raises(DataError) as e:
        list(read_rows(path))
    assert str(e.value).startswith(f"{path}[item 3]: expected a JSON object, got a string")
    assert (e.value.source, e.value.line) == (str(path), 3)


def test_invalid_whole_json_names_json_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"text": "a"},\n {"text": "b"\n]')
    with pytest.raises(DataError, match=r"bad\.json: invalid JSON: .*\(line 4 column 1\)"):
        list(read_rows(path))


def test_csv_header_and_multiline_field_line_numbers(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text , label\nhello,pos\n\n"two\nlines",neg\nlast,pos\n', encoding="utf-8")
    assert list(read_rows(path)) == [
        (2, {"text": "hello", "label": "pos"}),
        (4, {"text": "two\nlines", "label": "neg"}),
        (6, {"text": "last", "label": "pos"}),
    ]


def test_csv_row_with_wrong_field_count(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("text,label\na,1\nb\n")
    with pytest.raises(DataError, match=r"ragged\.csv:3: row has 1 fields but the header has 2"):
        list(read_rows(path))


def test_parquet_rows_are_numbered_from_one(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "train.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    assert list(read_rows(path)) == [(1, ROWS[0]), (2, ROWS[1])]


def test_parquet_nested_messages(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "chat.parquet"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pd.DataFrame([{"messages": messages}]).to_parquet(path)
    [(line, row)] = list(read_rows(path))
    assert line == 1 and row["messages"] == messages


def test_broken_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        list(read_rows(path))


def test_hf_dataset_dir(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert list(read_rows(tmp_path / "ds")) == [(1, ROWS[0]), (2, ROWS[1])]


def test_hf_dataset_dict_takes_train_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                               "test": datasets.Dataset.from_list(ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(list(read_rows(tmp_path / "dd"))) == 2


def test_hf_dataset_dict_takes_only_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"all": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(
        str(tmp_path / "dd"))
    assert list(read_rows(tmp_path / "dd")) == [(1, ROWS[0])]


def test_hf_dataset_dict_without_train_split_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"a": datasets.Dataset.from_list(ROWS),
                          "b": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: has splits \['a', 'b'\] and none is 'train'"):
        list(read_rows(tmp_path / "dd"))


def test_plain_directory_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a dataset saved with datasets' save_to_disk"):
        read_rows(tmp_path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        read_rows(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "blank.jsonl"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n\n" if name.startswith("blank") else "")
    with pytest.raises(DataError, match=rf"{name}: no rows in file"):
        list(read_rows(path))


def test_csv_with_header_only_is_empty(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        list(read_rows(path))


def test_invalid_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b",}\n')
    with pytest.raises(DataError) as e:
        list(read_rows(path))
    assert str(e.value).startswith(f"{path}:2: invalid JSON: ")
    assert "column" in str(e.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"list\.jsonl:2: expected a JSON object .*got a list"):
        list(read_rows(path))


@pytest.mark.parametrize("name", ["latin1.jsonl", "latin1.csv", "latin1.json"])
def test_undecodable_bytes_name_the_line(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        body = "text\nok\n".encode() + "café\n".encode("latin-1")
    elif name.endswith(".jsonl"):
        body = '{"text": "ok"}\n'.encode() + '{"text": "café"}\n'.encode("latin-1")
    else:
        body = '[{"text": "ok"},\n'.encode() + '{"text": "café"}]'.encode("latin-1")
    path.write_bytes(body)
    with pytest.raises(DataError) as e:
        list(read_rows(path))
    message = str(e.value)
    assert message.startswith(f"{path}:" + ("3" if name.endswith(".csv") else "2"))
    assert "UTF-8" in message


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("hello")
    with pytest.raises(DataError) as e:
        read_rows(path)
    message = str(e.value)
    assert "notes.md" in message and "'.md'" in message
    for suffix in (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt", "save_to_disk"):
        assert suffix in message


def test_where_wording_per_file_type():
    assert where("a.jsonl", 3) == "a.jsonl:3"
    assert where("a.csv", 3) == "a.csv:3"
    assert where("a.json", 3) == "a.json[item 3]"
    assert where("a.parquet", 3) == "a.parquet[row 3]"
    assert where("some/dir", 3) == "some/dir[row 3]"
    assert str(data_error("bad", "a.json", 2, "text")) == "a.json[item 2] field 'text': bad"
