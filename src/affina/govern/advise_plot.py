"""The advisor's picture: quality against training rows (the fine-tuning ladder as a curve,
zero-shot, few-shot and retrieval as reference lines, fine-tuning + retrieval as a point), and
beside it what each setting cost in time and memory."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_advice"]

COLOURS = {"zero-shot": "#888888", "few-shot": "#1f77b4", "rag": "#2ca02c", "fine-tune": "#d62728",
           "fine-tune+rag": "#9467bd"}


def plot_advice(arms, metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, cost) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    ladder = sorted([a for a in arms if a.name == "fine-tune" and metric in a.scores], key=lambda a: a.rows)
    if ladder:
        ax.plot([a.rows for a in ladder], [a.scores[metric] for a in ladder], "o-",
                color=COLOURS["fine-tune"], label="LoRA fine-tune", lw=2)
        for a in ladder:
            ax.annotate(f"{a.scores[metric]:.3f}", (a.rows, a.scores[metric]), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=8)
    for a in arms:
        if a.name in ("zero-shot", "few-shot", "rag") and metric in a.scores:
            ax.axhline(a.scores[metric], ls="--", color=COLOURS[a.name], label=f"{a.name} ({a.scores[metric]:.3f})")
        if a.name == "fine-tune+rag" and metric in a.scores:
            ax.plot([a.rows], [a.scores[metric]], "*", ms=14, color=COLOURS[a.name],
                    label=f"fine-tune + rag ({a.scores[metric]:.3f})")
    values = [a.scores[metric] for a in arms if metric in a.scores]
    if values:  # room around the points; a flat all-zero result still gets a readable axis
        low, high = min(values), max(values)
        pad = max(0.05, (high - low) * 0.15)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("training rows")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} on the evaluation set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    labels = [a.name if a.name not in ("fine-tune", "fine-tune+rag") else f"{a.name}\n{a.rows} rows" for a in arms]
    y = range(len(arms))
    minutes = [a.seconds / 60 for a in arms]
    cost.barh(list(y), minutes, color=[COLOURS.get(a.name, "#444") for a in arms])
    cost.set_yticks(list(y), labels, fontsize=8)
    cost.invert_yaxis()
    cost.set_xlabel("minutes (training + evaluation)")
    top = max(minutes + [1e-9])
    for i, a in enumerate(arms):
        mem = f"{(a.peak_memory or 0) / 2**30:.2f} GiB" if a.peak_memory else "-"
        cost.text(minutes[i] + top * 0.02, i, f"{a.seconds:.0f}s, peak {mem}", va="center", fontsize=8)
    cost.set_xlim(0, top * 1.6)
    cost.set_title("cost")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
