"""False alarms and power of drift detection, with repeated windows (a benchmark, not a test).

    python benchmarks/drift_alarms.py [--windows 30,100] [--calm 100] [--shifted 30] [--mixed 30]

Reference: the prompts of examples/product_json/train.jsonl (400 rows), what a model trained on
it saw. Windows are drawn from examples/drift/traffic.py with fresh seeds:
- calm: new listings from the same generator (no shift): every flag is a false alarm;
- shifted: the same products asked about as customers' questions (the new input style);
- mixed: 30% shifted questions among listings (a partial shift).
Each window runs the input figures of `affina monitor` with the default settings (the same
code, `monitor.drift.input_figures`), embeddings from the embedded all-MiniLM-L6-v2 (computed
once for every pool). Prints, per scenario and window size, the share of windows each figure
flagged and the share judged drifted (the figures in `drift_on`), with a 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

_spec = importlib.util.spec_from_file_location("drift_traffic", ROOT / "examples" / "drift" / "traffic.py")
traffic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(traffic)

FIGURES = ("domain_classifier", "mmd", "prompt_length", "charset_mix", "oov_rate")


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def prompt_of(row: dict) -> str:
    return traffic.chat(row)[0]["content"]


def main() -> None:
    import numpy as np

    from affina.methods.embedder import TextEmbedder
    from affina.monitor.drift import DriftSettings, input_figures
    from affina.ui import print_table

    p = argparse.ArgumentParser()
    p.add_argument("--windows", default="30,100", help="window sizes")
    p.add_argument("--calm", type=int, default=100, help="no-shift windows per size")
    p.add_argument("--shifted", type=int, default=30, help="shifted windows per size")
    p.add_argument("--mixed", type=int, default=30, help="30%%-shifted windows per size")
    p.add_argument("--pool", type=int, default=1500, help="fresh listing prompts to draw windows from "
                   "(half as many questions)")
    p.add_argument("--json", help="also write the rates here")
    args = p.parse_args()
    settings = DriftSettings().validate()
    sizes = [int(s) for s in args.windows.split(",")]

    reference = [prompt_of(json.loads(line)) for line in
                 (ROOT / "examples" / "product_json" / "train.jsonl").read_text().splitlines()]
    # Each window is drawn without replacement from a pool of fresh prompts; windows may share
    # prompts with each other (never with the reference's generator seed).
    pools = {"listing": [prompt_of(r) for r in traffic.rows("listing", args.pool, seed=1001)],
             "shifted": [prompt_of(r) for r in traffic.rows("shifted", args.pool // 2, seed=1002)]}
    started = time.time()
    embedder = TextEmbedder(settings.embedding_model)
    emb = {k: embedder.encode(v).numpy().astype(np.float64) for k, v in
           {"reference": reference, **pools}.items()}
    print(f"embedded {len(reference)} reference and {sum(map(len, pools.values()))} window prompts in "
          f"{time.time() - started:.0f}s", file=sys.stderr)

    rng = np.random.default_rng(0)
    results = []
    for size in sizes:
        for scenario, repeats in (("calm", args.calm), ("shifted", args.shifted), ("mixed", args.mixed)):
            counts = dict.fromkeys(FIGURES + ("drifted",), 0)
            t0 = time.time()
            for i in range(repeats):
                if scenario == "calm":
                    idx = {"listing": rng.choice(len(pools["listing"]), size, replace=False), "shifted": []}
                elif scenario == "shifted":
                    idx = {"listing": [], "shifted": rng.choice(len(pools["shifted"]), size, replace=False)}
                else:
                    k = round(size * 0.3)
                    idx = {"listing": rng.choice(len(pools["listing"]), size - k, replace=False),
                           "shifted": rng.choice(len(pools["shifted"]), k, replace=False)}
                texts = [pools[s][j] for s in ("listing", "shifted") for j in idx[s]]
                vecs = np.vstack([emb[s][np.asarray(idx[s], int)] for s in ("listing", "shifted") if len(idx[s])])
                run = DriftSettings(**{**settings.__dict__, "seed": i})
                figures, _ = input_figures(reference, texts, emb["reference"], vecs, run)
                flags = {f.name: bool(f.flagged) for f in figures}
                for name in FIGURES:
                    counts[name] += flags[name]
                counts["drifted"] += any(flags[n] for n in settings.drift_on)
            results.append({"scenario": scenario, "window": size, "repeats": repeats,
                            "seconds_per_window": (time.time() - t0) / max(repeats, 1),
                            **{k: v / repeats for k, v in counts.items()},
                            "drifted_ci": wilson(counts["drifted"], repeats)})
            print(f"{scenario} n={size}: drifted {counts['drifted']}/{repeats}; "
                  + ", ".join(f"{n} {counts[n]}" for n in FIGURES), file=sys.stderr)

    rows = [[r["scenario"], r["window"], r["repeats"], *[f"{r[n]:.3f}" for n in FIGURES],
             f"{r['drifted']:.3f} [{r['drifted_ci'][0]:.3f}, {r['drifted_ci'][1]:.3f}]",
             f"{r['seconds_per_window']:.1f}"] for r in results]
    print_table(f"share of windows flagged (alpha={settings.alpha}, {settings.permutations} permutations, "
                f"reference {len(reference)} prompts; drifted = any of {', '.join(settings.drift_on)})",
                ["scenario", "window", "windows", *FIGURES, "drifted [95% CI]", "s/window"], rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
