"""The learning curve: training and validation loss against optimiser steps."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_learning_curve", "loss_series"]


def loss_series(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    return train, val


def plot_learning_curve(log_history: list[dict], path: Path, title: str = "") -> Path | None:
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
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (mean over loss tokens)")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
