"""DataConfig → tokenised train/validation sets, with the stats and fingerprints a run records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .loading import dataset_fingerprint, load_records, split_records
from .mixing import load_mix
from .packing import PackedRow, pack_examples, packing_efficiency
from .records import Record
from .templates import configure_chat_template
from .tokenize import Example, TokenizeStats, tokenize_records

__all__ = ["PreparedData", "prepare_data"]


@dataclass
class PreparedData:
    train_records: list[Record]
    val_records: list[Record]
    train: list[Example] | list[PackedRow]
    val: list[Example]
    train_stats: TokenizeStats
    val_stats: TokenizeStats
    files: list[dict]
    warnings: list[str] = field(default_factory=list)
    template_fallback: bool = False
    packing: dict | None = None
    labels: list[str] | None = None  # the label set of text+label data, in output order
    source_fingerprint: str | None = None  # all training files' records before split (lineage)
    template_origin: str | None = None  # how the chat template was chosen (data/templates.py)
    mix: list[dict] | None = None  # data.mix: per file its weight, rows and examples drawn

    def summary(self) -> dict:
        """What the run record keeps about its data (lineage)."""
        return {
            "files": self.files,
            "source_fingerprint": self.source_fingerprint,
            "train": {"rows": len(self.train_records), "fingerprint": dataset_fingerprint(self.train_records),
                      **self.train_stats.as_dict()},
            "validation": {"rows": len(self.val_records),
                           "fingerprint": dataset_fingerprint(self.val_records) if self.val_records else None,
                           **self.val_stats.as_dict()},
            "packing": self.packing,
            "chat_template": self.template_origin or ("fallback (ChatML)" if self.template_fallback
                                                      else "tokenizer"),
            "mix": self.mix,
            "warnings": self.warnings,
        }


def _absolute(file_info: dict, role: str) -> dict:
    """Lineage needs paths that still mean something from another working directory."""
    return dict(file_info, path=str(Path(file_info["path"]).resolve()), role=role)


def prepare_data(cfg: DataConfig, tokenizer, seed: int, progress: bool = True) -> PreparedData:
    if not (cfg.train or cfg.mix):
        raise DataError("no training data: set data.train (e.g. data.train=examples/product_json/train.jsonl)")
    mix = None
    if cfg.mix:
        loaded, mix = load_mix(cfg.mix_entries(), size=cfg.mix_size, seed=seed, format=cfg.format,
                               dedupe=cfg.dedupe)
    else:
        loaded = load_records(cfg.train, format=cfg.format, dedupe=cfg.dedupe)
    if loaded.records and loaded.records[0].kind == "preference":
        # Supervised tuning would learn rejected replies as readily as chosen ones.
        raise DataError("this is preference data (prompt with chosen/rejected replies); train it with a "
                        "preference method: method.name=dpo, orpo or kto", source=loaded.files[0]["path"])
    warnings = list(loaded.warnings)
    files = [_absolute(f, "mix" if mix else "train") for f in loaded.files]
    if cfg.validation:
        val_loaded = load_records(cfg.validation, format=cfg.format, dedupe=cfg.dedupe)
        train_records, val_records = loaded.records, val_loaded.records
        warnings += val_loaded.warnings
        files += [_absolute(f, "validation") for f in val_loaded.files]
    else:
        train_records, val_records = split_records(loaded.records, cfg.val_fraction, seed)

    origin = configure_chat_template(tokenizer, cfg.chat_template, cfg.system_prompt)
    train, train_stats = tokenize_records(train_records, tokenizer, cfg.max_length,
                                          cfg.train_on_prompt, progress)
    val, val_stats = tokenize_records(val_records, tokenizer, cfg.max_length, cfg.train_on_prompt,
                                      progress)
    if not train:
        raise DataError("no training example has any token to learn from after truncation; "
                        "raise data.max_length", source=files[0]["path"])
    for name, stats in (("training", train_stats), ("validation", val_stats)):
        if stats.truncated:
            warnings.append(f"{stats.truncated} {name} examples longer than data.max_length="
                            f"{cfg.max_length} were truncated")
        if stats.dropped:
            warnings.append(f"{stats.dropped} {name} examples had no reply left after truncation "
                            "and were dropped")
    packing = None
    if cfg.packing:
        rows = pack_examples(train, cfg.max_length)
        packing = {"rows": len(rows), "examples": len(train),
                   "efficiency": round(packing_efficiency(rows, cfg.max_length), 4)}
        train = rows
    return PreparedData(train_records, val_records, train, val, train_stats, val_stats, files,
                        warnings, origin.startswith("fallback"), packing, template_origin=origin,
                        mix=mix, source_fingerprint=getattr(loaded, "source_fingerprint", None))
