"""Transfer learning: a frozen pretrained backbone + a new classification head.

The classic recipe of Howard & Ruder 2018 ("Universal Language Model Fine-tuning for Text
Classification", arXiv:1801.06146) and Radford et al. 2018 (GPT-1, sec. 3.2): the pretrained
decoder reads the text, its hidden state at the last token goes through a new linear layer with
one output per label. Optionally LoRA adapts the backbone too (Hu et al. 2021). Trains on
`text` + `label` rows; validation reports accuracy and macro-F1.

Artifact: `head.safetensors` (the score matrix) + `head_config.json` (labels), plus a PEFT
directory `lora/` when LoRA is on. `merge` gives a transformers *ForSequenceClassification
model, which `affina export --merged` writes as a plain HF directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from ._chat_text import ChatLayout
from ._peft import target_list
from .base import CLASSIFY, Method, Sharing, register

__all__ = ["HeadMethodConfig", "HeadMethod", "ClassExample", "ClassCollator"]

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head_config.json"


@dataclass
class HeadMethodConfig:
    labels: list[str] = field(default_factory=list, metadata={
        "help": "The label set, in output order; empty: every label in the training data, sorted."})
    lora: bool = field(default=False, metadata={
        "help": "Also adapt the backbone with LoRA (Hu et al. 2021) instead of freezing it."})
    r: int = field(default=8, metadata={"help": "LoRA rank (with lora=true)."})
    alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator (with lora=true)."})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (with lora=true)."})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "Backbone linear layers LoRA adapts (with lora=true)."})

    def validate(self) -> None:
        if self.lora and self.r < 1:
            raise ConfigError(f"method.r must be >= 1, got {self.r}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("method.labels has duplicates")


@dataclass
class ClassExample:
    input_ids: list[int]
    label: int
    source: str = ""
    line: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


class ClassCollator:
    """Right-padded input_ids + attention_mask, one integer label per row."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of  # a few widths (train.cuda_graphs)

    def __call__(self, features: list[ClassExample]) -> dict:
        import torch

        from ..data.packing import padded_width

        width = padded_width(max(len(f) for f in features), self.pad_to_multiple_of)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            ids[row, :len(f)] = torch.tensor(f.input_ids)
            mask[row, :len(f)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([f.label for f in features], dtype=torch.long)}


def _tokenize(records, labels: list[str], tokenizer, max_length: int):
    from ..data.tokenize import TokenizeStats

    index = {label: i for i, label in enumerate(labels)}
    stats, out = TokenizeStats(), []
    for r in records:
        if r.label not in index:
            raise DataError(f"label {r.label!r} is not in method.labels ({', '.join(labels)})",
                            source=r.source, line=r.line, field="label")
        ids = tokenizer(r.text, add_special_tokens=False)["input_ids"]
        stats.examples += 1
        stats.truncated += len(ids) > max_length
        ids = ids[-max_length:]  # keep the end: the last token is the one classified
        stats.lengths.append(len(ids))
        stats.loss_tokens += 1
        out.append(ClassExample(ids, index[r.label], r.source, r.line))
    return out, stats


class HeadMethod(Method):
    name = "head"
    description = "Frozen backbone + new classification head on text+label data (optionally + LoRA)."
    config_class = HeadMethodConfig
    artifact_kind = "adapter"
    task = CLASSIFY

    def prepare_data(self, cfg: HeadMethodConfig, data_cfg, tokenizer, seed: int):
        from ..data.loading import load_records, split_records
        from ..data.prepare import PreparedData

        if data_cfg.mix:  # class balance is the label set's business, not a file mix's
            raise ConfigError("method head does not take data.mix; list its files in data.train")
        loaded = load_records(data_cfg.train, format=data_cfg.format, dedupe=data_cfg.dedupe)
        records, files, warnings = loaded.records, [dict(f, role="train") for f in loaded.files], list(loaded.warnings)
        if records and records[0].kind != "label":
            raise DataError("method head trains a classifier and needs text+label rows "
                            "(e.g. {\"text\": ..., \"label\": ...})", source=records[0].source,
                            line=records[0].line)
        if data_cfg.validation:
            val_loaded = load_records(data_cfg.validation, format=data_cfg.format, dedupe=data_cfg.dedupe)
            train_records, val_records = records, val_loaded.records
            files += [dict(f, role="validation") for f in val_loaded.files]
        else:
            train_records, val_records = split_records(records, data_cfg.val_fraction, seed)
        labels = list(cfg.labels) or sorted({r.label for r in train_records})
        if len(labels) < 2:
            raise DataError(f"a classifier needs at least two labels, found {labels}",
                            source=data_cfg.train[0])
        train, train_stats = _tokenize(train_records, labels, tokenizer, data_cfg.max_length)
        val, val_stats = _tokenize(val_records, labels, tokenizer, data_cfg.max_length)
        return PreparedData(train_records, val_records, train, val, train_stats, val_stats, files,
                            warnings, labels=labels, source_fingerprint=loaded.source_fingerprint)

    def resolve_config(self, cfg: HeadMethodConfig, data) -> HeadMethodConfig:
        """The label set the data gave, in output order (recorded with the run)."""
        import dataclasses

        return dataclasses.replace(cfg, labels=list(data.labels or cfg.labels))

    def sharing(self, cfg: HeadMethodConfig) -> Sharing:
        # A frozen backbone is read, never changed; LoRA on it would inject into the shared base.
        return Sharing.OWN_COPY if cfg.lora else Sharing.WRAPS_BASE

    def collator(self, cfg: HeadMethodConfig, tokenizer):
        return ClassCollator(tokenizer.pad_token_id)

    def compute_metrics(self, cfg: HeadMethodConfig):
        from .head_model import classification_scores

        def metrics(eval_pred) -> dict[str, float]:
            logits, gold = eval_pred.predictions, eval_pred.label_ids
            return classification_scores(logits.argmax(-1).tolist(), gold.tolist(), len(cfg.labels))
        return metrics

    def _lora_config(self, cfg: HeadMethodConfig):
        from peft import LoraConfig

        # No task type: the adapted module is the bare decoder, not a causal LM.
        return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=target_list(cfg.target_modules))

    def apply(self, model, cfg: HeadMethodConfig):
        from .head_model import SequenceClassifier

        if not cfg.labels:
            raise ConfigError("method head needs its labels: set method.labels or train on text+label data")
        backbone = model.get_decoder()
        for p in backbone.parameters():
            p.requires_grad_(False)
        if cfg.lora:
            from ._peft import apply_peft

            backbone = apply_peft(backbone, self._lora_config(cfg))
        classifier = SequenceClassifier(backbone, model.config.hidden_size, cfg.labels)
        classifier.base_config = model.config
        return classifier

    def attach_data(self, model, cfg: HeadMethodConfig, data, tokenizer):
        """Keep the tokenizer, so the trained classifier answers `generate` with label text."""
        from ..data.tokenize import ensure_chat_template

        ensure_chat_template(tokenizer)
        model.tokenizer, model.layout = tokenizer, ChatLayout(tokenizer)
        return model

    def save(self, model, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"score.weight": model.score.weight.detach().contiguous().cpu()},
                  str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
        lora = hasattr(model.backbone, "peft_config")
        (directory / HEAD_CONFIG).write_text(json.dumps({"labels": model.labels, "lora": lora,
                                                         "pooling": "last_token"}, indent=1))
        if lora:
            model.backbone.save_pretrained(directory / "lora")

    def load(self, base, directory: Path):
        from safetensors.torch import load_file

        from .head_model import SequenceClassifier

        directory = Path(directory)
        if not (directory / HEAD_CONFIG).is_file():
            raise ConfigError(f"{directory}: no {HEAD_CONFIG}; not a classification-head artifact")
        spec = json.loads((directory / HEAD_CONFIG).read_text())
        backbone = base.get_decoder()
        if spec["lora"]:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, directory / "lora")
        model = SequenceClassifier(backbone, base.config.hidden_size, spec["labels"])
        model.base_config = base.config
        device = str(next(base.parameters()).device)
        model.score.load_state_dict({"weight": load_file(str(directory / HEAD_WEIGHTS), device=device)["score.weight"]})
        if (directory / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            from ..data.tokenize import ensure_chat_template

            model.tokenizer = AutoTokenizer.from_pretrained(directory)
            ensure_chat_template(model.tokenizer)
            model.layout = ChatLayout(model.tokenizer)
        return model.eval()

    def merge(self, model):
        """A transformers *ForSequenceClassification model with the same weights (LoRA folded)."""
        from transformers import AutoModelForSequenceClassification

        backbone = model.backbone.merge_and_unload() if hasattr(model.backbone, "peft_config") else model.backbone
        config = model.base_config.__class__.from_dict(model.base_config.to_dict())
        config.num_labels = len(model.labels)
        config.id2label = dict(enumerate(model.labels))
        config.label2id = {label: i for i, label in enumerate(model.labels)}
        if config.pad_token_id is None and model.tokenizer is not None:
            config.pad_token_id = model.tokenizer.pad_token_id  # its pooling finds the last non-pad
        try:
            merged = AutoModelForSequenceClassification.from_config(config)
        except ValueError as e:
            raise ConfigError(f"{type(backbone).__name__} has no sequence-classification class in "
                              f"transformers ({str(e).splitlines()[0]})") from None
        prefix = merged.base_model_prefix
        state = {f"{prefix}.{k}": v for k, v in backbone.state_dict().items()}
        state["score.weight"] = model.score.weight.detach()
        merged.load_state_dict(state, strict=True)
        return merged.to(next(backbone.parameters()).device, next(backbone.parameters()).dtype).eval()


register(HeadMethod())
