"""The whole fine-tuning flow with the official OpenAI client, against `affina serve`.

Start a server (it runs one training worker by default), then run this script:

    affina serve --base default &
    python examples/openai_client/finetune.py

It asks the base model a held-out question, uploads the sample training data
(examples/product_json/train.jsonl), creates a fine-tuning job with "auto" hyperparameters,
streams the job's events until it ends, and asks the fine-tuned model the same question.
Only `base_url` differs from code written for OpenAI's own service.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from openai import OpenAI

DATA = Path(__file__).resolve().parents[1] / "product_json"


def ask(client: OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(model=model, temperature=0, max_tokens=64,
                                           messages=[{"role": "user", "content": question}])
    return reply.choices[0].message.content


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--model", default="default", help="the base to fine-tune (default: default)")
    parser.add_argument("--epochs", default="auto", help="n_epochs, or auto (default: auto)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (an affina extension; "
                        "for a quick look on a slow CPU)")
    args = parser.parse_args()
    # A key from `affina keys create`, or any text for a server started without keys.
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "unused"))

    row = json.loads((DATA / "test.jsonl").read_text().splitlines()[0])
    question = f"{row['instruction']}\n\n{row['input']}"
    before = ask(client, args.model, question)

    with open(DATA / "train.jsonl", "rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    print(f"uploaded {training.filename}: {training.id} ({training.bytes} bytes)")
    epochs = args.epochs if args.epochs == "auto" else int(args.epochs)
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}}
    if args.max_steps:
        method["affina"] = {"method": "lora", "train": {"max_steps": args.max_steps}}
    job = client.fine_tuning.jobs.create(model=args.model, training_file=training.id, suffix="products",
                                         seed=42, method=method)
    print(f"created {job.id} ({job.status})")

    started, seen = time.monotonic(), set()
    while True:
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        for event in reversed(events):  # the API lists newest first
            if event.id not in seen:
                seen.add(event.id)
                print(f"  [{time.monotonic() - started:6.0f} s] {event.message}", flush=True)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    if job.status != "succeeded":
        print(f"job {job.status}: {job.error.message if job.error else ''}")
        return 1
    hp = job.hyperparameters
    print(f"fine-tuned model: {job.fine_tuned_model} ({hp.n_epochs} epochs, batch {hp.batch_size}, "
          f"lr multiplier {hp.learning_rate_multiplier}, {job.trained_tokens} tokens, "
          f"{job.finished_at - job.created_at} s)")
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id):
        m = checkpoint.metrics
        print(f"  checkpoint step {checkpoint.step_number}: train loss {_num(m.train_loss)}, validation "
              f"loss {_num(m.valid_loss)} → {checkpoint.fine_tuned_model_checkpoint}")

    after = ask(client, job.fine_tuned_model, question)
    print(f"\nquestion: {question}\nexpected: {row['output']}\nbefore:   {before}\nafter:    {after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
