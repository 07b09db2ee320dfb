"""`affina rag raft`: training rows that teach a model to answer from retrieved context
(RAFT, Zhang et al. 2024, arXiv:2403.10131). Each labelled question (rag/evaluation.py's format:
a chat row with `"source"` and optional `"evidence"`) becomes one chat row whose prompt holds
numbered sources, exactly as served retrieval writes them (rag/prompt.py):

- with probability `p_oracle`, the chunk that answers it (the oracle) among `distractors`
  other chunks, at a seeded random position;
- otherwise only distractors, so the model also learns to answer when retrieval misses.

Distractors are hard negatives: the best-ranked chunks of the hybrid search that are not from
the answer's passage, topped up with random chunks of the index."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .evaluation import is_relevant, load_labelled, question_of
from .prompt import with_sources
from .retrieve import Hit, Retriever

__all__ = ["build_raft", "RaftReport"]


@dataclass
class RaftReport:
    rows: int = 0
    with_oracle: int = 0
    without_oracle: int = 0
    oracle_missing: int = 0  # questions whose answering chunk is not in the index


def _oracle(retriever: Retriever, question: str, source: str, evidence: str | None, depth: int) -> Hit | None:
    for hit in retriever.search(question, k=depth):
        if is_relevant(hit.chunk, source, evidence):
            return hit
    # Not ranked: look at every chunk of the file (by its path's end) for the evidence.
    kb = retriever.kb
    like = "%" + source.lstrip("/")
    ids = [r[0] for r in kb.db.execute("select id from chunks where path like ? order by id", (like,))]
    for chunk in kb.chunks(ids).values():
        if is_relevant(chunk, source, evidence):
            return Hit(chunk, 0.0, None, None)
    return None


def build_raft(index: str, data: list[str | Path], out: Path, *, distractors: int = 3,
               p_oracle: float = 0.8, seed: int = 0, depth: int = 20) -> RaftReport:
    if not 0 <= p_oracle <= 1:
        raise ConfigError(f"--p-oracle {p_oracle}: must be in [0, 1]")
    if distractors < 0:
        raise ConfigError(f"--distractors {distractors}: must be >= 0")
    rng = random.Random(seed)
    retriever = Retriever.open(index)
    all_ids = retriever.kb.chunk_ids().tolist()
    report = RaftReport()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for item in load_labelled(data):
            question = question_of(item.record)
            oracle = _oracle(retriever, question, item.source, item.evidence, depth)
            if oracle is None:
                report.oracle_missing += 1
            negatives = [h for h in retriever.search(question, k=depth)
                         if not is_relevant(h.chunk, item.source, item.evidence)][:distractors]
            seen = {h.chunk.id for h in negatives} | ({oracle.chunk.id} if oracle else set())
            spare = [i for i in all_ids if i not in seen]
            rng.shuffle(spare)
            for cid in spare[:distractors - len(negatives)]:
                candidate = retriever.kb.chunks([cid])[cid]
                if not is_relevant(candidate, item.source, item.evidence):
                    negatives.append(Hit(candidate, 0.0, None, None))
            sources = list(negatives)
            keep_oracle = oracle is not None and rng.random() < p_oracle
            if keep_oracle:
                sources.insert(rng.randint(0, len(sources)), oracle)
            report.with_oracle += keep_oracle
            report.without_oracle += not keep_oracle
            messages = item.record.messages
            row = {"messages": with_sources(messages[:-1], sources) + messages[-1:],
                   "raft": {"oracle": keep_oracle, "source": item.source,
                            "chunks": [h.chunk.id for h in sources]}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            report.rows += 1
    return report
