"""Retrieval for chat requests (`"rag": {"index": NAME, "k": 4, "mode": "hybrid"}`): the best
chunks of a knowledge base go into the prompt as a system message of numbered sources (rendered
by the target model's chat template, rag/prompt.py) and come back as `citations`.

Knowledge bases are opened on first use and kept; one that `affina rag index` has updated since
(its vector file changed) is opened again, so a re-index is served without a restart."""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import ConfigError
from ..rag.prompt import with_sources
from ..rag.retrieve import Retriever
from ..rag.store import kb_dir
from .schemas import ApiError, RagOptions

__all__ = ["Retrievals"]


class Retrievals:
    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[str, tuple[float, Retriever]] = {}

    def retriever(self, name: str) -> Retriever:
        try:
            directory = kb_dir(name)
        except ConfigError as e:
            raise ApiError(400, str(e), "invalid_index_name", "rag.index") from None
        vectors = Path(directory) / "vectors.f16"
        stamp = vectors.stat().st_mtime_ns if vectors.exists() else -1
        with self._lock:
            held = self._open.get(name)
            if held and held[0] == stamp:
                return held[1]
            try:
                retriever = Retriever.open(name)
            except ConfigError as e:
                code = "index_not_found" if "no index named" in str(e) else "index_unusable"
                raise ApiError(404 if code == "index_not_found" else 400, str(e), code, "rag.index") from None
            if held:
                held[1].kb.close()
            self._open[name] = (stamp, retriever)
            return retriever

    def augment(self, messages: list[dict], options: RagOptions, tokenizer) -> tuple[list[dict], list[dict]]:
        """(messages with the sources, citations) for the request's last user message."""
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if not query.strip():
            raise ApiError(400, "rag needs a user message to search with", "invalid_messages", "messages")
        hits = self.retriever(options.index).search(query, k=options.k, mode=options.mode)
        return with_sources(messages, hits, tokenizer), [h.citation(n) for n, h in enumerate(hits, 1)]
