"""The vector store: unit-length embeddings in one memory-mapped float16 matrix
(`vectors.f16`, shape (N, D), row i = chunk row i), searched exactly in fixed-size blocks.

Why this store (benchmarks/rag_store.py, table in docs/rag.md): exact search gives recall 1.0 by
construction, needs no dependency beyond numpy, and the operating system pages the matrix in
and out, so an index larger than memory is read block by block instead of loaded. float16 halves
the disk and page-cache footprint; products are taken in float16 with float32 accumulation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["VectorMatrix", "BLOCK_ROWS"]

BLOCK_ROWS = 32768
"""Rows scored per step: (32768, 384) float16 is 24 MiB, small next to any page cache."""


class VectorMatrix:
    """An append-by-rewrite float16 matrix on disk with exact top-k inner-product search."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim = Path(path), dim

    @property
    def rows(self) -> int:
        if not self.path.exists():
            return 0
        return self.path.stat().st_size // (2 * self.dim)

    def open(self) -> np.ndarray:
        """(N, D) float16, memory-mapped read-only."""
        if self.rows == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        return np.memmap(self.path, dtype=np.float16, mode="r", shape=(self.rows, self.dim))

    def rewrite(self, keep: np.ndarray, new: np.ndarray) -> None:
        """Write a new matrix holding the kept old rows (in order) and then `new` (M, D): copied
        block by block into a temporary file that replaces the old one atomically, so nothing is
        lost if the process stops half way and nothing is held in memory whole."""
        old = self.open()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for start in range(0, len(keep), BLOCK_ROWS):
                out.write(np.ascontiguousarray(old[keep[start:start + BLOCK_ROWS]]).tobytes())
            out.write(np.ascontiguousarray(new, dtype=np.float16).reshape(-1, self.dim).tobytes())
            out.flush()
            os.fsync(out.fileno())
        del old
        os.replace(tmp, self.path)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product for (Q, D) queries: (Q, k) scores and row ids, best
        first (fewer columns when the matrix has fewer than k rows)."""
        import torch

        rows = self.rows
        # Copy-on-write: a writable view (torch wants one) that never writes the file.
        matrix = (np.memmap(self.path, dtype=np.float16, mode="c", shape=(rows, self.dim)) if rows
                  else np.zeros((0, self.dim), dtype=np.float16))
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        q16 = torch.from_numpy(queries.astype(np.float16)).T  # (D, Q)
        k = min(k, len(matrix))
        best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(queries), 0), dtype=np.int64)
        for start in range(0, len(matrix), BLOCK_ROWS):
            # float16 products straight from the mapped block: torch's CPU half matmul
            # accumulates in float32 and is ~20x faster than casting the block to float32 first.
            block = torch.from_numpy(matrix[start:start + BLOCK_ROWS])  # (B, D)
            scores = (block @ q16).float().numpy().T  # (Q, B)
            take = min(k, scores.shape[1])
            part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
            i = np.concatenate([best_i, part + start], axis=1)
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
        return best_s, best_i
