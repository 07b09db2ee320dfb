"""`affina rag eval`: how well a knowledge base finds the passage that answers each question
(recall@k and MRR per retrieval mode), and how a model answers with and without those passages
in its prompt (the one evaluator, evaluate/evaluator.py).

The labelled set is any chat data file affina reads (messages, prompt/completion, alpaca) whose
rows also say where the answer is: `"source": "warranty.md"` (a file name or the end of its
path) and, optionally, `"evidence": "text of the passage"`. A retrieved chunk is relevant when
it comes from that file and, if evidence is given, holds the evidence, or its first or last 30
characters (a passage cut between two chunks still counts)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.loading import load_records
from ..data.records import Record
from ..data.sources import read_rows
from ..errors import DataError
from .prompt import with_sources
from .retrieve import MODES, Retriever

__all__ = ["Labelled", "load_labelled", "is_relevant", "retrieval_scores", "with_retrieval",
           "question_of", "evaluate_rag"]


@dataclass(frozen=True)
class Labelled:
    record: Record
    source: str | None
    evidence: str | None


def question_of(record: Record) -> str:
    """The text to search with: the last user message before the reply."""
    users = [m["content"] for m in (record.messages or []) if m["role"] == "user"]
    if not users:
        raise DataError("needs a user message to search with", source=record.source, line=record.line)
    return users[-1]


def load_labelled(paths: list[str | Path], need_source: bool = True) -> list[Labelled]:
    records = load_records(paths).records
    labels = {}
    for path in paths:
        for line, row in read_rows(path):
            labels[(str(path), line)] = (row.get("source"), row.get("evidence"))
    out = []
    for r in records:
        source, evidence = labels.get((r.source, r.line), (None, None))
        if need_source and not isinstance(source, str):
            raise DataError('needs "source": the document file that answers it (e.g. "manual.md")',
                            source=r.source, line=r.line, field="source")
        if evidence is not None and not isinstance(evidence, str):
            raise DataError("must be a string", source=r.source, line=r.line, field="evidence")
        out.append(Labelled(r, source, evidence))
    return out


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def is_relevant(chunk, source: str, evidence: str | None) -> bool:
    path = chunk.path.replace("\\", "/")
    if not (path == source or path.endswith("/" + source.lstrip("/"))):
        return False
    if not evidence:
        return True
    text, ev = _squash(chunk.text), _squash(evidence)
    return ev in text or ev[:30] in text or ev[-30:] in text


def retrieval_scores(retriever: Retriever, labelled: list[Labelled], k: int,
                     modes: tuple[str, ...] = MODES) -> dict[str, dict]:
    """{mode: {"recall@k", "mrr", "n", "queries_per_s"}}: recall@k is the share of questions with
    a relevant chunk among the first k; MRR the mean of 1/rank of the first relevant (0 if none
    in the first k)."""
    out = {}
    for mode in modes:
        found, rr, t0 = 0, 0.0, time.perf_counter()
        for item in labelled:
            hits = retriever.search(question_of(item.record), k=k, mode=mode)
            rank = next((n for n, h in enumerate(hits, 1) if is_relevant(h.chunk, item.source, item.evidence)), None)
            if rank is not None:
                found += 1
                rr += 1.0 / rank
        n = max(len(labelled), 1)
        out[mode] = {f"recall@{k}": found / n, "mrr": rr / n, "n": len(labelled),
                     "queries_per_s": len(labelled) / max(time.perf_counter() - t0, 1e-9)}
    return out


def with_retrieval(records: list[Record], retriever: Retriever, k: int, mode: str, tokenizer) -> list[Record]:
    """The records with the retrieved sources added to their prompt (the reply unchanged), as
    the server would put them."""
    out = []
    for r in records:
        hits = retriever.search(question_of(r), k=k, mode=mode)
        prompt, reply = r.messages[:-1], r.messages[-1:]
        out.append(replace(r, messages=with_sources(prompt, hits, tokenizer) + reply,
                           meta={**r.meta, "sources": [h.citation(n) for n, h in enumerate(hits, 1)]}))
    return out


def evaluate_rag(index: str, data: list[str | Path], *, model: str | None = "default", k: int = 4,
                 mode: str = "hybrid", limit: int | None = None, max_new_tokens: int = 64,
                 max_length: int = 2048, batch_size: int = 8, metrics: list[str] | None = None,
                 out_dir: Path | None = None) -> dict:
    """Retrieval scores for every mode, then (when `model` is given) the model's answers without
    and with retrieval. Writes report.json (and predictions) into `out_dir` when given."""
    from ..evaluate.evaluator import EvalSettings, evaluate_model, flat_scores
    from ..runs import open_model
    from ..ui import print_table

    labelled = load_labelled(data)[:limit] if limit else load_labelled(data)
    retriever = Retriever.open(index)
    retrieval = retrieval_scores(retriever, labelled, k)
    print_table(f"retrieval on {index} ({len(labelled)} questions, k={k})",
                ["mode", f"recall@{k}", f"MRR@{k}", "queries/s"],
                [[m, f"{s[f'recall@{k}']:.3f}", f"{s['mrr']:.3f}", f"{s['queries_per_s']:.1f}"]
                 for m, s in retrieval.items()])
    report = {"index": index, "data": [str(Path(p).resolve()) for p in data], "k": k, "mode": mode,
              "retrieval": retrieval}
    if model:
        opened = open_model(model)
        settings = EvalSettings(metrics=tuple(metrics) if metrics else None, max_length=max_length,
                                max_new_tokens=max_new_tokens, batch_size=batch_size)
        records = [item.record for item in labelled]
        plain = evaluate_model(opened, records, settings, label="no retrieval")
        rag_records = with_retrieval(records, retriever, k, mode, opened.tokenizer)
        rag = evaluate_model(opened, rag_records, settings, label="with retrieval")
        scores = {"no retrieval": flat_scores(plain), "with retrieval": flat_scores(rag)}
        names = list(scores["no retrieval"])
        print_table(f"answers of {model}", ["measure", "no retrieval", "with retrieval"],
                    [[n, f"{scores['no retrieval'][n]:.4f}", f"{scores['with retrieval'][n]:.4f}"]
                     for n in names if n in scores["with retrieval"]])
        report.update(model=model, answers=scores, settings=settings.__dict__)
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(out_dir) / "predictions.jsonl", "w") as f:
                for label, result in (("no retrieval", plain), ("with retrieval", rag)):
                    for n, p in enumerate(result.get("predictions", [])):
                        extra = {"sources": rag_records[n].meta["sources"]} if result is rag else {}
                        f.write(json.dumps({"setting": label, **p, **extra}, ensure_ascii=False,
                                           default=str) + "\n")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
