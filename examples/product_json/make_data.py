"""Generate the synthetic product-listing -> JSON extraction dataset.

Run from anywhere:

    python examples/product_json/make_data.py

Writes ``train.jsonl`` (400 rows) and ``test.jsonl`` (60 rows) next to this
file. Standard library only; output is fully determined by ``SEED``, so
re-running reproduces both files byte for byte.

Each row is in alpaca format::

    {"instruction": "...", "input": "<listing>", "output": "<json string>"}

where ``output`` is a single-line JSON object with exactly the keys
``brand, product, category, color, price`` in that order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
N_TRAIN = 400
N_TEST = 60
MAX_WORDS = 30  # listings are kept strictly shorter than this

INSTRUCTION = "Extract the product as JSON with keys brand, product, category, color, price."

# Invented brand names. None of them contains a color word or a product noun,
# so every field can only be read from one place in the listing.
BRANDS = [
    "Acme", "Northwind", "Orbit", "Zephyra", "Lumo", "Kestrel", "Brightfield",
    "Pinecrest", "Vantor", "Quillon", "Solenne", "Tidewater", "Halvard",
    "Nimbus", "Corvex", "Maplewood", "Fennick", "Auralis", "Stonebrook", "Velora",
]

# category -> (price range in whole dollars, product nouns). Every product
# noun belongs to exactly one category, so the category is inferable from it.
CATALOG = {
    "electronics": ((12, 320), [
        "wireless mouse", "bluetooth speaker", "usb-c charger",
        "mechanical keyboard", "noise-cancelling headphones", "smartwatch",
        "webcam", "power bank",
    ]),
    "clothing": ((8, 140), [
        "cotton t-shirt", "hoodie", "rain jacket", "wool scarf",
        "denim jacket", "baseball cap", "knit beanie", "linen shirt",
    ]),
    "kitchen": ((6, 180), [
        "stainless steel kettle", "chef's knife", "cutting board",
        "coffee grinder", "frying pan", "blender", "mixing bowl set", "toaster",
    ]),
    "sports": ((5, 150), [
        "yoga mat", "tennis racket", "cycling helmet", "dumbbell set",
        "soccer ball", "jump rope", "hiking backpack", "resistance bands",
    ]),
    "home": ((7, 210), [
        "table lamp", "throw pillow", "bath towel", "scented candle",
        "wall clock", "area rug", "curtain set", "storage basket",
    ]),
    "toys": ((4, 90), [
        "building block set", "plush bear", "toy car", "jigsaw puzzle",
        "kite", "rubber duck", "dollhouse", "toy robot",
    ]),
    "office": ((3, 260), [
        "desk organizer", "stapler", "notebook", "ballpoint pen set",
        "desk chair", "filing cabinet", "whiteboard", "letter tray",
    ]),
    "garden": ((5, 170), [
        "garden hose", "watering can", "pruning shears", "plant pot",
        "bird feeder", "garden gloves", "patio umbrella", "compost bin",
    ]),
}

COLORS = [
    "black", "white", "silver", "navy blue", "red", "forest green", "gray",
    "beige", "matte black", "rose gold", "orange", "ivory", "olive", "teal",
    "charcoal", "yellow", "purple", "pink", "brown", "sky blue",
]

# Listing templates. Placeholders: {brand} {product} {color} {price}
# {a_color} ("a"/"an" + color), {a_product}, {Category} (capitalised category).
# Color and product never start a sentence, so they appear in the text exactly
# as they appear in the output.
TEMPLATES = [
    "Brand new {brand} {product} in {color}, only {price}!",
    "For sale: {color} {product} by {brand}. Price {price}.",
    "{Category} essential — the {brand} {product} ({color}), {price}",
    "{brand} {product}, {color}, {price}. Barely used, great condition.",
    "Selling my {color} {product} from {brand} — asking {price}, pickup only.",
    "Just in: {brand}'s {color} {product} for {price}. Limited stock!",
    "{price} gets you {a_color} {product} by {brand}. Ships free.",
    "Looking for a new {product}? The {brand} one in {color} is {price} today.",
    "{brand} | {product} | color: {color} | {price}",
    "Great gift idea: {a_color} {product} made by {brand}, now {price}.",
    "Price drop! {brand} {product} ({color}) down to {price}.",
    "Color: {color}. Item: {product}. Brand: {brand}. Price: {price}.",
    "Anyone need {a_product}? Mine is {color}, made by {brand}. Yours for {price}.",
    "New arrival from {brand}: {a_color} {product}. Yours for just {price}.",
    "Moving sale — {brand} {product} in {color}. {price} or best offer.",
    "Hardly used {color} {product} ({brand}), selling for {price}.",
]

CENTS_CHOICES = [99, 99, 95, 49, 50, 0, 0, 0, 25, 75, None]  # None: any cents


def article(word: str) -> str:
    """Prefix "a"/"an" ("usb-c" is read "you-ess-bee", so it takes "a")."""
    vowel_sound = word[0] in "aeiou" and not word.startswith("usb")
    return ("an " if vowel_sound else "a ") + word


def make_price(rng: random.Random, lo: int, hi: int) -> tuple[str, int | float]:
    """Return (price as written in the listing, price as a JSON number)."""
    dollars = rng.randint(lo, hi)
    cents = rng.choice(CENTS_CHOICES)
    if cents is None:
        cents = rng.randint(1, 99)
    if cents == 0:
        # Whole prices are written either as "24" or "24.00".
        amount = str(dollars) if rng.random() < 0.7 else f"{dollars}.00"
        value: int | float = dollars
    else:
        amount = f"{dollars}.{cents:02d}"
        value = round(dollars + cents / 100, 2)
    fmt = rng.choice(["${}", "{} USD", "USD {}", "{} dollars"])
    return fmt.format(amount), value


def make_row(rng: random.Random) -> dict:
    category = rng.choice(sorted(CATALOG))
    (lo, hi), products = CATALOG[category]
    product = rng.choice(products)
    brand = rng.choice(BRANDS)
    color = rng.choice(COLORS)
    price_text, price = make_price(rng, lo, hi)
    template = rng.choice(TEMPLATES)
    listing = template.format(
        brand=brand, product=product, color=color, price=price_text,
        a_color=article(color), a_product=article(product),
        Category=category.capitalize(),
    )
    record = {
        "brand": brand,
        "product": product,
        "category": category,
        "color": color,
        "price": price,
    }
    return {
        "instruction": INSTRUCTION,
        "input": listing,
        "output": json.dumps(record, ensure_ascii=False),
    }


def generate(seed: int = SEED, n_train: int = N_TRAIN, n_test: int = N_TEST):
    """Return (train_rows, test_rows).

    Rows are drawn i.i.d. from one distribution; a row is kept only if both its
    listing text and its target record are new. The first ``n_train`` kept rows
    form the training split and the next ``n_test`` the test split, so no
    listing (and no brand/product/color/price combination) is in both.
    """
    rng = random.Random(seed)
    seen_inputs: set[str] = set()
    seen_outputs: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_test:
        row = make_row(rng)
        if len(row["input"].split()) >= MAX_WORDS:
            continue
        if row["input"] in seen_inputs or row["output"] in seen_outputs:
            continue
        seen_inputs.add(row["input"])
        seen_outputs.add(row["output"])
        rows.append(row)
    return rows[:n_train], rows[n_train:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    out_dir = Path(__file__).resolve().parent
    train, test = generate()
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "test.jsonl", test)
    print(f"wrote {len(train)} rows to {out_dir / 'train.jsonl'}")
    print(f"wrote {len(test)} rows to {out_dir / 'test.jsonl'}")


if __name__ == "__main__":
    main()
