"""Score a model on held-out preference pairs: does it give the chosen reply more probability
than the rejected one?

For each pair the summed log-probability of the reply tokens (the tokens a DPO/ORPO/KTO loss
sees, end-of-turn marker included) is taken under the model, for the chosen and the rejected
reply after the same prompt. Reported: the win rate of chosen over rejected by summed
log-probability, the same by mean log-probability per reply token (a length-fair view: summed
log-probability alone favours short replies), and the mean margin logπ(chosen) − logπ(rejected)
in nats. Run on the base and on the tuned model, the difference of the margins is DPO's implicit
reward margin divided by β (Rafailov et al. 2023, arXiv:2305.18290, eq. 5), with the base as
the reference.

When the model is a PEFT adapter, the reference is also scored directly (the same model with
its adapter disabled, no second copy), giving DPO's implicit rewards per pair:
r(y) = β·(logπ(y|x) − logπ_ref(y|x)). Reported: the reward accuracy (share of pairs whose chosen
reply gets the higher reward) and the mean reward margin r(chosen) − r(rejected), with β the
run's own (`method.beta`; 1 when the run has none, i.e. the margin in nats).
"""

from __future__ import annotations

from ..data.records import Record
from ..data.tokenize import tokenize_record
from ..errors import DataError
from .loss import sequence_logprobs

__all__ = ["score_preferences", "reply_logprobs", "PREFERENCE_METRICS"]

PREFERENCE_METRICS = ("pref_win_rate", "pref_win_rate_per_token", "pref_margin", "pref_reward_accuracy",
                      "pref_reward_margin")


def reply_logprobs(model, tokenizer, prompts: list[list[dict]], replies: list[str], *,
                   max_length: int, batch_size: int, progress: str | None = None,
                   source: str = "", lines: list[int] | None = None) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each assistant `reply` after its `prompt`
    messages, in the model's chat template: the reply tokens and the end-of-turn marker, the
    tokens a fine-tuned chat model is trained on."""
    lines = lines or [0] * len(prompts)
    examples = [tokenize_record(Record(source, line, messages=prompt + [
        {"role": "assistant", "content": reply}]), tokenizer, max_length)
        for prompt, reply, line in zip(prompts, replies, lines)]
    return sequence_logprobs(model, examples, tokenizer.pad_token_id, batch_size, progress)


def _reply_logps(model, tokenizer, records: list[Record], reply: str, max_length: int,
                 batch_size: int) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each record's `reply` ("chosen"/"rejected")."""
    return reply_logprobs(model, tokenizer, [r.prompt for r in records],
                          [getattr(r, reply) for r in records], max_length=max_length,
                          batch_size=batch_size, source=records[0].source if records else "",
                          lines=[r.line for r in records])


def score_preferences(model, tokenizer, records: list[Record], *, max_length: int, batch_size: int,
                      label: str = "model", beta: float | None = None) -> dict:
    pairs = [r for r in records if r.paired]
    if not pairs:
        raise DataError("preference evaluation needs pairs (prompt, chosen, rejected); these records "
                        "are unpaired (KTO rows): give eval.data a file of pairs",
                        source=records[0].source if records else None)
    model.eval()
    chosen = _reply_logps(model, tokenizer, pairs, "chosen", max_length, batch_size)
    rejected = _reply_logps(model, tokenizer, pairs, "rejected", max_length, batch_size)
    margins = [c - r for (c, _), (r, _) in zip(chosen, rejected)]
    per_token = [c / max(1, nc) - r / max(1, nr) for (c, nc), (r, nr) in zip(chosen, rejected)]
    n = len(pairs)
    metrics = {"pref_win_rate": sum(m > 0 for m in margins) / n,
               "pref_win_rate_per_token": sum(m > 0 for m in per_token) / n,
               "pref_margin": sum(margins) / n}
    rewards = None
    if hasattr(model, "disable_adapter"):  # a PEFT model: its base, adapter off, is the reference
        with model.disable_adapter():
            ref_margins = [c - r for (c, _), (r, _) in zip(
                _reply_logps(model, tokenizer, pairs, "chosen", max_length, batch_size),
                _reply_logps(model, tokenizer, pairs, "rejected", max_length, batch_size))]
        scale = beta if beta is not None else 1.0
        rewards = [scale * (m - ref) for m, ref in zip(margins, ref_margins)]
        metrics["pref_reward_accuracy"] = sum(r > 0 for r in rewards) / n
        metrics["pref_reward_margin"] = sum(rewards) / n
    predictions = [
        {"source": r.source, "line": r.line, "prompt": r.prompt[-1]["content"], "reference": r.chosen,
         "prediction": r.chosen if m > 0 else r.rejected,
         "scores": {"logp_chosen": round(c[0], 4), "logp_rejected": round(rj[0], 4), "margin": round(m, 4),
                    **({"reward_margin": round(w, 4)} if w is not None else {})}}
        for r, c, rj, m, w in zip(pairs, chosen, rejected, margins, rewards or [None] * n)]
    return {"label": label, "examples": n, "shots": 0, "metrics": metrics, "predictions": predictions}
