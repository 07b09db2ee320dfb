"""docs/methods.md's key reference is generated from the method config classes, and this test
keeps it so. After changing a method's options, regenerate it:

    python -m tests.methods.test_key_reference
"""

from __future__ import annotations

import re
from pathlib import Path

from affina.methods import describe_fields, get_method, method_names

DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"
HEADING = "## Key reference\n"
INTRO = "Generated from the config classes (`affina methods --describe NAME` prints the same).\n"


def reference() -> str:
    parts = [HEADING, "\n", INTRO]
    for name in method_names():
        parts += ["\n", f"### `{name}`\n", "\n", "| key | default | meaning |\n", "|---|---|---|\n"]
        parts += [f"| `{key}` | `{default}` | {meaning} |\n" for key, default, meaning in describe_fields(get_method(name))]
    return "".join(parts)


def _split(text: str) -> tuple[str, str, str]:
    start = text.index(HEADING)
    after = re.search(r"^## ", text[start + len(HEADING):], flags=re.M)
    end = len(text) if after is None else start + len(HEADING) + after.start()
    return text[:start], text[start:end], text[end:]


def test_the_docs_key_reference_is_the_config_classes():
    before, section, after = _split(DOC.read_text())
    assert section.rstrip("\n") == reference().rstrip("\n"), (
        "docs/methods.md's key reference differs from the method config classes; "
        "regenerate it: python -m tests.methods.test_key_reference")


if __name__ == "__main__":
    before, section, after = _split(DOC.read_text())
    DOC.write_text(before + reference() + ("\n" + after if after else ""))
    print(f"wrote the key reference of {DOC}")
