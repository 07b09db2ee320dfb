"""One embedding model per process, shared by indexing, the server and evaluation."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["embedder_for", "Embedder"]

_lock = threading.Lock()
_cache: dict[str, "Embedder"] = {}


class Embedder:
    """methods/embedder.TextEmbedder with numpy output, a progress bar and a lock (the model is
    called from the server's threads)."""

    def __init__(self, spec: str):
        from ..methods.embedder import TextEmbedder

        self._model = TextEmbedder(spec)
        self.spec, self.tokenizer = spec, self._model.tokenizer
        self.dim = int(self._model.model.config.hidden_size)
        self._lock = threading.Lock()

    def encode_numpy(self, texts: list[str], batch_size: int = 64, progress: bool = False,
                     desc: str = "embedding") -> np.ndarray:
        """(N, D) float32 unit vectors."""
        from tqdm.auto import tqdm

        from ..ui import progress_bars

        out = []
        with self._lock, tqdm(total=len(texts), desc=desc, unit="chunk",
                              disable=not (progress and progress_bars())) as bar:
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                out.append(self._model.encode(batch, batch_size=batch_size).float().numpy())
                bar.update(len(batch))
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)


def embedder_for(spec: str) -> Embedder:
    with _lock:
        if spec not in _cache:
            _cache[spec] = Embedder(spec)
        return _cache[spec]
