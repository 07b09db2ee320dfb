"""Generate the concise-vs-rambling preference dataset.

Run from anywhere:

    python examples/preference/make_data.py

Writes ``train.jsonl`` (120 pairs) and ``test.jsonl`` (30 pairs) next to this file. Standard
library only; output is fully determined by ``SEED``.

Each row is in the pairwise preference format::

    {"prompt": "<question>", "chosen": "<short direct answer>", "rejected": "<rambling answer>"}

Both replies carry the same fact; the chosen one states it in one sentence, the rejected one
buries it in filler. A model tuned on it should come to prefer answers that get to the point.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 7
N_TRAIN, N_TEST = 120, 30

FACTS = [  # (question, answer)
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"), ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Kenya?", "Nairobi"), ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Norway?", "Oslo"), ("What is the capital of Egypt?", "Cairo"),
    ("What colour is the sky on a clear day?", "Blue"), ("What colour is fresh grass?", "Green"),
    ("How many legs does a spider have?", "Eight"), ("How many legs does an insect have?", "Six"),
    ("How many days are in a week?", "Seven"), ("How many months are in a year?", "Twelve"),
    ("How many hours are in a day?", "Twenty-four"), ("How many minutes are in an hour?", "Sixty"),
    ("What gas do plants take in?", "Carbon dioxide"), ("What do bees make?", "Honey"),
    ("What is frozen water called?", "Ice"), ("Which planet is closest to the Sun?", "Mercury"),
    ("Which planet is known as the red planet?", "Mars"), ("What is the largest ocean?", "The Pacific"),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"), ("What is 7 times 8?", "56"),
    ("What is 12 plus 30?", "42"), ("What is half of 90?", "45"), ("What is 9 squared?", "81"),
]
for a in range(2, 20):
    for b in range(3, 10):
        FACTS.append((f"What is {a} times {b}?", str(a * b)))

OPENERS = ["Well, that is a really interesting question, and there is a lot one could say about it.",
           "Great question! Let me think about this carefully before answering, because it matters.",
           "Thanks for asking. Before I answer, it is worth taking a step back to consider the context.",
           "Hmm, people often wonder about this, and honestly it can be surprisingly subtle."]
FILLERS = ["Many sources discuss this at length, and opinions on how to phrase it vary.",
           "It is always good to double-check such things, just to be on the safe side.",
           "Of course, there are many related topics that we could also explore together.",
           "I hope this explanation is helpful and not too long-winded for your purposes."]


def pair(rng: random.Random, question: str, answer: str) -> dict:
    chosen = f"{answer}."
    rejected = " ".join([rng.choice(OPENERS), rng.choice(FILLERS),
                         f"After all of that, the answer would be {answer[0].lower() + answer[1:]}.",
                         rng.choice(FILLERS)])
    return {"prompt": question, "chosen": chosen, "rejected": rejected}


def main() -> None:
    rng = random.Random(SEED)
    facts = list(FACTS)
    rng.shuffle(facts)
    test, train = facts[:N_TEST], facts[N_TEST:N_TEST + N_TRAIN]
    here = Path(__file__).resolve().parent
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        with open(here / name, "w", encoding="utf-8") as f:
            for q, a in rows:
                f.write(json.dumps(pair(rng, q, a), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
