"""Log-likelihood scoring for the bias suites, batched through evaluate/'s helpers.

Two shapes of question:

- Which of several sentences, identical up to the group they mention, does the model find more
  likely? (CrowS-Pairs, StereoSet, user probes.) Each sentence is scored as plain text after a
  start token. Under a causal LM the tokens before the first one where the sentences differ
  have the same probability in every variant, so only the tokens from that point to the end
  are scored: the differing words and every later word, whose probability now depends on them.
  This is the causal-LM reading of CrowS-Pairs' method (Nangia et al. 2020), which scores each
  sentence on what the masked LM cannot see in the other. Each sentence ends with EOS.
- Which answer does the model give to a multiple-choice question? (BBQ.) Each option is scored
  as the assistant's reply to the question in the model's chat template (evaluate/preference.py),
  reply tokens and end-of-turn marker, by mean log-probability per token so that longer options
  ("Cannot be determined") are not penalised for their length. The options of one question
  share everything up to the reply, so that prompt runs once and its key/value cache is reused
  for every option (the same numbers as scoring each option whole, about 3x less work).
"""

from __future__ import annotations

import torch

from ..data.tokenize import Example, tokenize_record
from ..data.records import Record
from ..evaluate.loss import sequence_logprobs
from ..evaluate.preference import reply_logprobs

__all__ = ["variant_logprobs", "option_logprobs", "divergent_examples", "shared_prefix_logprobs"]

IGNORE = -100


def _start_id(tokenizer) -> int:
    """The token every sentence is conditioned on: BOS where the tokenizer has one, else EOS
    (the end of a previous document, as GPT-2's <|endoftext|>)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a sentence with")
    return start


def divergent_examples(tokenizer, variants: list[str]) -> list[Example]:
    """One Example per variant sentence with labels on the tokens from the first position at
    which the variants' token ids differ (the common prefix is left unscored)."""
    start, end = _start_id(tokenizer), tokenizer.eos_token_id
    # EOS closes each sentence (as in raw-text training rows), so a variant that is a prefix
    # of another still has a token to be scored on: its end.
    ids = [[start] + tokenizer(text, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
           for text in variants]
    common = 0
    while all(len(x) > common for x in ids) and len({x[common] for x in ids}) == 1:
        common += 1
    # labels[t] is predicted from position t-1 (per_token_loss_sums shifts by one)
    return [Example(x, [IGNORE] * common + x[common:]) for x in ids]


def variant_logprobs(model, tokenizer, groups: list[list[str]], *, batch_size: int = 32,
                     progress: str | None = None) -> list[list[tuple[float, int]]]:
    """For each group of variant sentences: (summed log-probability, scored tokens) of each
    variant over its divergent span."""
    examples = [ex for group in groups for ex in divergent_examples(tokenizer, group)]
    scores = sequence_logprobs(model, examples, tokenizer.pad_token_id, batch_size, progress)
    out, at = [], 0
    for group in groups:
        out.append(scores[at:at + len(group)])
        at += len(group)
    return out


def option_logprobs(model, tokenizer, prompts: list[str], options: list[list[str]], *,
                    max_length: int = 1024, batch_size: int = 16,
                    progress: str | None = None) -> list[list[tuple[float, int]]]:
    """For each multiple-choice question (a user prompt) and its options: (summed
    log-probability, scored tokens) of each option as the assistant's reply."""
    if _prompt_learning(model):
        # virtual tokens sit in front of every sequence: score each option whole instead
        return _option_logprobs_whole(model, tokenizer, prompts, options, max_length=max_length,
                                      batch_size=batch_size, progress=progress)
    from tqdm.auto import tqdm

    from ..ui import progress_bars

    model.eval()
    out = []
    for prompt, opts in tqdm(list(zip(prompts, options)), desc=progress, leave=False,
                             disable=not (progress and progress_bars())):
        messages = [{"role": "user", "content": prompt}]
        examples = [tokenize_record(Record("", 0, messages=messages + [
            {"role": "assistant", "content": o}]), tokenizer, max_length) for o in opts]
        out.append(shared_prefix_logprobs(model, examples, tokenizer.pad_token_id))
    return out


def _cache_argument(model) -> str:
    """What this transformers release calls the key/value cache in `forward` and its output:
    `cache` in recent 5.x releases, `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


@torch.no_grad()
def shared_prefix_logprobs(model, examples: list[Example], pad_token_id: int) -> list[tuple[float, int]]:
    """(summed log-probability, labelled tokens) of each example, as `sequence_logprobs` gives,
    for examples that share a prefix of unlabelled tokens: the prefix runs once and its cache
    is repeated for the examples' own tokens."""
    ids = [ex.input_ids for ex in examples]
    first_label = [next((i for i, lab in enumerate(ex.labels) if lab != IGNORE), len(ex.labels))
                   for ex in examples]
    common = 0
    while all(len(x) > common for x in ids) and len({x[common] for x in ids}) == 1:
        common += 1
    # the prefix ends before any labelled token, and leaves each example at least one token
    split = min([common, min(len(x) for x in ids) - 1] + first_label)
    if split < 1:
        return sequence_logprobs(model, examples, pad_token_id, len(examples))
    device = next(model.parameters()).device
    prefix = model(input_ids=torch.tensor([ids[0][:split]], device=device), use_cache=True)
    first = prefix.logits[0, -1].float().log_softmax(-1)  # (V,) predicts each example's token at `split`
    name = _cache_argument(model)
    cache = getattr(prefix, name)
    cache.batch_repeat_interleave(len(examples))
    width = max(len(x) - split for x in ids)
    rest = torch.full((len(ids), width), pad_token_id, dtype=torch.long)  # (K, W)
    mask = torch.zeros((len(ids), split + width), dtype=torch.long)  # (K, split + W)
    for k, x in enumerate(ids):
        rest[k, :len(x) - split] = torch.tensor(x[split:])
        mask[k, :len(x)] = 1
    positions = torch.arange(split, split + width).expand(len(ids), -1)
    logps = model(input_ids=rest.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                  **{name: cache}).logits.float().log_softmax(-1)  # (K, W, V)
    out = []
    for k, ex in enumerate(examples):
        total, count = 0.0, 0
        for t in range(split, len(ex.input_ids)):
            if ex.labels[t] == IGNORE:
                continue
            dist = first if t == split else logps[k, t - split - 1]
            total += float(dist[ex.labels[t]])
            count += 1
        out.append((total, count))
    return out


def _option_logprobs_whole(model, tokenizer, prompts: list[str], options: list[list[str]], *,
                           max_length: int, batch_size: int,
                           progress: str | None) -> list[list[tuple[float, int]]]:
    flat_prompts = [[{"role": "user", "content": p}] for p, opts in zip(prompts, options) for _ in opts]
    flat_replies = [o for opts in options for o in opts]
    scores = reply_logprobs(model, tokenizer, flat_prompts, flat_replies, max_length=max_length,
                            batch_size=batch_size, progress=progress)
    out, at = [], 0
    for opts in options:
        out.append(scores[at:at + len(opts)])
        at += len(opts)
    return out
