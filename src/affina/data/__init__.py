"""Data: files → rows → Records → chat template + tokens with loss masks → packed batches."""

from .checks import dedupe, find_duplicates
from .formats import FORMATS, detect_format, get_format, to_record
from .loading import LoadResult, dataset_fingerprint, load_records, split_records
from .packing import BatchCollator, PackedRow, pack_examples
from .records import Record
from .sources import SUPPORTED, read_rows
from .tokenize import IGNORE_INDEX, Example, prompt_and_reference, render_chat, tokenize_records

__all__ = [
    "FORMATS", "SUPPORTED", "IGNORE_INDEX", "BatchCollator", "Example", "LoadResult", "PackedRow",
    "Record", "dataset_fingerprint", "dedupe", "detect_format", "find_duplicates", "get_format",
    "load_records", "pack_examples", "prompt_and_reference", "read_rows", "render_chat",
    "split_records", "to_record", "tokenize_records",
]
