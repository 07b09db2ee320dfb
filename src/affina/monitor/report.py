"""The drift report for people: a terminal table, a PNG (every judged figure over time against
its threshold) and a self-contained HTML page (the table, the plot, the most-shifted prompts and
the window history)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..ui import print_table
from .drift import FIGURES, DriftReport

__all__ = ["print_report", "plot_history", "write_html"]

_PLOTTED = ("domain_classifier", "mmd", "oov_rate", "charset_mix", "reply_embedding", "feedback_rating")


def _num(x, digits=4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _status(flagged) -> str:
    return "not judged" if flagged is None else ("DRIFT" if flagged else "ok")


def table_rows(report: DriftReport) -> list[list[str]]:
    return [[f.group, f.name, _num(f.value), _num(f.threshold), _num(f.p_value), str(f.n_reference),
             str(f.n_window), _status(f.flagged), f.detail] for f in report.figures]


def print_report(report: DriftReport) -> None:
    w = report.window
    print_table(f"drift of {report.model}: {w['requests']} requests ({w['first'] or '-'} → {w['last'] or '-'}) "
                f"vs its training data ({report.reference['prompts']} prompts)",
                ["group", "figure", "value", "threshold", "p", "n ref", "n window", "status", "detail"],
                table_rows(report))
    if report.shifted:
        print_table("most-shifted prompts (farthest from any training prompt)",
                    ["request", "distance", "prompt", "nearest training prompt"],
                    [[s["request_id"][-12:], _num(s["distance"], 3), s["prompt"][:80],
                      s["nearest_training_prompt"][:60]] for s in report.shifted])
    verdict = ("not judged (too few samples)" if report.drifted is None else
               "DRIFTED" if report.drifted else "no drift")
    print(f"window verdict on {', '.join(report.drift_on)}: {verdict}")


def plot_history(history: list[dict], out: Path, title: str) -> Path:
    """One panel per figure: its value per window and its threshold, drifted windows marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in _PLOTTED if any((h["figures"].get(n) or {}).get("value") is not None for h in history)]
    names = names or ["domain_classifier"]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.1 * len(names) + 0.6), sharex=True, squeeze=False)
    xs = list(range(1, len(history) + 1))
    for ax, name in zip(axes[:, 0], names):
        vals = [(h["figures"].get(name) or {}).get("value") for h in history]
        thr = [(h["figures"].get(name) or {}).get("threshold") for h in history]
        flags = [(h["figures"].get(name) or {}).get("flagged") for h in history]
        ax.plot(xs, [float("nan") if v is None else v for v in vals], "o-", color="tab:blue", label="value")
        ax.plot(xs, [float("nan") if t is None else t for t in thr], "--", color="tab:red", label="threshold")
        bad = [(x, v) for x, v, f in zip(xs, vals, flags) if f and v is not None]
        if bad:
            ax.scatter(*zip(*bad), s=90, facecolors="none", edgecolors="tab:red", linewidths=2, label="flagged")
        for x, h in zip(xs, history):
            if h.get("drifted"):
                ax.axvspan(x - 0.5, x + 0.5, color="tab:red", alpha=0.07)
        ax.set_ylabel(name.replace("_", " "), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("window (oldest first; shaded: window drifted)")
    axes[-1, 0].set_xticks(xs)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_html(report: DriftReport, history: list[dict], out: Path, png: Path | None = None) -> Path:
    e = html.escape
    what = {n: d for n, _, d in FIGURES}
    rows = "".join(
        f"<tr class='{'bad' if f.flagged else ''}'><td>{e(f.group)}</td><td title='{e(what.get(f.name, ''))}'>"
        f"{e(f.name)}</td><td>{_num(f.value)}</td><td>{_num(f.threshold)}</td><td>{_num(f.p_value)}</td>"
        f"<td>{f.n_reference}</td><td>{f.n_window}</td><td>{_status(f.flagged)}</td><td>{e(f.detail)}</td></tr>"
        for f in report.figures)
    shifted = "".join(f"<tr><td>{e(s['request_id'])}</td><td>{_num(s['distance'], 3)}</td>"
                      f"<td>{e(s['prompt'])}</td><td>{e(s['nearest_training_prompt'])}</td></tr>"
                      for s in report.shifted)
    past = "".join(f"<tr><td>{e(str(h['time']))}</td><td>{h['window'].get('requests')}</td>"
                   f"<td>{_status(h.get('drifted')) if h.get('drifted') is not None else 'not judged'}</td>"
                   f"<td>{_num((h['figures'].get('domain_classifier') or {}).get('value'))}</td>"
                   f"<td>{_num((h['figures'].get('mmd') or {}).get('p_value'))}</td></tr>" for h in history)
    image = ""
    if png is not None and png.is_file():
        image = f"<img alt='drift over time' src='data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}'>"
    verdict = "not judged" if report.drifted is None else ("DRIFTED" if report.drifted else "no drift")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>drift: {e(report.model)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}tr.bad td{{background:#fde2e2}}
img{{max-width:100%}}</style></head><body>
<h1>Drift of {e(report.model)}</h1>
<p>Window: {report.window['requests']} answered requests ({e(str(report.window['first']))} → {e(str(report.window['last']))})
from {e(str(report.window['log']))}; reference: {report.reference['prompts']} training prompts of run {e(report.run_dir)};
replies compared with {e(str(report.reference['replies']))}. Report made {e(report.time)}.</p>
<p><b>Verdict ({e(', '.join(report.drift_on))}): {verdict}</b></p>
<table><tr><th>group</th><th>figure</th><th>value</th><th>threshold</th><th>p</th><th>n ref</th><th>n window</th>
<th>status</th><th>detail</th></tr>{rows}</table>
<h2>Drift over time</h2>{image}
<h2>Most-shifted prompts</h2><table><tr><th>request</th><th>distance</th><th>prompt</th><th>nearest training prompt</th></tr>{shifted}</table>
<h2>Windows</h2><table><tr><th>time</th><th>requests</th><th>verdict</th><th>classifier AUC</th><th>MMD p</th></tr>{past}</table>
</body></html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
