"""Open a run directory or a model spec for inference.

A run directory opens as its method says: the base model loaded as the method trained on it
(e.g. quantised for qlora), the artifact applied by `method.load`, and the tokenizer (with the
chat template) the run was trained with. Registered `NAME@VERSION` references are resolved one
layer up (`affina.govern.registry.resolve_model_ref`), which verifies their files first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import AffinaError
from .record import RunRecord, is_run_dir, read_record

__all__ = ["OpenedModel", "open_model", "is_run_dir", "method_of_record", "run_tokenizer",
           "run_stop_ids"]


@dataclass
class OpenedModel:
    model: object
    tokenizer: object
    ref: str
    record: RunRecord | None
    method: object | None = None  # the run's Method; None for a plain model spec
    stop_ids: list[int] = field(default_factory=list)

    @property
    def task(self):
        from .methods import GENERATE

        return self.method.task if self.method is not None else GENERATE

    def classify(self, texts: list[str], batch_size: int = 16, max_length: int = 512) -> list[str]:
        """The predicted label of each text (runs whose task outputs labels only)."""
        if self.task.output != "label":
            raise AffinaError(f"{self.ref} is a generative model, not a classifier; use generate")
        return self.model.classify(self.tokenizer, list(texts), batch_size=batch_size,
                                   max_length=max_length)


def method_of_record(record: RunRecord):
    """(method, its config) of a run, rebuilt from the record."""
    from .methods import build_method_config, get_method

    method = get_method(record.method.name)
    return method, build_method_config(method, record.method.options)


def open_model(ref: str | Path, *, device=None, dtype=None, base=None) -> OpenedModel:
    """`ref`: a run directory or a model spec. `base`: an already loaded base (LoadedModel) to
    apply a run's artifact to, instead of loading one."""
    from .data.tokenize import ensure_chat_template, stop_token_ids
    from .models import load_model

    ref = str(ref)
    if is_run_dir(ref):
        run_dir = Path(ref)
        record = read_record(run_dir)
        method, cfg = method_of_record(record)
        loaded = base or load_model(record.base_model.spec, device=device, dtype=dtype,
                                    **method.load_options(cfg))
        model = method.load(loaded.model, record.artifact_dir(run_dir))
        model.eval()
        tokenizer = run_tokenizer(record.artifact_dir(run_dir)) or loaded.tokenizer
        ensure_chat_template(tokenizer)
        stops = run_stop_ids(record, tokenizer, loaded.model.generation_config)
        return OpenedModel(model, tokenizer, ref, record, method, stops)
    loaded = base or load_model(ref, device=device, dtype=dtype)
    ensure_chat_template(loaded.tokenizer)
    return OpenedModel(loaded.model, loaded.tokenizer, ref, None, None,
                       stop_token_ids(loaded.tokenizer, loaded.model.generation_config))


def run_stop_ids(record: RunRecord, tokenizer, generation_config) -> list[int]:
    """A run's stop tokens: those recorded when it was trained, else the stop rule
    (`data.tokenize.stop_token_ids`) applied to its tokenizer and base model. The server and
    `affina generate` both call this, so they stop on the same tokens."""
    from .data.tokenize import stop_token_ids

    if record.template is not None and record.template.stop_token_ids:
        return list(record.template.stop_token_ids)
    return stop_token_ids(tokenizer, generation_config)


def run_tokenizer(artifact_dir: Path):
    """The tokenizer saved with the artifact: the chat template the run was trained with."""
    if not (artifact_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifact_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
