"""Read a data file into plain rows: `(position, dict)` pairs, whatever the file type.

Positions are what a user needs to find the row again: the real file line for `.jsonl` and
`.csv`, the line a paragraph starts on for `.txt`, the 1-based item in the list for `.json`, the 1-based row for Parquet and for a
`datasets` directory. `where` and `data_error` turn a position into the matching wording
(`a.jsonl:3`, `a.json[item 3]`, `a.parquet[row 3]`) so every message about a row reads the same.

A `.txt` file is raw text for continued pretraining: each paragraph (text between blank lines)
is one `{"text": ...}` row. Paragraphs rather than one document per file, because an example
longer than `data.max_length` is truncated, not split: a whole book as one example would train
on its first page only. With `data.packing=true` short paragraphs fill rows of `max_length`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from affina.errors import DataError

__all__ = ["SUPPORTED", "read_rows", "where", "data_error"]

# Suffix -> what a position means in that file type.
_LINE_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".txt")
_ITEM_SUFFIXES = (".json",)
_ROW_SUFFIXES = (".parquet",)
SUPPORTED = (*_LINE_SUFFIXES, *_ITEM_SUFFIXES, *_ROW_SUFFIXES,
             "a directory saved with datasets' save_to_disk")

# A `.json` file holding one example, not a list of them; reading its list field would give
# turns, not examples, and a confusing format error later.
_SINGLE_EXAMPLE_KEYS = ("messages", "conversations")


def where(source: str, line: int | None) -> str:
    """How a row is named in messages: `a.jsonl:3`, `a.json[item 3]` or `a.parquet[row 3]`."""
    if line is None:
        return str(source)
    suffix = Path(str(source)).suffix.lower()
    if suffix in _LINE_SUFFIXES:
        return f"{source}:{line}"
    unit = "item" if suffix in _ITEM_SUFFIXES else "row"
    return f"{source}[{unit} {line}]"


def data_error(message: str, source: str, line: int | None = None,
               field: str | None = None) -> DataError:
    """A DataError worded by `where`; `.source` and `.line` keep the plain path and number."""
    suffix = Path(str(source)).suffix.lower()
    if line is None or suffix in _LINE_SUFFIXES:
        return DataError(message, source=str(source), line=line, field=field)
    err = DataError(message, source=where(source, line), field=field)
    err.source, err.line = str(source), line
    return err


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield `(position, row)` for each row of a supported file; DataError on anything bad.

    A missing file or unknown type fails at the call; errors inside the file surface while
    iterating, at the row where they happen, so a huge JSONL file is streamed, not loaded.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DataError("file not found", source=source)
    suffix = path.suffix.lower()
    if path.is_dir():
        if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            raise DataError("directory is not a dataset saved with datasets' save_to_disk "
                            "(no dataset_dict.json or state.json)", source=source)
        reader = _read_hf_dir
    elif suffix in (".jsonl", ".ndjson"):
        reader = _read_jsonl
    elif suffix == ".json":
        reader = _read_json
    elif suffix == ".csv":
        reader = _read_csv
    elif suffix == ".parquet":
        reader = _read_parquet
    elif suffix == ".txt":
        reader = _read_txt
    else:
        raise DataError(f"unsupported file type '{suffix or path.name}'; supported: "
                        + ", ".join(SUPPORTED), source=source)
    return _non_empty(reader(path, source), source)


def _non_empty(rows: Iterator[tuple[int, dict]], source: str) -> Iterator[tuple[int, dict]]:
    n = 0
    for n, (line, row) in enumerate(rows, 1):
        yield line, row
    if n == 0:
        raise DataError("no rows in file; it is empty", source=source)


def _text_lines(path: Path, source: str) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, text)` with line endings kept, decoding each line as UTF-8.

    Decoding line by line is what lets an encoding error name its line.
    """
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a BOM from Windows editors is not part of the data
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"bytes that are not UTF-8 at column {e.start + 1}; "
                                "save the file as UTF-8", source=source, line=number) from None


def _parse_json(text: str, source: str, line: int | None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # A whole-file .json error is placed by json's own line; a JSONL one by the file line.
        at = f"column {e.colno}" if line is not None else f"line {e.lineno} column {e.colno}"
        raise DataError(f"invalid JSON: {e.msg} ({at})", source=source, line=line) from None


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _read_jsonl(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    for number, text in _text_lines(path, source):
        if not text.strip():
            continue
        row = _parse_json(text, source, number)
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object on each line, got {_type_name(row)}",
                            source=source, line=number)
        yield number, row


def _read_json(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError("bytes that are not UTF-8; save the file as UTF-8",
                        source=source, line=line) from None
    if not text.strip():
        return
    items = _json_items(_parse_json(text, source, None), source)
    for index, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise data_error(f"expected a JSON object, got {_type_name(item)}", source, index)
        yield index, item


def _json_items(top: object, source: str) -> list:
    """The list of examples: the top-level list, or the one list field of a wrapper object."""
    if isinstance(top, list):
        return top
    if isinstance(top, dict):
        lists = [k for k, v in top.items() if isinstance(v, list)]
        if len(lists) == 1 and lists[0] not in _SINGLE_EXAMPLE_KEYS:
            return top[lists[0]]
        if any(k in top for k in _SINGLE_EXAMPLE_KEYS):
            raise DataError("holds a single example; put examples in a JSON list "
                            "or one per line in a .jsonl file", source=source)
        raise DataError("expected a JSON list of examples, or an object with one list field "
                        f"such as {{\"data\": [...]}}; found list fields {lists}", source=source)
    raise DataError(f"expected a JSON list of examples, got {_type_name(top)}", source=source)


def _read_csv(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    # Long texts exceed csv's default 128 KiB field limit; examples are rarely that short.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    lines = _text_lines(path, source)
    reader = csv.reader(text for _, text in lines)
    header: list[str] | None = None
    done = 0  # the file line the previous record ended on; a record starts on the next one
    try:
        for cells in reader:
            start, done = done + 1, reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                continue
            if len(cells) != len(header):
                raise DataError(f"row has {len(cells)} fields but the header has {len(header)}",
                                source=source, line=start)
            yield start, dict(zip(header, cells))
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", source=source, line=reader.line_num) from None


def _read_txt(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    start, lines = 0, []
    for number, text in _text_lines(path, source):
        if text.strip():
            start = start or number
            lines.append(text)
        elif lines:
            yield start, {"text": "".join(lines).rstrip("\r\n")}
            start, lines = 0, []
    if lines:
        yield start, {"text": "".join(lines).rstrip("\r\n")}


def _read_parquet(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"not a readable Parquet file: {e}", source=source) from None
    index = 0
    for batch in file.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield index, row


def _read_hf_dir(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    import datasets  # slow to import; only paid when such a directory is read

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"has splits {sorted(ds)} and none is 'train'; save the split "
                            "to train on on its own, or name it 'train'", source=source)
    for index, row in enumerate(ds, 1):
        yield index, dict(row)
