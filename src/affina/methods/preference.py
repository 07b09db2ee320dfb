"""Preference tuning: DPO, ORPO and KTO, each a LoRA adapter trained with TRL's trainer.

- DPO: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
  Reward Model" (arXiv:2305.18290). Pairs; a reference model.
- ORPO: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
  (arXiv:2403.07691). Pairs; no reference: SFT loss on chosen plus an odds-ratio term.
- KTO: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
  (arXiv:2402.01306). Unpaired desirable/undesirable replies (pairs are split into two rows).

The reference of DPO and KTO is the adapter's own base with the adapter disabled: TRL does that
when handed a PEFT model and `ref_model=None`, so no second copy of the model is loaded. The
artifact is a plain PEFT LoRA directory, served and merged like `lora`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from ..errors import ConfigError, DataError
from .base import PREFER, register
from .lora import LoraMethod, LoraMethodConfig

__all__ = ["PreferenceConfig", "DpoMethod", "OrpoMethod", "KtoMethod"]


@dataclass
class PreferenceConfig(LoraMethodConfig):
    beta: float = field(default=0.1, metadata={
        "help": "TRL's `beta`. DPO/KTO: strength of the pull towards the reference (β in Rafailov "
                "et al. 2023 eq. 7; Ethayarajh et al. 2024 eq. 8). ORPO: weight λ of the odds-ratio "
                "term (Hong et al. 2024 eq. 6)."})

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"method.beta must be > 0, got {self.beta}")


@functools.cache
def _prepared_class():
    # Defined on first use: the data modules load lazily, as in every method module.
    from ..data.prepare import PreparedData

    @dataclass
    class PreferenceData(PreparedData):
        max_length: int = 1024  # TRL tokenises the rows itself and truncates to this

    return PreferenceData


def _trl_config(config_class, args, **extra):
    """The recipe's TrainingArguments as a TRL config: TRL's configs extend TrainingArguments, so
    every value carries over; `*_token` entries of `to_dict` are redacted placeholders."""
    names = {f.name for f in dataclasses.fields(config_class) if f.init}
    values = {k: v for k, v in args.to_dict().items() if k in names and not k.endswith("_token")}
    values.update({k: v for k, v in extra.items() if k in names})
    return config_class(**values)


class PreferenceBase(LoraMethod):
    """What DPO, ORPO and KTO share: LoRA, preference data, a TRL trainer."""

    task = PREFER
    config_class = PreferenceConfig
    needs_pairs = True
    uses_reference = True

    def trl_classes(self):
        """(config class, trainer class) from TRL."""
        raise NotImplementedError

    def trl_options(self) -> dict:
        """Values the method's TRL config needs beyond the recipe's (dropped if TRL lacks the field)."""
        return {}

    def rows(self, record) -> list[dict]:
        """TRL's conversational rows for one record."""
        return [{"prompt": record.prompt, "chosen": [{"role": "assistant", "content": record.chosen}],
                 "rejected": [{"role": "assistant", "content": record.rejected}]}]

    def prepare_data(self, cfg, data_cfg, tokenizer, seed: int):
        from ..data.loading import load_records, split_records
        from ..data.mixing import load_mix
        from ..data.prepare import _absolute
        from ..data.templates import configure_chat_template
        from ..data.tokenize import TokenizeStats, tokenize_record

        if data_cfg.mix:
            loaded, mix = load_mix(data_cfg.mix_entries(), size=data_cfg.mix_size, seed=seed,
                                   format=data_cfg.format, dedupe=data_cfg.dedupe)
        else:
            loaded, mix = load_records(data_cfg.train, format=data_cfg.format, dedupe=data_cfg.dedupe), None
        files = [_absolute(f, "mix" if mix else "train") for f in loaded.files]
        warnings = list(loaded.warnings)
        if data_cfg.validation:
            val_loaded = load_records(data_cfg.validation, format=data_cfg.format, dedupe=data_cfg.dedupe)
            train_records, val_records = loaded.records, val_loaded.records
            files += [_absolute(f, "validation") for f in val_loaded.files]
            warnings += val_loaded.warnings
        else:
            train_records, val_records = split_records(loaded.records, data_cfg.val_fraction, seed)
        for record in train_records + val_records:
            if record.kind != "preference":
                raise DataError(f"{self.name} trains on preference data (prompt, chosen, rejected"
                                f"{'' if self.needs_pairs else '; or prompt, completion, label'}); "
                                f"this row is {record.kind} data", source=record.source, line=record.line)
            if self.needs_pairs and not record.paired:
                raise DataError(f"{self.name} needs pairs (prompt, chosen, rejected); this is an unpaired "
                                "(KTO) row: use method.name=kto", source=record.source, line=record.line)
        origin = configure_chat_template(tokenizer, data_cfg.chat_template, data_cfg.system_prompt)

        def stats_of(records):
            # Lengths of prompt + one reply as affina renders it: for the run record and warnings.
            stats = TokenizeStats(examples=len(records))
            for r in records:
                ex = tokenize_record(r, tokenizer, data_cfg.max_length)
                stats.lengths.append(len(ex))
                stats.truncated += ex.truncated
                stats.loss_tokens += sum(t != -100 for t in ex.labels)
            return stats

        train_stats, val_stats = stats_of(train_records), stats_of(val_records)
        if train_stats.truncated:
            warnings.append(f"{train_stats.truncated} training examples longer than data.max_length="
                            f"{data_cfg.max_length} are truncated")
        train = [row for r in train_records for row in self.rows(r)]
        val = [row for r in val_records for row in self.rows(r)]
        return _prepared_class()(train_records, val_records, train, val, train_stats, val_stats, files,
                                 warnings, origin.startswith("fallback"), None, template_origin=origin,
                                 mix=mix, source_fingerprint=loaded.source_fingerprint,
                                 max_length=data_cfg.max_length)

    def build_trainer(self, model, tokenizer, data, args, callbacks, cfg):
        from datasets import Dataset

        config_class, trainer_class = self.trl_classes()
        trl_args = _trl_config(config_class, args, beta=cfg.beta, max_length=data.max_length,
                               **self.trl_options())
        extra = {"ref_model": None} if self.uses_reference else {}
        trainer = trainer_class(model=model, args=trl_args, train_dataset=Dataset.from_list(data.train),
                                eval_dataset=Dataset.from_list(data.val) if data.val else None,
                                processing_class=tokenizer, callbacks=callbacks, **extra)
        # Recent TRL copies the adapter into a frozen "ref" adapter when given a PEFT model. A fresh
        # LoRA adapter is zero (B = 0), so that copy computes exactly the base: dropping it makes
        # TRL disable the adapter instead, and keeps the saved artifact one plain adapter.
        peft_config = getattr(trainer.model, "peft_config", {})
        if "ref" in peft_config and "default" in peft_config:
            trainer.model.delete_adapter("ref")
        return trainer

    def report(self, model, cfg) -> dict:
        return {"reference": "the base with the adapter disabled" if self.uses_reference else "none"}


class DpoMethod(PreferenceBase):
    name = "dpo"
    loss_label = "DPO loss: −log σ(β · reward margin)"
    description = "Direct Preference Optimization on chosen/rejected pairs (Rafailov et al. 2023), LoRA via TRL."

    def trl_classes(self):
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer


class OrpoMethod(PreferenceBase):
    name = "orpo"
    loss_label = "ORPO loss: reply NLL + λ · odds-ratio term"
    description = "Odds-ratio preference optimization, no reference model (Hong et al. 2024), LoRA via TRL."
    uses_reference = False

    def trl_classes(self):
        try:  # TRL 1.x moved ORPO to trl.experimental
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        except ImportError:
            from trl import ORPOConfig, ORPOTrainer
        return ORPOConfig, ORPOTrainer


class KtoMethod(PreferenceBase):
    name = "kto"
    loss_label = "KTO loss: 1 − σ(β · (reward − reference point)), weighted"
    description = "Kahneman-Tversky Optimization on desirable/undesirable replies (Ethayarajh et al. 2024), LoRA via TRL."
    needs_pairs = False

    def rows(self, record) -> list[dict]:
        # A pair gives one desirable and one undesirable row (Ethayarajh et al. 2024, sec. 4).
        return [{"prompt": record.prompt, "completion": [{"role": "assistant", "content": reply}], "label": good}
                for reply, good in ((record.chosen, True), (record.rejected, False)) if reply is not None]

    def trl_options(self) -> dict:
        # KTO's KL estimate pairs each row with its neighbour in a fixed-order batch, so TRL refuses
        # random sampling; `prepare_data` keeps the rows in the seeded split's order.
        return {"train_sampling_strategy": "sequential"}

    def trl_classes(self):
        try:
            from trl import KTOConfig, KTOTrainer
        except ImportError:
            from trl.experimental.kto import KTOConfig, KTOTrainer
        return KTOConfig, KTOTrainer


register(DpoMethod())
register(OrpoMethod())
register(KtoMethod())
