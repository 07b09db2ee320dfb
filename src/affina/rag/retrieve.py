"""Hybrid retrieval: the k chunks that best answer a query, by vectors (exact cosine over the
embeddings), BM25 (SQLite FTS5 over the chunk texts), or both fused by reciprocal rank fusion
(Cormack, Clarke & Büttcher 2009): score(d) = Σ over the two rankings of 1 / (RRF_K + rank(d))."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..errors import ConfigError
from .embedding import embedder_for
from .store import Chunk, KnowledgeBase

__all__ = ["Hit", "Retriever", "rrf_fuse", "MODES", "RRF_K"]

MODES = ("hybrid", "vector", "bm25")
RRF_K = 60  # the constant from the RRF paper: damps the weight of the very first ranks


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float                 # the ranking score: RRF (hybrid), cosine (vector) or BM25
    vector_score: float | None   # cosine similarity, when the vector ranking found it
    bm25_score: float | None     # BM25, when the keyword ranking found it

    def citation(self, number: int) -> dict:
        c = self.chunk
        return {"source": number, "file": c.path, "line": c.line, "title": c.title,
                "offset": c.start, "end": c.end, "byte_offset": c.byte_start,
                "sha256": c.sha256, "chunk_id": c.id, "score": round(self.score, 6)}


def rrf_fuse(rankings: list[list[int]], k: int, rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of id rankings (best first): the k best (id, fused score); ties
    keep the order of first appearance."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


class Retriever:
    """Searches one knowledge base; opens its embedding model once (shared per process)."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb
        self.embedder = embedder_for(kb.meta["embedding_model"])
        # The server searches from several threads; one SQLite connection serves them in turn.
        self._lock = threading.Lock()

    @classmethod
    def open(cls, name: str) -> "Retriever":
        return cls(KnowledgeBase.open(name))

    def search(self, query: str, k: int = 4, mode: str = "hybrid") -> list[Hit]:
        with self._lock:
            return self._search(query, k, mode)

    def _search(self, query: str, k: int, mode: str) -> list[Hit]:
        if mode not in MODES:
            raise ConfigError(f"retrieval mode {mode!r}: use one of {', '.join(MODES)}")
        depth = max(50, 4 * k)  # each ranking looks deeper than k so that fusion has overlap
        vec = bm25 = []
        if mode in ("hybrid", "vector"):
            q = self.embedder.encode_numpy([query])
            vec = self.kb.vector_search(q, depth if mode == "hybrid" else k)
        if mode in ("hybrid", "bm25"):
            bm25 = self.kb.bm25_search(query, depth if mode == "hybrid" else k)
        vmap, bmap = dict(vec), dict(bm25)
        if mode == "hybrid":
            ranked = rrf_fuse([[i for i, _ in vec], [i for i, _ in bm25]], k)
        else:
            ranked = (vec or bm25)[:k]
        chunks = self.kb.chunks([i for i, _ in ranked])
        return [Hit(chunks[i], s, vmap.get(i), bmap.get(i)) for i, s in ranked if i in chunks]
