"""Vector store candidates for `affina rag`: recall@10 against exact float32 brute force, and
single-query throughput (one query at a time, as a chat request asks), at N chunks.

    python benchmarks/rag_store.py                  # 100k chunks of dimension 384
    python benchmarks/rag_store.py --n 20000 --queries 50

Candidates (each on disk in a temporary directory, opened the way affina would open it):

- `mmap f16 exact`: affina.rag.vectors.VectorMatrix: a memory-mapped float16 matrix searched
  exactly in numpy blocks (no dependency beyond numpy).
- `sqlite-vec exact`: a `vec0` virtual table (float32) and its KNN query (`MATCH ... AND k = 10`).
- `usearch HNSW f16`: an HNSW graph (M=16, ef_construction=128, ef_search 64 or 512), saved and
  memory-mapped back with `Index.restore(view=True)`.

Vectors are random unit vectors (dimension 384, the embedding model's); queries are stored
vectors plus Gaussian noise of the same norm, renormalised, so every query has real near
neighbours. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from affina.rag.vectors import VectorMatrix  # noqa: E402


class Unavailable(Exception):
    """A candidate that cannot run in this Python: reported in the table, not a crash."""


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def bench_mmap(data, queries, k, tmp):
    t0 = time.perf_counter()
    m = VectorMatrix(tmp / "vectors.f16", data.shape[1])
    m.rewrite(np.zeros(0, dtype=np.int64), data)
    build = time.perf_counter() - t0
    def search(q):
        return m.search(q[None], k)[1][0]
    return build, search, du(tmp)


def bench_sqlite_vec(data, queries, k, tmp):
    import sqlite3

    import sqlite_vec

    db = sqlite3.connect(tmp / "vec.db")
    if not hasattr(db, "enable_load_extension"):
        raise Unavailable("this Python's sqlite3 is built without extension loading")
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)
    t0 = time.perf_counter()
    db.execute(f"create virtual table v using vec0(embedding float[{data.shape[1]}])")
    db.executemany("insert into v(rowid, embedding) values (?, ?)",
                   ((i, row.tobytes()) for i, row in enumerate(data)))
    db.commit()
    build = time.perf_counter() - t0
    def search(q):
        rows = db.execute("select rowid from v where embedding match ? and k = ? order by distance",
                          (q.astype(np.float32).tobytes(), k)).fetchall()
        return np.array([r[0] for r in rows])
    return build, search, du(tmp)


def bench_usearch(data, queries, k, tmp, ef=64):
    from usearch.index import Index

    t0 = time.perf_counter()
    index = Index(ndim=data.shape[1], metric="ip", dtype="f16", connectivity=16,
                  expansion_add=128, expansion_search=ef)
    index.add(np.arange(len(data)), data, threads=1)
    index.save(str(tmp / "index.usearch"))
    build = time.perf_counter() - t0
    view = Index.restore(str(tmp / "index.usearch"), view=True)
    view.expansion_search = ef
    def search(q):
        return np.asarray(view.search(q, k).keys)
    return build, search, du(tmp)


CANDIDATES = {"mmap f16 exact": bench_mmap, "sqlite-vec exact": bench_sqlite_vec,
              "usearch HNSW f16 ef=64": bench_usearch,
              "usearch HNSW f16 ef=512": lambda *a: bench_usearch(*a, ef=512)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--only", nargs="*", choices=list(CANDIDATES))
    a = p.parse_args()
    rng = np.random.default_rng(0)
    data = unit(rng.standard_normal((a.n, a.dim)))
    picks = rng.integers(0, a.n, a.queries)
    queries = unit(data[picks] + unit(rng.standard_normal((a.queries, a.dim))))
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :a.k]  # exact, float32
    rows = []
    for name in a.only or CANDIDATES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                build, search, size = CANDIDATES[name](data, queries, a.k, Path(tmp))
            except Unavailable as e:
                rows.append((name, None, str(e), None, None))
                continue
            search(queries[0])  # warm the page cache and any lazy setup
            t0 = time.perf_counter()
            found = [search(q) for q in queries]
            elapsed = time.perf_counter() - t0
        recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / a.k for f, t in zip(found, truth)])
        rows.append((name, recall, a.queries / elapsed, build, size / 2**20))
        print(f"  {name}: done", file=sys.stderr)
    print(f"\n{a.n} vectors x {a.dim}, {a.queries} queries, k={a.k}\n")
    print("| store | recall@10 | queries/s | build s | disk MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, recall, qps, build, size in rows:
        if recall is None:
            print(f"| {name} | not measured: {qps} | | | |")
            continue
        print(f"| {name} | {recall:.3f} | {qps:.1f} | {build:.1f} | {size:.0f} |")


if __name__ == "__main__":
    main()
