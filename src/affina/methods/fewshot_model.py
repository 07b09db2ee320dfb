"""A causal LM that places k demonstrations before each prompt's last user message.

It wraps the base model and rewrites the chat-templated prompts it is given, so `generate`,
`chat`, evaluation and serving use a few-shot run exactly like a trained one. Demonstrations are
ordinary user/assistant turns rendered with the tokenizer's own chat template.
"""

from __future__ import annotations

import torch
from torch import nn

from ._chat_text import ChatLayout

__all__ = ["FewShotModel"]


class FewShotModel(nn.Module):
    def __init__(self, lm, tokenizer, pool: list[tuple[str, str]], k: int, selection: str,
                 fixed: list[int], pool_embeddings: torch.Tensor | None = None, embedder=None):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.layout = ChatLayout(tokenizer)
        self.pool, self.k, self.selection, self.fixed = pool, k, selection, fixed
        self.pool_embeddings, self.embedder = pool_embeddings, embedder

    @property
    def config(self):
        return self.lm.config

    @property
    def generation_config(self):
        return self.lm.generation_config

    def choose(self, queries: list[str]) -> list[list[int]]:
        """Indices into the pool for each query: the same k for `random`, the k most similar
        (cosine on unit embeddings), least similar first so the closest sits next to the query,
        for `nearest`."""
        if self.selection == "random" or not queries:
            return [list(self.fixed) for _ in queries]
        q = self.embedder.encode(queries)  # (N, D)
        sims = q @ self.pool_embeddings.T  # (N, P)
        top = sims.topk(min(self.k, sims.shape[1]), dim=1).indices.tolist()
        return [list(reversed(row)) for row in top]

    def _with_demos(self, prompts: list[str]) -> tuple[list[str], list[int]]:
        """The prompts with demonstrations inserted, and the character offset of each insertion."""
        parts = [self.layout.split(p) for p in prompts]
        picks = self.choose([user for _, user, _ in parts])
        out, at = [], []
        for (before, user, after), idx in zip(parts, picks):
            demos = self.layout.turns([self.pool[i] for i in idx])
            out.append(before + demos + self.layout.header + user + after if user else before + user + after)
            at.append(len(before))
        return out, at

    def _real_ids(self, input_ids, attention_mask, row: int) -> list[int]:
        ids = input_ids[row]
        return (ids if attention_mask is None else ids[attention_mask[row].bool()]).tolist()

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **kwargs):
        tok = self.tokenizer
        prompts = [tok.decode(self._real_ids(input_ids, attention_mask, i), skip_special_tokens=False)
                   for i in range(input_ids.shape[0])]
        rewritten, _ = self._with_demos(prompts)
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(rewritten, return_tensors="pt", padding=True, add_special_tokens=False).to(input_ids.device)
        finally:
            tok.padding_side = side
        out = self.lm.generate(**enc, **kwargs)  # (B, T_demo_prompt + T_new)
        return torch.cat([input_ids, out[:, enc["input_ids"].shape[1]:]], dim=1)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        """Logits (B, T, V) for the given positions, computed with the demonstrations in context:
        each row's tokens are split where the last user turn starts, the demonstration tokens go
        in between, and the logits of the original positions are gathered back."""
        tok = self.tokenizer
        rows, keep = [], []
        for i in range(input_ids.shape[0]):
            ids = self._real_ids(input_ids, attention_mask, i)
            text = tok.decode(ids, skip_special_tokens=False)
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            (new_text,), (cut,) = self._with_demos([text])
            demo_len = len(new_text) - len(text)
            if enc["input_ids"] != ids or demo_len == 0:  # not a round-trip: leave the row as is
                rows.append(ids)
                keep.append(list(range(len(ids))))
                continue
            k = next((j for j, (s, _) in enumerate(enc["offset_mapping"]) if s >= cut), len(ids))
            demo_ids = tok(new_text[cut:cut + demo_len], add_special_tokens=False)["input_ids"]
            rows.append(ids[:k] + demo_ids + ids[k:])
            keep.append(list(range(k)) + [j + len(demo_ids) for j in range(k, len(ids))])
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        batch = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=input_ids.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=input_ids.device)
        logits = self.lm(input_ids=batch, attention_mask=mask, use_cache=False).logits  # (B, W, V)
        out = logits.new_zeros((input_ids.shape[0], input_ids.shape[1], logits.shape[-1]))  # (B, T, V)
        for i, positions in enumerate(keep):
            out[i, :len(positions)] = logits[i, positions]
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]).float(),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        from transformers.modeling_outputs import CausalLMOutput

        return CausalLMOutput(loss=loss, logits=out)
