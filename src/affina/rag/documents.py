"""Documents for a knowledge base: text, Markdown, HTML, PDF and JSONL files → `Document`s with
their text and where it came from (file, JSONL line, the file's sha256).

For text and Markdown the document text is the decoded file, so a chunk's character offset is
also a position in the file and its byte offset is exact. HTML and PDF are converted to text
first (stdlib `html.parser`; `pypdf`), so their offsets are positions in the extracted text and
carry no byte offset. A JSONL file holds one document per line: `{"text": ...}` with optional
`"id"` and `"title"`; offsets are positions in that line's text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..errors import DataError

__all__ = ["Document", "SUFFIXES", "read_documents", "expand_paths", "file_sha256"]

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
            ".rst": "text", ".html": "html", ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class Document:
    path: str            # absolute path of the file
    sha256: str          # of the whole file
    kind: str            # text, markdown, html, pdf, jsonl
    text: str
    line: int | None = None    # JSONL line (1-based)
    title: str | None = None
    exact_bytes: bool = False  # whether char offsets map to byte offsets in the file


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files named directly, plus every supported file under a named directory (sorted)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise DataError(f"unsupported document type {p.suffix or '(none)'!r}; use one of "
                                + ", ".join(sorted(SUFFIXES)), source=str(p))
            files.append(p)
        else:
            raise DataError("no such file or directory", source=str(p))
    seen, unique = set(), []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f.resolve())
    return unique


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: script/style dropped, block elements end a line."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
              "article", "pre", "blockquote", "table", "ul", "ol", "title", "header", "footer"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip, self.title = [], 0, None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript"):
            self.skip += 1
        if tag == "title":
            self._in_title = True
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript") and self.skip:
            self.skip -= 1
        if tag == "title":
            self._in_title = False
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.skip:
            return
        if self._in_title:
            self.title = (self.title or "") + data.strip()
        self.parts.append(data)

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).splitlines()]
        out, blank = [], False
        for line in lines:
            if line:
                out.append(line)
                blank = False
            elif not blank and out:
                out.append("")
                blank = True
        return "\n".join(out).strip()


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start}); convert it to UTF-8", source=str(path)) from None


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DataError("reading PDF needs the package pypdf: pip install pypdf", source=str(path)) from None
    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as e:
        raise DataError(f"cannot read this PDF ({e})", source=str(path)) from None
    return "\n\n".join(p for p in pages if p)


def read_documents(path: Path) -> list[Document]:
    """The documents in one file (one, or one per JSONL line)."""
    path = Path(path).resolve()
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unsupported document type {path.suffix!r}", source=str(path))
    digest = file_sha256(path)
    if kind == "pdf":
        return [Document(str(path), digest, kind, _pdf_text(path), title=path.stem)]
    text = _decode(path, path.read_bytes())
    if kind == "html":
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        return [Document(str(path), digest, kind, parser.text(), title=parser.title or path.stem)]
    if kind in ("text", "markdown"):
        return [Document(str(path), digest, kind, text, title=path.stem, exact_bytes=True)]
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", source=str(path), line=n) from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError('each line needs a string "text" (optional "id", "title")',
                            source=str(path), line=n, field="text")
        title = row.get("title") or row.get("id")
        docs.append(Document(str(path), digest, kind, row["text"], line=n,
                             title=str(title) if title is not None else f"{path.stem}:{n}"))
    return docs
