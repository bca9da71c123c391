"""Pareto frontier of (trait, coherence) and the plots logged to a sweep's parent run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steerlab.records import Trial


def frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (trait, coherence), both maximised; sorted by trait."""
    idx = []
    for i, (t, c) in enumerate(points):
        dominated = any(
            (t2 >= t and c2 >= c) and (t2 > t or c2 > c)
            for j, (t2, c2) in enumerate(points)
            if j != i
        )
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def plot_frontier(trials: list[Trial], front: list[int], threshold: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(
        [t.coherence for t in trials], [t.trait for t in trials], s=14, alpha=0.5, label="trials"
    )
    ax.plot(
        [trials[i].coherence for i in front],
        [trials[i].trait for i in front],
        "r.-",
        label="Pareto frontier",
    )
    ax.axvline(threshold, color="gray", ls="--", lw=1, label=f"coherence {threshold:g}")
    ax.set_xlabel("coherence")
    ax.set_ylabel("trait")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(trials: list[Trial], path: Path) -> Path:
    """Layer x coef maps of trait and coherence (one dot per single-layer trial, colour = score;
    ensemble trials have no single layer and are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [t for t in trials if t.layer is not None and t.coef is not None]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key in zip(axes, ("trait", "coherence"), strict=True):
        sc = ax.scatter(
            [t.layer for t in single],
            [t.coef for t in single],
            c=[getattr(t, key) for t in single],
            cmap="viridis",
            vmin=0,
            vmax=100,
            s=40,
        )
        ax.set_title(key)
        ax.set_xlabel("layer")
        ax.set_yscale("log")
        fig.colorbar(sc, ax=ax)
    axes[0].set_ylabel("coef")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
