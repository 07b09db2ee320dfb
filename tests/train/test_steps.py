"""The recipe's Trainer (train/steps.py): it counts the tokens seen as transformers' own count does,
and reads nothing back from the device between the steps that log, validate or save, where the
plain Trainer reads the loss and the token count every step. A read is a call that turns a tensor
into a Python value (`.item()`, `bool()`, ...), caught on the CPU with a TorchFunctionMode; on a
GPU each is a wait for the queued work."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from affina.data.packing import BatchCollator
from affina.data.records import Record
from affina.data.tokenize import tokenize_records
from affina.train.speed import Profile
from affina.train.steps import STEP_ARGUMENTS, recipe_trainer_class

READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
         torch.Tensor.tolist}
WATCHED = ("transformers/trainer.py", "accelerate/", "/affina/")  # the training loop's own code


class Reads(TorchFunctionMode):
    """Records, for each read of a tensor's value, the step under way and the file that asked
    (the first caller outside torch)."""

    def __init__(self):
        super().__init__()
        self.step, self.seen = 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            where = frame.f_code.co_filename if frame is not None else "?"
            if any(part in where for part in WATCHED):
                self.seen.append((self.step, where))
        return func(*args, **(kwargs or {}))


class StepNumber(TrainerCallback):
    def __init__(self, reads: Reads):
        self.reads = reads

    def on_step_begin(self, args, state, control, **kwargs):
        self.reads.step = state.global_step + 1


def _examples(tokenizer, n=24):
    records = [Record(source="rows", line=i + 1, messages=[{"role": "user", "content": "say " + "many " * (i % 5) + str(i)},
                                             {"role": "assistant", "content": f"number {i}"}])
               for i in range(n)]
    examples, _ = tokenize_records(records, tokenizer, 512)
    return examples


def _train(model_dir, tmp_path, trainer_class, steps=7, save_steps=None, **arguments):
    """`steps` steps of batch 3 (padded rows of different lengths), logging every 3rd step, a
    checkpoint every `save_steps`."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=3,
                             learning_rate=1e-3, logging_steps=3, logging_first_step=True,
                             save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
                             report_to="none", use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
                             dataloader_num_workers=0, seed=0, **arguments)
    reads = Reads()
    trainer = trainer_class(model=model, args=args, train_dataset=_examples(tokenizer),
                            data_collator=BatchCollator(tokenizer.pad_token_id), callbacks=[StepNumber(reads)])
    with reads:
        trainer.train()
    return trainer, reads


@pytest.mark.parametrize("profile", [Profile(), Profile(chunked_loss=True)], ids=["default", "chunked"])
def test_tokens_seen_as_transformers_counts_them_without_a_read_each_step(tiny_model_dir, tmp_path, profile):
    ours, reads = _train(tiny_model_dir, tmp_path / "ours", recipe_trainer_class(Trainer, profile),
                         save_steps=5, **STEP_ARGUMENTS)
    plain, plain_reads = _train(tiny_model_dir, tmp_path / "plain", Trainer, save_steps=5,
                                include_num_input_tokens_seen="non_padding")

    def logged(trainer, key):
        return [(h["step"], h[key]) for h in trainer.state.log_history if key in h]

    assert ours.state.num_input_tokens_seen == plain.state.num_input_tokens_seen > 0
    assert logged(ours, "num_input_tokens_seen") == logged(plain, "num_input_tokens_seen")
    assert [s for s, _ in logged(ours, "train_tokens_per_second")] == [1, 3, 6]
    assert [s for s, _ in logged(ours, "loss")] == [s for s, _ in logged(plain, "loss")]
    assert [v for _, v in logged(ours, "loss")] == pytest.approx([v for _, v in logged(plain, "loss")])
    saved = [json.loads((run / "out" / "checkpoint-5" / "trainer_state.json").read_text())
             for run in (tmp_path / "ours", tmp_path / "plain")]  # a checkpoint at a step that logs nothing
    assert saved[0]["num_input_tokens_seen"] == saved[1]["num_input_tokens_seen"] > 0

    # Steps 1, 3 and 6 log, step 5 saves and step 7 ends the run: reads there only (step 0:
    # setting up). The plain Trainer reads at every step (the loss's finiteness, the token count).
    assert {step for step, _ in reads.seen} - {0} == {1, 3, 5, 6, 7}
    assert {step for step, _ in plain_reads.seen} - {0} == set(range(1, 8))


def test_a_non_finite_loss_is_logged_as_it_is(tiny_model_dir, tmp_path):
    class Poisoned(recipe_trainer_class(Trainer, Profile())):
        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            return loss * float("nan") if self.state.global_step == 1 else loss

    trainer, _ = _train(tiny_model_dir, tmp_path, Poisoned, steps=3, **STEP_ARGUMENTS)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == losses[0] and losses[1] != losses[1]  # step 1 finite, steps 2-3 NaN
