"""A small document set and a knowledge base built from it with the real embedding model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TOPICS = [
    ("battery", "The battery lasts about eight hours of continuous use and charges in ninety minutes."),
    ("warranty", "The warranty covers manufacturing defects for two years from the date of purchase."),
    ("reset", "To reset the device, hold the red button for five seconds until the light blinks."),
    ("cleaning", "Clean the lens with a dry microfibre cloth; never use alcohol or solvents."),
    ("shipping", "Orders ship within three business days; express delivery arrives the next day."),
    ("firmware", "Firmware updates install over Wi-Fi at night; the device restarts afterwards."),
    ("pairing", "Pair the remote by pressing both arrow keys together for three seconds."),
    ("storage", "Store the device between five and thirty degrees Celsius, away from moisture."),
    ("returns", "Unused products can be returned within thirty days for a full refund."),
    ("noise", "A clicking noise during start-up is the fan calibrating and is normal."),
]


def write_docs(root: Path) -> Path:
    """A few Markdown/text/HTML/JSONL files, ~24 chunks at 12-word character chunks."""
    docs = root / "docs"
    docs.mkdir(parents=True)
    for name, text in TOPICS[:4]:
        (docs / f"{name}.md").write_text(f"# {name.title()}\n\n{text}\n\nSee also the {name} page. Ünïcode ✓.\n")
    for name, text in TOPICS[4:7]:
        (docs / f"{name}.txt").write_text(f"{text}\n")
    (docs / "faq.html").write_text(
        "<html><head><title>FAQ</title><style>p{color:red}</style></head><body>"
        f"<h1>FAQ</h1><p>{TOPICS[7][1]}</p><script>var hidden = 1;</script></body></html>")
    (docs / "more.jsonl").write_text("".join(json.dumps({"id": n, "text": t}) + "\n" for n, t in TOPICS[8:]))
    return docs


@pytest.fixture()
def rag_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AFFINA_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="module")
def built_kb(tmp_path_factory):
    """(AFFINA_HOME, docs dir, index name) of a knowledge base over `write_docs`; read-only."""
    import os

    from affina.rag import ChunkSettings, update_index

    root = tmp_path_factory.mktemp("kb")
    docs = write_docs(root)
    old = os.environ.get("AFFINA_HOME")
    os.environ["AFFINA_HOME"] = str(root / "home")
    try:
        update_index([docs], "manual", ChunkSettings(size=80, overlap=20, unit="chars"), progress=False)
        yield root / "home", docs, "manual"
    finally:
        if old is None:
            os.environ.pop("AFFINA_HOME", None)
        else:
            os.environ["AFFINA_HOME"] = old
