"""Rebuild `tests/assets/tiny-tokenizer/`: a ~1000-token byte-level BPE for tiny test models.

It mirrors SmolLM2-135M-Instruct's tokenizer in everything tests can observe (byte-level BPE,
the same special tokens at ids 0-2, eos = pad = `<|im_end|>`, no bos, the same chat template),
so code tested on tiny models behaves the same on the default model. The training text is
generated here from a fixed seed, so running this again gives the same files:

    .venv/bin/python tests/assets/make_tiny_tokenizer.py
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

OUT_DIR = Path(__file__).parent / "tiny-tokenizer"
VOCAB_SIZE = 1000
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2

# Copied verbatim from SmolLM2-135M-Instruct (tests/models/test_default_model.py checks it).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SUBJECTS = ["the model", "a customer", "our team", "the report", "this invoice", "the user",
            "a doctor", "the engineer", "my friend", "the system", "the city", "a student"]
VERBS = ["reads", "writes", "checks", "sends", "answers", "explains", "needs", "finds",
         "updates", "builds", "describes", "compares", "returns", "loads", "trains"]
OBJECTS = ["the data", "a short summary", "three questions", "the weather", "an email",
           "the capital of France", "the training set", "a new order", "the contract",
           "their account", "the results", "a long document", "the price list"]
ENDINGS = ["today", "every morning", "before lunch", "in 2024", "on Monday", "as soon as possible",
           "with care", "for the second time", "at 10:30", "without errors"]
QUESTIONS = ["What is the capital of France?", "How do I reset my password?",
             "Can you summarise this text?", "Why is the sky blue?", "What time is it in Paris?",
             "Which plan costs less, A or B?", "Who wrote this letter?"]
# Common English words, so random phrases give the trainer enough distinct words for ~1000 merges.
WORDS = """
about above across after again against almost alone along already also always among animal answer
around asked away back because become before began behind being below best better between big
black blue body book both bottom bread bring brother brought build built business call came card
care carry cause center change check child children city class clear close cold color common
complete country course cover cross cut dark data day deep different direction does dollar door
down draw during early earth easy eight enough even evening every example face fact family far
farm fast father feel feet field figure final fine fire first fish five follow food foot force
form found four free friend front full game garden gave give glass going gold good govern great
green ground group grow half hand happen hard head hear heard heart heavy help high hold home hope
horse hour house however hundred idea important inch inside island just keep kind king knew know
land language large last late laugh learn leave left less letter light line list listen little
live long look machine made main make many mark matter mean measure might mile mind minute miss
money month morning mother mountain move much music must name near need never next night north
note nothing notice number object ocean office often only open order other paper part party pass
people perhaps person picture piece place plain plan plant play point power press problem produce
product provide pull question quick quite rain reach ready real reason receive record remember
rest right river road rock room round rule safe same school science second seem sentence service
several shape share short should show side simple since sing size sleep small snow social some
song soon sound south space speak special spring stand start state station stay step still stone
stood stop story street strong study such summer support sure surface system table take talk
teach team tell test than that their them then there these thing think those though thought
thousand three through time today together told took town travel tree true turn under unit until
upon usual value very voice walk warm watch water weather week weight well went were west what
wheel where which while white whole why wind window winter wish with without woman wonder wood
word work world write year young
""".split()

ANSWERS = ["The capital of France is Paris.", "Click 'Forgot password' and follow the email.",
           "Sure, here is a short summary.", "Sunlight is scattered by the air.",
           "It is 3 pm in Paris.", "Plan A costs $12 per month; plan B costs $15.",
           "The letter was written by the manager."]


def training_text(seed: int = 0, sentences: int = 3000) -> list[str]:
    """Plain sentences plus chat-formatted exchanges, so the chat markup gets merges too."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        line = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
        lines.append(line[0].upper() + line[1:])
    for _ in range(sentences):
        words = rng.choices(WORDS, k=rng.randint(5, 14))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ";"]))
    for question, answer in zip(QUESTIONS, ANSWERS):
        lines.append(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    # Same byte-level split as SmolLM2: GPT-2's regex, no prefix space.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_text(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def main() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2]
    tokenizer.save_pretrained(OUT_DIR)
    size = sum(f.stat().st_size for f in OUT_DIR.iterdir())
    print(f"wrote {OUT_DIR} ({len(tokenizer)} tokens, {size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
