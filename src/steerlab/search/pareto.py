"""Pareto frontier of (trait, coherence) and the plots logged to a sweep's parent run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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


def plot_frontier(rows: list[dict], front: list[int], threshold: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(
        [r["coherence"] for r in rows], [r["trait"] for r in rows], s=14, alpha=0.5, label="trials"
    )
    ax.plot(
        [rows[i]["coherence"] for i in front],
        [rows[i]["trait"] for i in front],
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


def plot_heatmap(rows: list[dict], path: Path) -> Path:
    """Layer x coef maps of trait and coherence (one dot per trial, colour = score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key in zip(axes, ("trait", "coherence"), strict=True):
        sc = ax.scatter(
            [r["layer"] for r in rows],
            [r["coef"] for r in rows],
            c=[r[key] for r in rows],
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
