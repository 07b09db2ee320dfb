"""Scripted traffic for drift checks: product listings as the model was trained on them, and
the same products asked about in a new style (customers' questions), the shift the monitoring
tests and `benchmarks/drift_alarms.py` detect.

    python examples/drift/traffic.py --style shifted -n 5

Standard library only; every draw is determined by its seed. Rows are alpaca rows
(`instruction`, `input`, `output`) like examples/product_json, so the correct reply of every
prompt is known (the feedback a person would give).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

_MAKE = Path(__file__).resolve().parents[1] / "product_json" / "make_data.py"
_spec = importlib.util.spec_from_file_location("product_json_make_data", _MAKE)
listings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(listings)

# The new input style: the same fields, in questions a customer would type into a chat.
SHIFTED_TEMPLATES = [
    "hi, is the {color} {product} from {brand} still available? you listed it at {price}",
    "Quick question: does {brand} make {a_product} in {color}? I saw one for {price}.",
    "can u tell me if {price} is the final price for the {brand} {product}, the {color} one??",
    "I want to return {a_color} {product} by {brand} that I paid {price} for. How do I do that?",
    "Do you ship the {brand} {product} ({color}) abroad? Listed at {price} on your site.",
    "My {color} {product} from {brand} stopped working after a week. I paid {price}. Refund?",
    "is there a discount on the {brand} {product}? the {color} version shows {price} for me",
    "Comparing two options: {brand}'s {color} {product} at {price}. Is it worth it?",
]

STYLES = ("listing", "shifted")


def rows(style: str, n: int, seed: int) -> list[dict]:
    """`n` rows in `style`: `listing` (the training distribution) or `shifted`."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}")
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        row = listings.make_row(rng)
        if style == "shifted":
            record = json.loads(row["output"])
            row["input"] = rng.choice(SHIFTED_TEMPLATES).format(
                brand=record["brand"], product=record["product"], color=record["color"],
                price=f"${record['price']}", a_color=listings.article(record["color"]),
                a_product=listings.article(record["product"]))
        out.append(row)
    return out


def chat(row: dict) -> list[dict]:
    """The messages a client sends for a row (the instruction and the text, as alpaca joins them)."""
    return [{"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"}]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--style", choices=STYLES, default="listing")
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for r in rows(a.style, a.n, a.seed):
        print(json.dumps(r, ensure_ascii=False))
