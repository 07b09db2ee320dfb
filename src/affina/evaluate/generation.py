"""Batched, deterministic (greedy) generation for evaluation and the `generate` command."""

from __future__ import annotations

import torch

__all__ = ["generate_texts"]


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 128,
                   batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
                   top_p: float = 1.0, seed: int | None = None, stop_ids: list[int] | None = None,
                   progress: bool = False, desc: str = "generating",
                   stats: dict | None = None, on_text=None) -> list[str]:
    """Generate a completion for each already-templated prompt; returns the new text only.
    `stop_ids`: the tokens that end a reply (`data.tokenize.stop_token_ids`, the same rule the
    server uses); default: that rule applied to this model and tokenizer. `seed` seeds sampling.
    `stats`, when given, gets `new_tokens`: tokens generated, each row counted up to and
    including its first end-of-turn token (what a throughput figure should count). `on_text`,
    for one prompt, is called with each new piece of the reply as it is generated (`affina
    chat`); the returned text is the same reply, whitespace-stripped."""
    from ..data.tokenize import stop_token_ids

    from tqdm.auto import tqdm

    from ..ui import progress_bars
    from .streaming import text_streamer

    model.eval()
    device = next(model.parameters()).device
    # Left padding keeps every prompt's last token at the same position, so one batched
    # generate call continues all of them.
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    eos = list(stop_ids) if stop_ids else stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    if on_text is not None and len(prompts) != 1:
        raise ValueError("on_text streams one reply: pass one prompt")
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc,
                          disable=not (progress and progress_bars()),
                          leave=False):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=eos or None)
            if on_text is not None:
                kwargs["streamer"] = text_streamer(tokenizer, on_text)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=None)
                if seed is not None:
                    torch.manual_seed(seed)
            else:  # keep generation_config's sampling defaults from warning under greedy decoding
                kwargs.update(temperature=None, top_p=None, top_k=None)
            out = model.generate(**enc, **kwargs)  # (B, T_prompt + T_new)
            new = out[:, enc["input_ids"].shape[1]:]  # (B, T_new)
            if stats is not None:
                stats["new_tokens"] = stats.get("new_tokens", 0) + _count_new_tokens(new, eos)
            outputs += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    finally:
        tokenizer.padding_side = old_side
    return outputs


def _count_new_tokens(new: torch.Tensor, eos: list[int]) -> int:
    if not eos or new.numel() == 0:
        return new.numel()
    is_end = torch.isin(new, torch.tensor(eos, device=new.device))  # (B, T_new)
    # Rows that ended early are padded after their end token; count through the first end.
    through_end = is_end.int().argmax(-1) + 1  # (B,)
    lengths = torch.where(is_end.any(-1), through_end, torch.full_like(through_end, new.shape[1]))
    return int(lengths.sum())
