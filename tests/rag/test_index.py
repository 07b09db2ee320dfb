"""Indexing and retrieval on a real knowledge base (the real embedding model): lineage back to
the file, vectors against brute force, BM25 against a hand computation, re-indexing by sha256."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from affina.errors import ConfigError, DataError
from affina.rag import ChunkSettings, KnowledgeBase, Retriever, rrf_fuse, update_index
from affina.rag.documents import read_documents
from affina.rag.vectors import VectorMatrix

from .conftest import write_docs

SRC = Path(__file__).resolve().parents[2] / "src"


def test_chunks_point_back_to_their_file_bytes(built_kb, monkeypatch):
    home, docs, name = built_kb
    monkeypatch.setenv("AFFINA_HOME", str(home))
    kb = KnowledgeBase.open(name)
    chunks = kb.chunks(kb.chunk_ids().tolist())
    assert {Path(c.path).name for c in chunks.values()} == {p.name for p in docs.iterdir()}
    for c in chunks.values():
        raw = Path(c.path).read_bytes()
        assert c.sha256 == __import__("hashlib").sha256(raw).hexdigest()
        if c.path.endswith((".md", ".txt")):
            assert raw[c.byte_start:c.byte_end].decode("utf-8") == c.text  # exact, past the ✓
            assert raw.decode("utf-8")[c.start:c.end] == c.text
        elif c.path.endswith(".jsonl"):
            line = raw.decode().splitlines()[c.line - 1]
            assert json.loads(line)["text"][c.start:c.end] == c.text
        else:  # HTML: offsets into the visible text; no script or style inside
            assert c.byte_start is None and "hidden" not in c.text and "color" not in c.text


def test_vector_search_equals_brute_force(built_kb, monkeypatch):
    home, _, name = built_kb
    monkeypatch.setenv("AFFINA_HOME", str(home))
    retriever = Retriever.open(name)
    ids = retriever.kb.chunk_ids().tolist()
    texts = [retriever.kb.chunks([i])[i].text for i in ids]
    all_vecs = retriever.embedder.encode_numpy(texts)  # float32, computed afresh
    for query in ["how long does the battery last", "can I send it back", "what is that clicking"]:
        q = retriever.embedder.encode_numpy([query])[0]
        exact = all_vecs @ q
        order = np.argsort(-exact)[:5]
        hits = retriever.search(query, k=5, mode="vector")
        assert [h.chunk.id for h in hits][:3] == [ids[i] for i in order][:3]
        np.testing.assert_allclose([h.score for h in hits], exact[order], atol=2e-3)  # float16 storage


def test_vector_matrix_rewrite_and_search_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    m = VectorMatrix(tmp_path / "v.f16", 16)
    m.rewrite(np.zeros(0, dtype=np.int64), data[:700])
    keep = np.arange(0, 700, 2)
    m.rewrite(keep, data[700:])
    expect = np.concatenate([data[keep], data[700:]]).astype(np.float16).astype(np.float32)
    assert m.rows == len(expect)
    q = rng.standard_normal((3, 16)).astype(np.float32)
    scores, rows = m.search(q, 10)
    exact = q @ expect.T
    truth = np.argsort(-exact, axis=1)[:, :10]
    # Half-precision products: the same neighbours, scores within float16 rounding.
    np.testing.assert_allclose(scores, np.take_along_axis(exact, truth, 1), atol=5e-3)
    np.testing.assert_allclose(np.take_along_axis(exact, rows, 1), scores, atol=5e-3)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(rows.tolist(), truth.tolist())]) >= 9.5


def test_bm25_matches_a_hand_computed_score(rag_home):
    docs = rag_home / "bm"
    docs.mkdir()
    (docs / "a.txt").write_text("red apple red")
    (docs / "b.txt").write_text("green apple pie with cream")
    (docs / "c.txt").write_text("blue sky")
    update_index([docs], "bm", ChunkSettings(size=500, overlap=0, unit="chars"), progress=False)
    kb = KnowledgeBase.open("bm")
    got = {Path(kb.chunks([i])[i].path).name: s for i, s in kb.bm25_search("red apple", 10)}
    # Okapi BM25 as FTS5 defines it: k1=1.2, b=0.75, idf = ln((N - n + 0.5) / (n + 0.5)).
    N, avgdl, k1, b = 3, (3 + 5 + 2) / 3, 1.2, 0.75
    def term(f, n, dl):
        idf = max(math.log((N - n + 0.5) / (n + 0.5)), 1e-6)  # FTS5 floors a negative idf
        return idf * f * (k1 + 1) / (f + k1 * (1 - b + b * dl / avgdl))
    expect_a = term(2, 1, 3) + term(1, 2, 3)
    expect_b = term(1, 2, 5)
    assert got["a.txt"] == pytest.approx(expect_a, rel=1e-6)
    assert got["b.txt"] == pytest.approx(expect_b, rel=1e-6)
    assert "c.txt" not in got


def test_rrf_fuses_by_rank():
    fused = rrf_fuse([[1, 2, 3], [3, 1, 4]], k=4, rrf_k=60)
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_hybrid_search_finds_keyword_and_meaning(built_kb, monkeypatch):
    home, _, name = built_kb
    monkeypatch.setenv("AFFINA_HOME", str(home))
    retriever = Retriever.open(name)
    top = retriever.search("microfibre cloth", k=3)[0]
    assert "microfibre" in top.chunk.text and top.bm25_score is not None
    top = retriever.search("how do I get my money back", k=3)
    assert any("refund" in h.chunk.text for h in top)


def test_reindex_embeds_only_changed_files(rag_home):
    docs = write_docs(rag_home)
    settings = ChunkSettings(size=80, overlap=20, unit="chars")
    first = update_index([docs], "kb", settings, progress=False)
    assert first.count("new") == 9 and first.embedded == first.total_chunks
    kb = KnowledgeBase.open("kb")
    before = {c.path: c.id for c in kb.chunks(kb.chunk_ids().tolist()).values()}
    kb.close()
    (docs / "battery.md").write_text("# Battery\n\nThe new battery lasts twelve hours and has a purple gauge.\n")
    (docs / "pairing.txt").unlink()
    again = update_index([docs], "kb", settings, progress=False)
    status = {Path(p).name: s for p, s, _ in again.files}
    assert status["battery.md"] == "changed" and status["pairing.txt"] == "removed"
    assert sum(s == "unchanged" for s in status.values()) == 7
    kb = KnowledgeBase.open("kb")
    chunks = kb.chunks(kb.chunk_ids().tolist()).values()
    battery = [c for c in chunks if c.path.endswith("battery.md")]
    assert again.embedded == len(battery)
    assert not any(c.path.endswith("pairing.txt") for c in chunks)
    # Unchanged files keep their chunks (same ids) and their vectors stay aligned with them.
    assert before[str(docs / "warranty.md")] in {c.id for c in chunks}
    hit = Retriever(kb).search("purple gauge twelve hours", k=1, mode="vector")[0]
    assert hit.chunk.path.endswith("battery.md") and hit.score > 0.5
    hit = Retriever(kb).search(next(c.text for c in chunks if c.path.endswith("warranty.md")), k=1,
                               mode="vector")[0]
    assert hit.chunk.path.endswith("warranty.md") and hit.score > 0.99
    third = update_index([docs], "kb", settings, progress=False)
    assert third.embedded == 0 and third.count("unchanged") == 8


def test_other_settings_on_an_existing_index_are_refused(rag_home):
    docs = write_docs(rag_home)
    update_index([docs / "reset.md"], "kb", ChunkSettings(size=80, overlap=20, unit="chars"), progress=False)
    with pytest.raises(ConfigError, match="--rebuild"):
        update_index([docs], "kb", ChunkSettings(size=90, overlap=20, unit="chars"), progress=False)
    with pytest.raises(ConfigError, match="no index named 'nope'"):
        KnowledgeBase.open("nope")


def test_bad_documents_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 field 'text'"):
        read_documents(bad)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_documents(latin)


def test_pdf_text_is_read(tmp_path):
    pytest.importorskip("pypdf")
    pdf = tmp_path / "m.pdf"
    pdf.write_bytes(_minimal_pdf("Hold the red button to reset"))
    (doc,) = read_documents(pdf)
    assert "red button" in doc.text and doc.kind == "pdf"


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one line of Helvetica text and a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_cli_errors_are_one_line(tmp_path):
    env = {"PYTHONPATH": str(SRC), "AFFINA_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    (tmp_path / "x.docx").write_text("?")
    for args, expect in [(["index", str(tmp_path / "missing"), "--name", "kb"], "no such file"),
                         (["index", str(tmp_path / "x.docx"), "--name", "kb"], "unsupported document type"),
                         (["search", "nope", "anything"], "no index named 'nope'")]:
        proc = subprocess.run([sys.executable, "-m", "affina", "rag", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert expect in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_list_and_search_commands(built_kb, monkeypatch, capsys):
    from affina.cli import main

    home, _, name = built_kb
    monkeypatch.setenv("AFFINA_HOME", str(home))
    assert main(["rag", "list"]) == 0
    out = capsys.readouterr().out
    assert name in out and "80 chars / 20" in out
    assert main(["rag", "search", name, "microfibre cloth", "-k", "2", "--mode", "bm25"]) == 0
    assert "cleaning.md" in capsys.readouterr().out
