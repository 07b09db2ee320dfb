"""Greedy decoding over one KV cache whose rows join and leave between steps (continuous batching).

The engine's worker owns one `RunningBatch`. Requests that join at the same step are prefilled
together (left-padded, each at its own positions, as `generate` runs a padded batch; a request
joining alone is prefilled unpadded, exactly as `generate` runs it alone), and their cache is
then merged into the running cache, left-padded with masked zeros to the common length. Each
step feeds every row's last token, with `position_ids` counted from each row's own attention
mask, so a row sees exactly its own tokens at its own positions whatever else runs beside it. A
finished row leaves at once (`DynamicCache.batch_select_indices`), and the columns every
remaining row masks are cut off, so the cache never grows past the longest live row.

Only the public cache API is used: `DynamicCache(ddp_cache_data=...)`, its layers' `keys` and
`values` (batch, heads, length, head_dim) and `batch_select_indices`. Models whose cache layers are
not plain `DynamicLayer`s (sliding windows, linear attention) and generation configs that change
greedy scores (a repetition penalty, suppressed tokens) are reported unsupported, and the engine
serves them with static batches through `generate`.
"""

from __future__ import annotations

__all__ = ["Row", "RunningBatch", "Prefilled", "supports_continuous", "cache_argument"]

# Generation-config fields that change greedy decoding, with their do-nothing values: our loop
# takes the argmax of the raw logits, so it stays equal to `generate` only where they are unset.
_NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
            "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
            "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
            "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "min_new_tokens": (None, 0),
            "min_length": (None, 0), "sequence_bias": (None,), "exponential_decay_length_penalty": (None,),
            "renormalize_logits": (None, False), "guidance_scale": (None, 1.0, 1)}


def cache_argument(model) -> str | None:
    """The name under which `model`'s forward takes its KV cache: `cache` in newer transformers 5
    releases, `past_key_values` in earlier ones (which would silently ignore `cache`, decoding
    without the earlier tokens). None when the forward names neither."""
    import inspect

    parameters = inspect.signature(type(model).forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def supports_continuous(model) -> str | None:
    """None when `model` (a plain transformers causal LM) can decode in a `RunningBatch`, else why not."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only transformers model"
    if cache_argument(model) is None:
        return "its forward takes no cache argument this engine knows"
    try:
        layers = DynamicCache(config=config).layers
    except Exception as e:  # a config the cache cannot read
        return f"its cache layout is unknown ({e})"
    if any(type(layer) is not DynamicLayer for layer in layers):
        return "its cache has sliding-window or recurrent layers"
    generation = getattr(model, "generation_config", None)
    for name, neutral in _NEUTRAL.items():
        if getattr(generation, name, None) not in neutral:
            return f"its generation config sets {name}"
    return None


class RunningBatch:
    """The tensors of the rows decoding together: their KV cache, attention mask and last tokens.

    Row order is the order rows joined in; `leave` keeps the others' order. The caller keeps
    whatever it needs per row (the request, its tokens so far) in a list of the same order."""

    def __init__(self, model):
        self.config = model.config  # the base model's config: the cache layout
        self.cache_arg = cache_argument(model)  # the forward's name for the cache
        self.cache = None  # DynamicCache over every row, or None with no rows
        self.mask = None  # (B, L) long: 1 where a row has a token, 0 for its left padding
        self.last = None  # (B,) long: each row's latest token, the next step's input

    @property
    def rows(self) -> int:
        return 0 if self.last is None else int(self.last.shape[0])

    def prefill(self, model, prompts: list[list[int]], device,
                suppress: list[list[int] | None] | None = None, **kwargs) -> "Prefilled":
        """The prompts of the requests joining now, together through `model` (set to their
        adapters; `kwargs` go to the forward): left-padded, each row at its own positions
        counted from its own first token, as `generate` runs a padded batch. Returns their cache
        and each one's first greedy token (row i never one of `suppress[i]`); `join` adds them."""
        import torch
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{self.cache_arg: cache}, **kwargs)
        return Prefilled(cache, mask, _greedy(out.logits, suppress).tolist())

    def join(self, new: "Prefilled", keep: list[int]) -> None:
        """Adds the rows `keep` of a prefill below the running rows (in that order); whichever
        part is shorter is padded on the left with masked zeros."""
        import torch
        from transformers import DynamicCache

        cache, mask = new.cache, new.mask
        token = torch.tensor([new.tokens[i] for i in keep], dtype=torch.long, device=mask.device)
        if len(keep) < mask.shape[0]:
            index = torch.tensor(keep, dtype=torch.long, device=mask.device)
            cache.batch_select_indices(index)
            mask = mask[index]
            cache, mask = _trim(cache, mask)
        if self.cache is None:
            self.cache, self.mask, self.last = cache, mask, token
            return
        width = max(self.mask.shape[1], mask.shape[1])
        merged = []
        for old, added in zip(self.cache.layers, cache.layers):
            merged.append((torch.cat([_pad_left(old.keys, width), _pad_left(added.keys, width)]),
                           torch.cat([_pad_left(old.values, width), _pad_left(added.values, width)])))
        self.cache = DynamicCache(ddp_cache_data=merged)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        self.last = torch.cat([self.last, token])

    def step(self, model, suppress: list[list[int] | None] | None = None, **kwargs) -> list[int]:
        """One token for every row (greedy), row i never one of `suppress[i]` (its stop tokens
        while it is under its `min_tokens`); `kwargs` go to the forward (e.g. `adapter_names`)."""
        import torch

        ones = torch.ones((self.rows, 1), dtype=torch.long, device=self.mask.device)
        # A row's position is the number of its own tokens so far, whatever padding precedes them.
        positions = self.mask.sum(dim=1, keepdim=True)  # (B, 1)
        self.mask = torch.cat([self.mask, ones], dim=1)  # (B, L + 1)
        out = model(input_ids=self.last[:, None], attention_mask=self.mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1, **{self.cache_arg: self.cache}, **kwargs)
        self.last = _greedy(out.logits, suppress)  # (B,)
        return self.last.tolist()

    def leave(self, keep: list[int]) -> None:
        """Keeps the rows at indices `keep` (in order) and drops the others, then cuts the
        leading columns that every remaining row masks."""
        import torch

        if len(keep) == self.rows:
            return
        if not keep:
            self.cache = self.mask = self.last = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last = self.mask[index], self.last[index]
        self.cache, self.mask = _trim(self.cache, self.mask)


class Prefilled:
    """The requests `RunningBatch.prefill` ran: their cache, attention mask and first tokens."""

    def __init__(self, cache, mask, tokens: list[int]):
        self.cache, self.mask, self.tokens = cache, mask, tokens


def _greedy(logits, suppress: list[list[int] | None] | None):
    """Each row's greedy next token from the last position of `logits` (B, T, V), never one of
    the row's `suppress` tokens."""
    last = logits[:, -1].float()  # (B, V)
    for row, tokens in enumerate(suppress or ()):
        if tokens:
            last[row, tokens] = float("-inf")
    return last.argmax(dim=-1)


def _trim(cache, mask):
    """`cache` and `mask` without the leading columns that every row masks."""
    from transformers import DynamicCache

    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if not start:
        return cache, mask
    return (DynamicCache(ddp_cache_data=[(layer.keys[:, :, start:], layer.values[:, :, start:])
                                         for layer in cache.layers]), mask[:, start:])


def _pad_left(t, width: int):
    """`t` (B, ..., L, D) or a mask (B, L) padded with zeros on the left of its length axis."""
    import torch.nn.functional as F

    missing = width - (t.shape[-1] if t.dim() == 2 else t.shape[-2])
    if missing == 0:
        return t
    return F.pad(t, (missing, 0)) if t.dim() == 2 else F.pad(t, (0, 0, missing, 0))


class Row:
    """One request in a `RunningBatch`: its tokens so far and the rules that end it.

    A row ends on one of its stop token ids, at its `max_tokens`, when its client has gone or its
    deadline has passed, or when its text shows one of its stop strings (`RowStops`, one row).
    A streamed row hands each new piece of text to `on_text` as it is decoded."""

    def __init__(self, job, tokenizer, stops: list[int], version: str | None):
        from .decoding import RowStops, StreamDecoder

        self.job, self.tokenizer, self.stops, self.version = job, tokenizer, set(stops), version
        self.adapter: str | None = None  # its PEFT adapter name in a mixed batch ("__base__": none)
        self.active = None  # what it was prefilled with (`holders.Active`)
        self.ids: list[int] = []
        self.criteria = RowStops(0, [job.cancelled], [job.deadline], job.params.stop, tokenizer)
        self.decoder = StreamDecoder(tokenizer, job.params.stop) if job.on_text is not None else None

    def feed(self, token: int) -> bool:
        """Takes the row's next token; True when the row is done."""
        import torch

        self.ids.append(token)
        if self.decoder is not None and token not in self.stops:
            piece = self.decoder.feed([token])
            if piece:
                self.job.on_text(piece)
        return (token in self.stops or len(self.ids) >= self.job.params.max_tokens
                or bool(self.criteria(torch.tensor([self.ids]), None)[0]))

    def suppressed(self) -> list[int] | None:
        """The tokens the row may not take next: its stop tokens while under its `min_tokens`."""
        return sorted(self.stops) if len(self.ids) < self.job.params.min_tokens else None

    def close_stream(self) -> None:
        if self.decoder is not None:
            tail = self.decoder.flush()
            if tail:
                self.job.on_text(tail)
