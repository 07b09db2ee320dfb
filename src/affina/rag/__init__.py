"""Retrieval beside fine-tuning: knowledge bases built from documents (chunk → embed → store),
hybrid search (vectors + BM25, fused by reciprocal rank), sources in the prompt, retrieval
evaluation and RAFT training data. A recipe-layer package: it uses core (methods/embedder,
data) and evaluate/, and is used by govern (the advisor) and the service (serve, CLI)."""

from .chunking import ChunkSettings, chunk_spans
from .index import IndexReport, update_index
from .prompt import with_sources
from .retrieve import Hit, Retriever, rrf_fuse
from .store import KnowledgeBase, list_indexes

__all__ = ["ChunkSettings", "chunk_spans", "IndexReport", "update_index", "with_sources", "Hit",
           "Retriever", "rrf_fuse", "KnowledgeBase", "list_indexes"]
