"""`affina select`: choose a base model on your own data.

For each candidate spec: what it is (architecture, parameters, context length), what it costs
(bf16 and 4-bit memory estimates, the measured memory of loading it, generation speed on this
machine), and how well it does on the user's data zero-shot, few-shot and, optionally, after a
short probe fine-tune. Candidates are ranked by the first metric at their best setting.
"""

from __future__ import annotations

import gc
import json
import time
from datetime import datetime
from pathlib import Path

from ..data.loading import load_records
from ..errors import ConfigError
from ..ui import info, print_table, warn
from ..evaluate.compare import ref_label
from ..evaluate.evaluator import EvalSettings, default_metrics, evaluate_model
from ..evaluate.fewshot import pick_shots
from ..evaluate.metrics import check_metric_names

__all__ = ["select_base_model", "profile_candidate", "memory_estimates", "rank_candidates"]

# NF4 as bitsandbytes stores it: 4-bit codes plus one fp32 scale per block of 64 weights.
_NF4_BITS_PER_WEIGHT = 4 + 32 / 64


def memory_estimates(model) -> dict:
    """Weight memory in bf16, and with 4-bit (NF4) linear layers: quantised loading keeps
    embeddings, norms and the output head in 16 bits, so those are counted at 2 bytes."""
    import torch

    head = model.get_output_embeddings()
    # Tied weights count once: key by tensor identity.
    linear = {id(m.weight): m.weight.numel() for m in model.modules()
              if isinstance(m, torch.nn.Linear) and m is not head}
    unique = {id(p): p.numel() for p in model.parameters()}
    quantisable = sum(n for i, n in linear.items() if i in unique and i != id(getattr(head, "weight", None)))
    total = sum(unique.values())
    rest = total - quantisable
    return {"parameters": total, "bf16_bytes": total * 2,
            "int4_bytes": int(quantisable * _NF4_BITS_PER_WEIGHT / 8 + rest * 2)}


def _context_length(model, tokenizer) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and n < 10**8 else None


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def profile_candidate(spec: str, records, shots, *, metrics: list[str], max_length: int,
                      max_new_tokens: int, batch_size: int, probe: dict | None = None) -> dict:
    """Everything `affina select` reports about one candidate."""
    from ..models import load_model
    from ..runs import open_model

    gc.collect()
    rss_before, started = _rss(), time.perf_counter()
    loaded = load_model(spec)
    load_seconds = time.perf_counter() - started
    rss_delta = max(0, _rss() - rss_before)
    opened = open_model(spec, base=loaded)
    model, tokenizer = loaded.model, loaded.tokenizer
    profile = {"spec": spec, "label": ref_label(spec), "path": str(loaded.path),
               "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
               "model_type": getattr(model.config, "model_type", None),
               "context_length": _context_length(model, tokenizer),
               **memory_estimates(model),
               "load_rss_bytes": rss_delta, "load_seconds": round(load_seconds, 2),
               "fingerprint": loaded.fingerprint}
    settings = {"zero_shot": []} | ({"few_shot": shots} if shots else {})
    eval_settings = EvalSettings(metrics=tuple(metrics), max_length=max_length,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size)
    for name, setting_shots in settings.items():
        result = evaluate_model(opened, records, eval_settings, label=f"{profile['label']} {name}",
                                shots=setting_shots)
        profile[name] = {k: result.get(k) for k in ("loss", "perplexity", "metrics", "shots")}
        if name == "zero_shot":
            profile["tokens_per_s"] = (result.get("generation") or {}).get("tokens_per_s")
    del model, tokenizer, loaded, opened
    gc.collect()
    if probe:
        profile["probe"] = _probe_finetune(spec, probe, metrics)
    return profile


def _probe_finetune(spec: str, probe: dict, metrics: list[str]) -> dict:
    """A short LoRA fine-tune on the probe training data, scored on the same evaluation data."""
    from ..config import load_config
    from ..train import train

    overrides = [f"model.spec={spec}", f"train.max_steps={probe['steps']}",
                 f"train.output_dir={probe['out_dir']}", f"train.run_name=probe-{ref_label(spec)}",
                 f"train.eval_steps={probe['steps']}", f"train.save_steps={probe['steps']}",
                 f"eval.metrics={json.dumps(metrics)}", "eval.compare_base=false",
                 f"eval.max_new_tokens={probe['max_new_tokens']}", f"data.max_length={probe['max_length']}",
                 "track.mlflow=false"]
    cfg = load_config(probe.get("config"), overrides)
    cfg.data.train = list(probe["train"])
    cfg.eval.data = list(probe["eval"])
    cfg.eval.limit = probe.get("limit")
    result = train(cfg)
    after = result.record.metrics.eval_after or {}
    return {"steps": result.record.train.global_step, "run_dir": str(result.run_dir),
            "validation_loss": result.record.metrics.validation_loss,
            "loss": after.get("loss"), "metrics": {k: after[k] for k in metrics if k in after}}


def _best_setting(profile: dict, metric: str) -> tuple[str, float]:
    options = [(name, (profile.get(name) or {}).get("metrics", {}).get(metric))
               for name in ("zero_shot", "few_shot", "probe")]
    options = [(n, v) for n, v in options if v is not None]
    return max(options, key=lambda o: o[1]) if options else ("-", float("-inf"))


def rank_candidates(profiles: list[dict], metric: str) -> tuple[list[dict], str]:
    """Best first: higher `metric` at the candidate's best setting, then lower zero-shot loss,
    then faster generation. Returns the ranked profiles and a sentence saying why the first won."""
    for p in profiles:
        p["best_setting"], p["score"] = _best_setting(p, metric)

    def key(p):
        loss = (p.get("zero_shot") or {}).get("loss")
        return (-p["score"], loss if loss is not None else float("inf"), -(p.get("tokens_per_s") or 0))

    ranked = sorted(profiles, key=key)
    for i, p in enumerate(ranked, 1):
        p["rank"] = i
    return ranked, _why(ranked, metric)


def _why(ranked: list[dict], metric: str) -> str:
    win = ranked[0]
    if len(ranked) == 1:
        return f"{win['label']} is the only candidate: {metric} {win['score']:.3f} ({win['best_setting']})"
    second = ranked[1]
    if win["score"] > second["score"]:
        reason = (f"{win['label']} wins on {metric}: {win['score']:.3f} ({win['best_setting']}) "
                  f"against {second['score']:.3f} for {second['label']} ({second['best_setting']})")
    else:
        wl, sl = (win.get("zero_shot") or {}).get("loss"), (second.get("zero_shot") or {}).get("loss")
        if wl is not None and sl is not None and wl < sl:
            reason = (f"{win['label']} ties {second['label']} on {metric} ({win['score']:.3f}) and wins "
                      f"on validation loss: {wl:.3f} against {sl:.3f}")
        else:
            reason = (f"{win['label']} ties {second['label']} on {metric} ({win['score']:.3f}) and "
                      f"generates faster")
    extras = []
    if win.get("tokens_per_s") and second.get("tokens_per_s"):
        extras.append(f"{win['tokens_per_s'] / second['tokens_per_s']:.2f}x its generation speed")
    if second.get("bf16_bytes"):
        extras.append(f"{win['bf16_bytes'] / second['bf16_bytes']:.2f}x its bf16 memory")
    return reason + (f"; {', '.join(extras)}" if extras else "")


def select_base_model(candidates: list[str], data: list[str], *, metrics: list[str] | None = None,
                      fewshot: int = 3, limit: int | None = 50, max_length: int = 1024,
                      max_new_tokens: int = 128, batch_size: int = 16, probe_steps: int = 0,
                      probe_train: list[str] | None = None, probe_config: str | None = None,
                      out_dir: Path | None = None) -> dict:
    """Profile and rank every candidate; writes select.json into `out_dir`."""
    if not candidates:
        raise ConfigError("give at least one candidate model spec (default, a directory or a .gguf file)")
    if probe_steps and not probe_train:
        raise ConfigError("--probe-steps needs --train FILE: the probe fine-tune must not train on "
                          "the evaluation data")
    records = load_records(data).records
    shots, records = pick_shots(records, fewshot)
    records = records[:limit] if limit else records
    if not records:
        raise ConfigError(f"nothing to evaluate in {', '.join(data)} after taking {fewshot} few-shot examples")
    metrics = metrics or default_metrics(records)
    check_metric_names(metrics)
    out_dir = Path(out_dir or Path("reports") / f"select-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    probe = None
    if probe_steps:
        probe = {"steps": probe_steps, "train": probe_train, "eval": data, "config": probe_config,
                 "out_dir": str(out_dir / "probes"), "max_new_tokens": max_new_tokens,
                 "max_length": max_length, "limit": limit}
    profiles = []
    for spec in candidates:
        info(f"profiling {spec}")
        profiles.append(profile_candidate(spec, records, shots, metrics=metrics, max_length=max_length,
                                          max_new_tokens=max_new_tokens, batch_size=batch_size,
                                          probe=probe))
    ranked, why = rank_candidates(profiles, metrics[0])
    report = {"data": [str(d) for d in data], "examples": len(records), "fewshot": len(shots),
              "metrics": metrics, "ranked_by": metrics[0], "why": why, "candidates": ranked}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "select.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    _print(ranked, metrics, len(shots), why)
    info(f"details: {out_dir / 'select.json'}")
    if any(p.get("load_rss_bytes") == 0 for p in ranked):
        warn("a measured load of 0 B means the memory freed by an earlier candidate was reused; "
             "profile that candidate alone for its own figure")
    return report


def _print(ranked: list[dict], metrics: list[str], k: int, why: str) -> None:
    m = metrics[0]
    has_probe = any(p.get("probe") for p in ranked)
    header = ["rank", "candidate", "architecture", "params", "context", "bf16", "4-bit", "loaded",
              "tok/s", f"{m} 0-shot"] + ([f"{m} {k}-shot"] if k else []) + \
             ([f"{m} probe"] if has_probe else []) + ["val loss 0-shot"]
    rows = []
    for p in ranked:
        row = [p["rank"], p["label"], p["architecture"], _count(p["parameters"]),
               p["context_length"] or "-", _bytes(p["bf16_bytes"]), _bytes(p["int4_bytes"]),
               _bytes(p["load_rss_bytes"]), f"{p['tokens_per_s']:.1f}" if p.get("tokens_per_s") else "-",
               _metric(p.get("zero_shot"), m)]
        if k:
            row.append(_metric(p.get("few_shot"), m))
        if has_probe:
            row.append(_metric(p.get("probe"), m))
        loss = (p.get("zero_shot") or {}).get("loss")
        row.append(f"{loss:.3f}" if loss is not None else "-")
        rows.append(row)
    print_table("base-model selection", [str(h) for h in header], [[str(c) for c in r] for r in rows])
    info(why)


def _metric(section: dict | None, name: str) -> str:
    value = ((section or {}).get("metrics") or {}).get(name)
    return "-" if value is None else f"{value:.3f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
