"""A knowledge base on disk, `$AFFINA_HOME/rag/NAME/`:

    chunks.db     SQLite: meta (settings, embedding model), files (path, sha256), chunks (text and
                  lineage), fts (an FTS5 index of the chunk texts, for BM25)
    vectors.f16   the chunk embeddings, (N, D) float16, row r = the r-th chunk by id (vectors.py)

Chunk ids only grow, and the matrix keeps chunks in id order, so row r of the matrix is the
r-th smallest chunk id: an update deletes rows and appends new ones without renumbering.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..paths import affina_home
from .vectors import VectorMatrix

__all__ = ["KnowledgeBase", "Chunk", "kb_dir", "list_indexes", "NAME_PATTERN"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SCHEMA = """
create table if not exists meta (key text primary key, value text not null);
create table if not exists files (path text primary key, sha256 text not null, kind text not null,
                                  chunks integer not null, indexed_at text not null);
create table if not exists chunks (id integer primary key autoincrement, path text not null,
    sha256 text not null, line integer, title text, start integer not null, end integer not null,
    byte_start integer, byte_end integer, text text not null);
create index if not exists chunks_path on chunks(path);
create virtual table if not exists fts using fts5(text, tokenize='unicode61');
"""


@dataclass(frozen=True)
class Chunk:
    id: int
    path: str
    sha256: str
    line: int | None
    title: str | None
    start: int
    end: int
    byte_start: int | None
    byte_end: int | None
    text: str


def kb_dir(name: str) -> Path:
    if not NAME_PATTERN.match(name or ""):
        raise ConfigError(f"index name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return affina_home() / "rag" / name


def list_indexes() -> list[str]:
    root = affina_home() / "rag"
    return sorted(p.name for p in root.iterdir() if (p / "chunks.db").exists()) if root.is_dir() else []


class KnowledgeBase:
    """One index directory: its SQLite database and its vector matrix."""

    def __init__(self, directory: Path, db: sqlite3.Connection, meta: dict):
        self.dir, self.db, self.meta = Path(directory), db, meta
        self.vectors = VectorMatrix(self.dir / "vectors.f16", int(meta["dim"]))

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, meta: dict) -> "KnowledgeBase":
        directory = kb_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        db = cls._connect(directory)
        with db:
            db.executemany("insert or replace into meta(key, value) values (?, ?)",
                           [(k, json.dumps(v)) for k, v in meta.items()])
        return cls(directory, db, meta)

    @classmethod
    def open(cls, name: str) -> "KnowledgeBase":
        directory = kb_dir(name)
        if not (directory / "chunks.db").exists():
            known = list_indexes()
            raise ConfigError(f"no index named {name!r} under {directory.parent}; build it with "
                              f"`affina rag index DOCS... --name {name}`"
                              + (f" (indexes: {', '.join(known)})" if known else ""))
        db = cls._connect(directory)
        meta = {k: json.loads(v) for k, v in db.execute("select key, value from meta")}
        kb = cls(directory, db, meta)
        if kb.vectors.rows != kb.count():
            raise ConfigError(f"index {name!r} is inconsistent ({kb.count()} chunks, {kb.vectors.rows} "
                              f"vectors; an update was interrupted): rebuild it with "
                              f"`affina rag index DOCS... --name {name} --rebuild`")
        return kb

    @staticmethod
    def _connect(directory: Path) -> sqlite3.Connection:
        # check_same_thread off: the server opens an index once and reads it from its worker
        # threads; every write happens in `affina rag index`, in one thread.
        db = sqlite3.connect(directory / "chunks.db", check_same_thread=False)
        db.executescript(SCHEMA)
        return db

    def close(self) -> None:
        self.db.close()

    # --- reading -------------------------------------------------------------------------
    def count(self) -> int:
        return self.db.execute("select count(*) from chunks").fetchone()[0]

    def files(self) -> dict[str, tuple[str, int]]:
        """path → (sha256, chunk count)."""
        return {p: (s, n) for p, s, n in self.db.execute("select path, sha256, chunks from files")}

    def chunk_ids(self) -> np.ndarray:
        """Chunk ids in matrix-row order."""
        return np.fromiter((r[0] for r in self.db.execute("select id from chunks order by id")),
                           dtype=np.int64)

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"select id, path, sha256, line, title, start, end, byte_start, "
                               f"byte_end, text from chunks where id in ({marks})", list(ids))
        return {r[0]: Chunk(*r) for r in rows}

    def vector_search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) of the k nearest chunks, exact."""
        scores, rows = self.vectors.search(query, k)
        if not rows.size:
            return []
        ids = self.chunk_ids()
        return [(int(ids[r]), float(s)) for r, s in zip(rows[0], scores[0])]

    def bm25_search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) of the k best keyword matches: FTS5's bm25() (k1=1.2,
        b=0.75), negated so that higher is better. Any query word may match (OR)."""
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in dict.fromkeys(words))
        rows = self.db.execute("select rowid, bm25(fts) from fts where fts match ? "
                               "order by bm25(fts) limit ?", (match, k))
        return [(int(i), -float(s)) for i, s in rows]

    # --- writing (one transaction per update, see index.update_index) ---------------------
    def remove_files(self, paths: list[str]) -> None:
        for path in paths:
            ids = [r[0] for r in self.db.execute("select id from chunks where path = ?", (path,))]
            self.db.executemany("delete from fts where rowid = ?", [(i,) for i in ids])
            self.db.execute("delete from chunks where path = ?", (path,))
            self.db.execute("delete from files where path = ?", (path,))

    def add_chunks(self, rows: list[dict]) -> None:
        for row in rows:
            cur = self.db.execute(
                "insert into chunks(path, sha256, line, title, start, end, byte_start, byte_end, text) "
                "values (:path, :sha256, :line, :title, :start, :end, :byte_start, :byte_end, :text)", row)
            self.db.execute("insert into fts(rowid, text) values (?, ?)", (cur.lastrowid, row["text"]))

    def set_file(self, path: str, sha256: str, kind: str, chunks: int, when: str) -> None:
        self.db.execute("insert or replace into files(path, sha256, kind, chunks, indexed_at) "
                        "values (?, ?, ?, ?, ?)", (path, sha256, kind, chunks, when))
