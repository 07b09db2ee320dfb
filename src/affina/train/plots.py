"""The learning curve: training and validation loss against optimiser steps, with the best
checkpoint and an early stop marked."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_learning_curve", "loss_series"]


def loss_series(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    val: dict[int, float] = {}
    for h in log_history:
        # The recipe validates once more after training, at the last step: with the best
        # checkpoint restored that is the best model's loss again, not a point on the curve.
        if "eval_loss" in h and "step" in h and h["step"] not in val:
            val[h["step"]] = h["eval_loss"]
    return train, list(val.items())


def plot_learning_curve(log_history: list[dict], path: Path, title: str = "", *,
                        best_step: int | None = None, stop_step: int | None = None,
                        ylabel: str = "loss (mean over loss tokens)") -> Path | None:
    """Write the curve to `path`. `best_step` marks the checkpoint kept as best; `stop_step`
    marks where early stopping ended training (None: training ran to the end)."""
    train, val = loss_series(log_history)
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#d62728")
    if stop_step is not None:
        ax.axvline(stop_step, color="#7f7f7f", linestyle="--", label=f"stopped early (step {stop_step})")
    if best_step is not None:
        best_val = dict(val).get(best_step)
        if best_val is not None:
            ax.plot([best_step], [best_val], marker="*", markersize=16, color="#2ca02c",
                    linestyle="none", label=f"best checkpoint (step {best_step})")
        else:
            ax.axvline(best_step, color="#2ca02c", linestyle=":", label=f"best checkpoint (step {best_step})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
