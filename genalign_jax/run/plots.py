"""Figures of an evaluation: accuracy per arm with 95% CIs, and the training curves of the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from genalign_jax.run.evaluate import EvalReport, paired_bootstrap

__all__ = ["plot_evaluation"]

_CURVES = (("golden/accuracy", "golden accuracy"), ("reward/sequence_mean", "mean reward"),
           ("ppo/rollout_kl", "KL to the base (nats)"))


def plot_evaluation(report: EvalReport, history: list[dict[str, Any]], path: str | os.PathLike,
                    title: str = "") -> Path:
    """Saves a PNG: test accuracy per arm (bootstrap 95% CI) and per-epoch training curves."""
    import matplotlib  # heavy optional dependency, only needed for figures
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report.correct)
    zeros = [np.zeros_like(c) for c in report.correct[arms[0]]]
    cis = [paired_bootstrap(report.correct[a], zeros, samples=1000) for a in arms]
    fig, axes = plt.subplots(1, 1 + len(_CURVES), figsize=(4.2 * (1 + len(_CURVES)), 3.4))
    means = [c["mean"] for c in cis]
    errors = np.array([[m - c["ci_low"] for m, c in zip(means, cis)],
                       [c["ci_high"] - m for m, c in zip(means, cis)]])
    axes[0].bar(arms, means, yerr=errors, capsize=6, color=["tab:green", "tab:gray", "tab:blue"][:len(arms)])
    axes[0].set_ylim(max(0.0, min(c["ci_low"] for c in cis) - 0.05), min(1.0, max(c["ci_high"] for c in cis) + 0.05))
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("classifier trained on each arm")
    epochs = [row.get("epoch") for row in history]
    for ax, (key, label) in zip(axes[1:], _CURVES):
        values = [row.get(key) for row in history]
        points = [(e, v) for e, v in zip(epochs, values) if e is not None and v is not None]
        if points:
            ax.plot(*zip(*points), marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
