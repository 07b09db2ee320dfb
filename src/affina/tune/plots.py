"""The search plot: each trial's objective with the best so far (pruned trials at their last
intermediate value), and, once there is enough to tell, how much each parameter mattered."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_search"]


def plot_search(study, path: Path, objective: str) -> Path | None:
    import optuna

    State = optuna.trial.TrialState
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (State.COMPLETE, State.PRUNED)]
    if not trials:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    importances = _importances(study)
    fig, axes = plt.subplots(1, 2 if importances else 1, figsize=(11 if importances else 7, 4), dpi=120,
                             squeeze=False)
    ax = axes[0][0]
    complete = [t for t in trials if t.state == State.COMPLETE]
    pruned = [t for t in trials if t.state == State.PRUNED and t.intermediate_values]
    maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if complete:
        ax.plot([t.number for t in complete], [t.value for t in complete], "o", color="#1f77b4",
                label="complete")
        best, xs, ys = None, [], []
        for t in sorted(complete, key=lambda t: t.number):
            if best is None or (t.value > best if maximise else t.value < best):
                best = t.value
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="#d62728", label="best so far")
    if pruned:
        sign = -1.0 if maximise else 1.0  # intermediate values are negated losses when maximising
        ax.plot([t.number for t in pruned],
                [sign * t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", color="#7f7f7f", markersize=9, label="pruned (validation loss when stopped)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"optimisation history: {study.study_name}")
    ax.grid(alpha=0.3)
    ax.legend()
    if importances:
        ax2 = axes[0][1]
        names = list(importances)[::-1]
        ax2.barh(names, [importances[n] for n in names], color="#2ca02c")
        ax2.set_xlabel("importance (fANOVA)")
        ax2.set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _importances(study) -> dict[str, float]:
    """Importances need two or more complete trials over a parameter that varied."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    varied = {k for k in {k for t in complete for k in t.params}
              if len({repr(t.params.get(k)) for t in complete}) > 1}
    if len(complete) < 2 or not varied:
        return {}
    return optuna.importance.get_param_importances(study, params=sorted(varied))
