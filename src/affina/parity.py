"""Does an exported model answer like the run it came from?

Users serve the merged directory or the GGUF, not the run, so every form must carry the chat
template and the stop tokens the run was trained with, and must give the same greedy answers:

    result = check_parity(run_dir, [out_dir, out_dir / "model.gguf"])
    result.ok, result.problems()

Each form is opened the way `affina generate` opens it (a GGUF is converted with the same code,
into a temporary directory so the check leaves nothing in the model cache). Answers must be
token-for-token equal for full-precision forms (f32, f16 -- greedy decoding on the same weights);
a Q8_0 GGUF's rounded weights change logits, so its agreement is reported but not required.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AffinaError

__all__ = ["FIXED_PROMPTS", "FormParity", "ParityResult", "ParityError", "check_parity"]

FIXED_PROMPTS = ["hi", "What is the capital of France?", "Write one sentence about cats.",
                 "say the number 3"]
# GGUF types whose answers may legitimately differ from the run's.
_LOSSY_GGUF_TYPES = {"q8_0"}


class ParityError(AffinaError):
    """An exported model that does not answer like its run (exit code 1: the export itself ran)."""

    exit_code = 1


@dataclass
class FormParity:
    form: str  # "adapter", "merged", "gguf f32", ...
    ref: str
    template_sha256: str | None
    template_match: bool
    stop_token_ids: list[int]
    stop_match: bool
    answers: list[list[int]] = field(default_factory=list)  # greedy token ids per prompt
    agree: int = 0
    answers_required: bool = True  # False for lossy forms: agreement is reported, not demanded

    @property
    def ok(self) -> bool:
        answers_ok = self.agree == len(self.answers) or not self.answers_required
        return self.template_match and self.stop_match and answers_ok


@dataclass
class ParityResult:
    run_dir: str
    template_sha256: str | None
    stop_token_ids: list[int]
    prompts: list[str]
    forms: list[FormParity] = field(default_factory=list)
    skipped: str | None = None  # why answers were not compared at all

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.forms)

    def problems(self) -> list[str]:
        """One line per mismatch that fails the check."""
        out = []
        for f in self.forms:
            if not f.template_match:
                out.append(f"{f.form}: chat template sha256 {_short(f.template_sha256)} != run's "
                           f"{_short(self.template_sha256)}")
            if not f.stop_match:
                out.append(f"{f.form}: stop tokens {f.stop_token_ids} != run's {self.stop_token_ids}")
            if f.answers_required and f.agree != len(f.answers):
                out.append(f"{f.form}: {len(f.answers) - f.agree} of {len(f.answers)} greedy answers "
                           f"differ from the run's")
        return out

    def rows(self) -> list[list[str]]:
        """form, template match, stop tokens match, answers equal n/N (for a table)."""
        return [[f.form, _yes(f.template_match), _yes(f.stop_match),
                 f"{f.agree}/{len(f.answers)}" + ("" if f.answers_required or not f.answers
                                                  else " (not required)")]
                for f in self.forms]

    def raise_for_mismatch(self) -> None:
        problems = self.problems()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ParityError(f"parity check failed: {problems[0]}{more}")


def check_parity(run_dir: str | Path, exported: list[str | Path], *,
                 prompts: list[str] = FIXED_PROMPTS, max_new_tokens: int = 16) -> ParityResult:
    """Compare each exported form (a merged HF directory or a .gguf file) with the run."""
    from .record import read_record
    from .runs import open_model

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    expected = record.template
    result = ParityResult(str(run_dir), expected.sha256 if expected else None,
                          sorted(expected.stop_token_ids) if expected else [], list(prompts))
    run = open_model(run_dir, device="cpu", dtype="float32")
    generative = run.task.output == "text"
    if not generative:
        result.skipped = f"method {record.method.name} outputs labels, not generated answers"
    reference = _answers(run, prompts, max_new_tokens) if generative else []
    # A run on a quantised base (qlora) answers from 4-bit weights; its merged forms hold the
    # adapter folded into full precision, so they cannot be required to match it.
    quantised_base = bool(run.method.load_options(_method_cfg(record)))
    result.forms.append(_form("adapter", run, result, reference, reference, not quantised_base))
    del run
    with tempfile.TemporaryDirectory(prefix="affina-parity-") as tmp:
        for i, ref in enumerate(exported):
            ref = Path(ref)
            name, required = _form_name(ref)
            target = ref
            if ref.suffix.lower() == ".gguf":
                from .models import convert_gguf

                target = convert_gguf(ref, Path(tmp) / f"gguf-{i}")
            opened = open_model(target, device="cpu", dtype="float32")
            answers = _answers(opened, prompts, max_new_tokens) if generative else []
            result.forms.append(_form(name, opened, result, answers, reference,
                                      required and not quantised_base, ref=str(ref)))
            del opened
    return result


def _form(name, opened, result: ParityResult, answers, reference, required, ref=None) -> FormParity:
    from .data.tokenize import template_sha256

    sha = template_sha256(opened.tokenizer)
    stops = sorted(opened.stop_ids)
    agree = sum(a == b for a, b in zip(answers, reference))
    return FormParity(name, ref or opened.ref, sha, sha == result.template_sha256, stops,
                      stops == result.stop_token_ids, list(answers), agree, required)


def _answers(opened, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation of each templated prompt, as token ids up to and including the first
    stop token: equal ids, not just equal decoded text (which hides special tokens)."""
    import torch

    ids = []
    for prompt in prompts:
        text = opened.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                    tokenize=False, add_generation_prompt=True)
        enc = opened.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = opened.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                        temperature=None, top_p=None, top_k=None,
                                        eos_token_id=opened.stop_ids or None,
                                        pad_token_id=opened.tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        ends = [i for i, t in enumerate(new) if t in opened.stop_ids]
        ids.append(new[: ends[0] + 1] if ends else new)
    return ids


def _form_name(ref: Path) -> tuple[str, bool]:
    if ref.suffix.lower() != ".gguf":
        return "merged", True
    from .gguf_export import gguf_file_type

    kind = gguf_file_type(ref) or "?"
    return f"gguf {kind}", kind not in _LOSSY_GGUF_TYPES


def _method_cfg(record):
    from .runs import method_of_record

    return method_of_record(record)[1]


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "none"


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"
