"""Pareto frontier of (trait, coherence) and the figures logged to a sweep's parent run.

Both figures mark what a reader looks for first: the best valid trial (a star) and the invalid
trials (x: mean coherence below `search.coherence_min`, so they do not count however high their
trait score), apart from the valid ones (dots).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from steerlab.records import Trial

VALID, INVALID, BEST, FRONT = "tab:blue", "0.45", "gold", "tab:red"


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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _best_label(best: Trial) -> str:
    return (
        f"best valid: trial {best.number} ({best.where()}; trait {best.trait:.1f}, "
        f"coherence {best.coherence:.1f})"
    )


def frontier_figure(
    trials: list[Trial], front: list[int], threshold: float, best: Trial | None
) -> Figure:
    """Trait against coherence: valid trials, invalid ones (x, in the shaded region left of
    the threshold), the Pareto frontier and the best valid trial."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    valid = [t for t in trials if t.valid]
    invalid = [t for t in trials if not t.valid]
    lo = min([0.0, *(t.coherence for t in trials)])
    ax.axvspan(lo, threshold, color="0.93", zorder=0)
    ax.axvline(threshold, color="0.4", ls="--", lw=1, label=f"coherence_min {threshold:g}")
    if valid:
        ax.scatter(
            [t.coherence for t in valid],
            [t.trait for t in valid],
            s=22,
            color=VALID,
            label=f"valid ({len(valid)})",
            zorder=3,
        )
    if invalid:
        ax.scatter(
            [t.coherence for t in invalid],
            [t.trait for t in invalid],
            s=26,
            marker="x",
            color=INVALID,
            label=f"invalid: coherence < {threshold:g} ({len(invalid)})",
            zorder=3,
        )
    ax.plot(
        [trials[i].coherence for i in front],
        [trials[i].trait for i in front],
        "-",
        color=FRONT,
        lw=1,
        label="Pareto frontier",
        zorder=2,
    )
    if best is not None:
        ax.scatter(
            [best.coherence],
            [best.trait],
            s=260,
            marker="*",
            color=BEST,
            edgecolors="black",
            linewidths=0.8,
            label=_best_label(best),
            zorder=4,
        )
    ax.set_xlabel("mean coherence")
    ax.set_ylabel("mean trait score")
    ax.set_title(f"trait vs coherence, {len(trials)} trials", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def plot_frontier(
    trials: list[Trial], front: list[int], threshold: float, path: Path, best: Trial | None = None
) -> Path:
    fig = frontier_figure(trials, front, threshold, best)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def layer_coef_figure(trials: list[Trial], threshold: float, best: Trial | None) -> Figure | None:
    """Layer x coef maps of trait and coherence: one marker per single-layer trial (dot: valid,
    x: invalid; colour: the score), the best valid trial ringed by a star. None when no trial
    has a single layer (ensembles)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    single = [t for t in trials if t.layer is not None and t.coef is not None]
    if not single:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key in zip(axes, ("trait", "coherence"), strict=True):
        sc = None
        for group, marker in (
            ([t for t in single if t.valid], "o"),
            ([t for t in single if not t.valid], "X"),
        ):
            if group:
                sc = ax.scatter(
                    [t.layer for t in group],
                    [t.coef for t in group],
                    c=[getattr(t, key) for t in group],
                    cmap="viridis",
                    vmin=0,
                    vmax=100,
                    s=55,
                    marker=marker,
                    edgecolors="black" if marker == "o" else "none",
                    linewidths=0.4,
                    zorder=3,
                )
        if best is not None and best.layer is not None and best.coef is not None:
            ax.scatter(
                [best.layer],
                [best.coef],
                s=420,
                marker="*",
                facecolors="none",
                edgecolors="red",
                linewidths=1.6,
                zorder=4,
            )
        ax.set_title(f"mean {key} (colour)", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        if sc is not None:
            fig.colorbar(sc, ax=ax)
    axes[0].set_ylabel("coef")
    handles = [
        Line2D([], [], ls="", marker="o", color="0.6", markeredgecolor="black", label="valid"),
        Line2D([], [], ls="", marker="X", color="0.6", label=f"invalid: coherence < {threshold:g}"),
    ]
    if best is not None and best.layer is not None:
        handles.append(
            Line2D(
                [], [], ls="", marker="*", markersize=14, markerfacecolor="none",
                markeredgecolor="red", label=_best_label(best),
            )
        )  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"layer x coef map, {len(single)} trials", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_layer_coef_map(
    trials: list[Trial], threshold: float, path: Path, best: Trial | None = None
) -> Path | None:
    fig = layer_coef_figure(trials, threshold, best)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
