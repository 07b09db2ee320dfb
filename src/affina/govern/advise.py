"""`affina advise`: should you fine-tune at all? On the user's own evaluation set, measure the
base model zero-shot, few-shot (the `fewshot` method), retrieval (when documents are given),
LoRA fine-tuning at a ladder of training-set sizes (the normal train recipe, each rung a run
directory) and fine-tuning + retrieval; print a table, draw quality against training rows with
time and memory beside it, and end with a verdict in plain words.

The result is a directory like any run: advice.json (settings, scores, costs, verdict, base
model fingerprint, library versions), inputs.json (every input file with its sha256),
advice.png, advice.md, the ladder's training subsets under data/ and its runs under runs/.
"""

from __future__ import annotations

import json
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import ConfigError

__all__ = ["plan_ladder", "ladder_subsets", "next_rung_fits", "verdict", "advise", "Arm",
           "DEFAULT_FRACTIONS"]

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass
class Arm:
    name: str                 # zero-shot, few-shot, rag, fine-tune, fine-tune+rag
    rows: int                 # training rows it saw (0 for zero-shot and rag)
    scores: dict = field(default_factory=dict)
    seconds: float = 0.0      # wall time: training (if any) and evaluation
    train_seconds: float = 0.0
    peak_memory: int | None = None  # bytes: peak GPU allocation on CUDA, else peak process RSS
    run_dir: str | None = None


# --- the ladder's bookkeeping (pure functions; tested on their own) -----------------------

def plan_ladder(n_rows: int, fractions=DEFAULT_FRACTIONS, min_rows: int = 8) -> list[int]:
    """Distinct training-set sizes, smallest first: each fraction of `n_rows`, at least
    `min_rows` (or all rows when there are fewer)."""
    if n_rows < 1:
        raise ConfigError("the training file has no rows")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"ladder fractions {list(fractions)}: each must be in (0, 1]")
    return sorted({min(n_rows, max(min(min_rows, n_rows), round(f * n_rows))) for f in fractions})


def ladder_subsets(n_rows: int, sizes: list[int], seed: int = 0) -> list[list[int]]:
    """Row indices of each rung: nested prefixes of one seeded shuffle, so a bigger rung holds
    every row of the smaller ones and the curve measures more data, not other data."""
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return [sorted(order[:size]) for size in sizes]


def next_rung_fits(elapsed: float, budget: float, last_rows: int, last_train_s: float,
                   last_eval_s: float, next_rows: int, reserve: float = 0.0) -> bool:
    """Whether the next rung is expected to finish within the budget: training time scales with
    rows (same epochs), evaluation time stays; `reserve` is time kept for what comes after."""
    expected = last_train_s * next_rows / max(last_rows, 1) + last_eval_s
    return elapsed + expected + reserve <= budget


def verdict(arms: list[Arm], metric: str, margin: float = 0.02) -> str:
    """The advice in words, from the measured arms (higher `metric` is better)."""
    def best(name):
        found = [a for a in arms if a.name == name and metric in a.scores]
        return max(found, key=lambda a: a.scores[metric]) if found else None

    zero, few, rag, ft_rag = best("zero-shot"), best("few-shot"), best("rag"), best("fine-tune+rag")
    ladder = sorted([a for a in arms if a.name == "fine-tune" and metric in a.scores], key=lambda a: a.rows)
    ft = max(ladder, key=lambda a: a.scores[metric]) if ladder else None
    s = lambda a: a.scores[metric] if a else float("-inf")  # noqa: E731
    prompt_best = max((a for a in (zero, few) if a), key=s, default=None)
    no_retrieval = max(s(prompt_best), s(ft))
    if rag and s(rag) >= no_retrieval + margin and s(rag) >= s(ft_rag) - margin:
        return (f"RAG wins: your task is knowledge lookup. Retrieval reaches {metric} {s(rag):.3f} "
                f"against {no_retrieval:.3f} without it; keep the documents indexed instead of training them in.")
    if ft_rag and s(ft_rag) >= max(no_retrieval, s(rag)) + margin:
        return (f"fine-tune and retrieve: fine-tuning + RAG reaches {metric} {s(ft_rag):.3f}, above "
                f"RAG alone ({s(rag):.3f}) and fine-tuning alone ({s(ft):.3f}).")
    if ft is None:
        return f"no fine-tuning rung fitted the budget; {prompt_best.name} reaches {metric} {s(prompt_best):.3f}."
    if s(prompt_best) >= s(ft) - margin:
        return (f"{prompt_best.name} already reaches {metric} {s(prompt_best):.3f} of the "
                f"{s(ft):.3f} that fine-tuning reaches: fine-tuning is not needed.")
    gain = s(ft) - s(prompt_best)
    rising = len(ladder) >= 2 and s(ladder[-1]) >= s(ladder[-2]) + margin
    tail = (" and the curve still rises: more data should help." if rising else
            " and the curve has flattened: more rows of the same kind will help little.")
    return (f"fine-tune: +{gain:.3f} {metric} over {prompt_best.name} "
            f"({s(ft):.3f} with {ft.rows} rows),{tail}")


# --- measuring -------------------------------------------------------------------------------

@contextmanager
def measured(arm: Arm):
    """Wall time and peak memory of the block into `arm`: torch's peak allocation on CUDA,
    else the process's resident memory sampled every 0.2 s."""
    import psutil
    import torch

    cuda = torch.cuda.is_available()
    peak, stop = [0], threading.Event()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    proc = psutil.Process()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        yield arm
    finally:
        arm.seconds += time.perf_counter() - t0
        stop.set()
        watcher.join()
        arm.peak_memory = max(arm.peak_memory or 0,
                              torch.cuda.max_memory_allocated() if cuda else peak[0])


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _train_run(out: Path, name: str, train_file: Path, model: str, config: str | None,
               overrides: list[str]):
    from ..config import load_config
    from ..methods import method_field_names
    from ..train import train

    cfg = load_config(config, [f"model.spec={model}", f"train.output_dir={out}", f"train.run_name={name}",
                               "data.val_fraction=0", "train.eval_steps=0", "train.save_steps=100000",
                               "eval.compare_base=false", *overrides], method_field_names)
    cfg.data.train, cfg.data.validation, cfg.eval.data = [str(train_file)], [], []
    return train(cfg, display="quiet").run_dir


def _evaluate(ref, records, settings, arm: Arm, label: str, shots=None) -> None:
    from ..evaluate.evaluator import evaluate_model, flat_scores
    from ..runs import open_model

    with measured(arm):
        opened = open_model(ref)
        arm.scores = flat_scores(evaluate_model(opened, records, settings, label=label, shots=shots)) or {}


def advise(train: list[str], eval_data: list[str], *, docs: list[str] | None = None,
           model: str = "default", budget_minutes: float = 30.0, fractions=DEFAULT_FRACTIONS,
           metric: str | None = None, config: str | None = None, overrides: list[str] | None = None,
           shots: int = 4, rag_k: int = 4, epochs: float = 3.0, max_new_tokens: int = 64,
           limit: int | None = None, out_dir: Path | None = None, seed: int = 0,
           chunk_size: int = 200, chunk_overlap: int = 40) -> dict:
    from ..data.loading import load_records
    from ..data.sources import read_rows
    from ..evaluate.evaluator import EvalSettings, default_metrics
    from ..record.datafiles import data_file, write_inputs
    from ..ui import info, print_table, warn

    t_start = time.perf_counter()
    budget = budget_minutes * 60
    out = Path(out_dir or Path("advice") / f"advise-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    if (out / "advice.json").exists():
        raise ConfigError(f"{out} already holds an advice; choose another --out")
    train_rows = [row for path in train for _, row in read_rows(path)]
    eval_records = load_records(eval_data).records[:limit] if limit else load_records(eval_data).records
    load_records(train)  # the training rows must be valid data before anything runs
    if any(r.kind != "chat" for r in eval_records):
        raise ConfigError("affina advise compares generative answers: the evaluation data must be "
                          "prompt/reply examples (messages, prompt/completion, alpaca)")
    metrics = default_metrics(eval_records)
    metric = metric or ("token_f1" if "token_f1" in metrics else metrics[0])
    if metric not in metrics:
        metrics.append(metric)
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    settings = EvalSettings(metrics=tuple(metrics), max_length=2048, max_new_tokens=max_new_tokens, batch_size=8)
    inputs = [data_file(p, "train", out) for p in train] + [data_file(p, "eval", out) for p in eval_data]
    sizes = plan_ladder(len(train_rows), fractions)
    arms: list[Arm] = []
    retriever = None
    kb_name = f"advise-{out.name}"[:64]
    if docs:
        from ..rag.documents import expand_paths
        from ..rag.index import update_index
        from ..rag.retrieve import Retriever

        inputs += [data_file(p, "docs", out) for p in expand_paths(docs)]
        from ..rag.chunking import ChunkSettings

        update_index(docs, kb_name, ChunkSettings(size=chunk_size, overlap=chunk_overlap))
        retriever = Retriever.open(kb_name)
    write_inputs(out, inputs)
    info(f"advice in {out}: {len(train_rows)} training rows, {len(eval_records)} evaluation rows, "
         f"ladder {sizes}, budget {budget_minutes:g} min, metric {metric}")

    def rag_records(tokenizer):
        from ..rag.evaluation import with_retrieval

        return with_retrieval(eval_records, retriever, rag_k, "hybrid", tokenizer)

    zero = Arm("zero-shot", 0)
    _evaluate(model, eval_records, settings, zero, "zero-shot")
    arms.append(zero)
    if retriever is not None:
        from ..runs import open_model

        arm = Arm("rag", 0)
        with measured(arm):
            records = rag_records(open_model(model).tokenizer)
        _evaluate(model, records, settings, arm, "rag")
        arms.append(arm)
    all_rows = _write_rows(out / "data" / "train-all.jsonl", train_rows)
    few = Arm("few-shot", len(train_rows))
    with measured(few):
        few.run_dir = str(_train_run(out / "runs", "fewshot", all_rows, model, None,
                                     ["method.name=fewshot", f"method.k={shots}",
                                      *[o for o in overrides or [] if o.startswith(("track.", "model."))]]))
    _evaluate(few.run_dir, eval_records, settings, few, "few-shot")
    arms.append(few)

    last = None
    for size, rows in zip(sizes, ladder_subsets(len(train_rows), sizes, seed)):
        elapsed = time.perf_counter() - t_start
        if last is not None and not next_rung_fits(elapsed, budget, last.rows, last.train_seconds,
                                                    last.seconds - last.train_seconds, size):
            warn(f"ladder stops before {size} rows: it would not finish within {budget_minutes:g} min")
            break
        subset = _write_rows(out / "data" / f"train-{size}.jsonl", [train_rows[i] for i in rows])
        arm = Arm("fine-tune", size)
        with measured(arm):
            arm.run_dir = str(_train_run(out / "runs", f"lora-{size}", subset, model, config,
                                         [f"train.epochs={epochs}", f"train.seed={seed}", *(overrides or [])]))
        arm.train_seconds = arm.seconds
        _evaluate(arm.run_dir, eval_records, settings, arm, f"fine-tune {size}")
        arms.append(arm)
        last = arm
    if retriever is not None and last is not None:
        from ..runs import open_model

        arm = Arm("fine-tune+rag", last.rows, run_dir=last.run_dir)
        with measured(arm):
            records = rag_records(open_model(last.run_dir).tokenizer)
        _evaluate(last.run_dir, records, settings, arm, "fine-tune + rag")
        arms.append(arm)

    words = verdict(arms, metric)
    table = [[a.name, str(a.rows), f"{a.scores.get(metric, float('nan')):.4f}",
              f"{a.scores.get('loss', float('nan')):.3f}", f"{a.seconds:.0f}s",
              f"{(a.peak_memory or 0) / 2**20:.0f} MB"] for a in arms]
    print_table(f"advice on {Path(eval_data[0]).name} ({metric}, higher is better)",
                ["setting", "training rows", metric, "loss", "time", "peak memory"], table)
    from .advise_plot import plot_advice

    plot_advice(arms, metric, out / "advice.png")
    result = {"schema_version": 1, "model": model, "model_fingerprint": model_fingerprint_of(model),
              "metric": metric, "metrics": metrics, "budget_minutes": budget_minutes,
              "ladder": sizes, "fractions": list(fractions), "seed": seed, "shots": shots,
              "epochs": epochs, "rag": {"index": kb_name, "k": rag_k, "chunk_size": chunk_size,
                                             "chunk_overlap": chunk_overlap} if retriever else None,
              "settings": settings.__dict__, "arms": [a.__dict__ for a in arms], "verdict": words,
              "seconds": round(time.perf_counter() - t_start, 1), "versions": _versions()}
    (out / "advice.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "advice.md").write_text(_markdown(result, table, metric))
    info(f"verdict: {words}")
    info(f"table, plot and runs in {out}")
    return result


def model_fingerprint_of(spec: str) -> str | None:
    from ..errors import AffinaError
    from ..models import model_fingerprint
    from ..models.resolve import resolve_model_path

    try:
        return model_fingerprint(resolve_model_path(spec))
    except (AffinaError, OSError):  # a hub id without a local copy: the runs record their own
        return None


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("affina", "torch", "transformers", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _markdown(result: dict, table: list[list[str]], metric: str) -> str:
    lines = [f"# Advice: {result['model']}", "", f"**Verdict:** {result['verdict']}", "",
             f"| setting | training rows | {metric} | loss | time | peak memory |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines += ["", "![quality against training rows](advice.png)", ""]
    return "\n".join(lines)
