"""Derive a text+label classification set from the product listings: listing → category.

    python examples/product_category/make_data.py

Reads ../product_json/{train,test}.jsonl (synthetic listings, see that folder's README) and
writes train.jsonl / test.jsonl here with the same split, so no test listing is trained on.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "product_json"

for split in ("train", "test"):
    rows = [json.loads(line) for line in (SOURCE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    out = [{"text": r["input"], "label": json.loads(r["output"])["category"]} for r in rows]
    (HERE / f"{split}.jsonl").write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out),
                                         encoding="utf-8")
    print(f"{split}: {len(out)} rows")
