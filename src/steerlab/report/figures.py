"""The report's PNG figures (matplotlib, imported only when drawing): best delta per source and
trait and the natural vectors' best delta per position (held-out numbers, 95% CI error bars), and
the same-layer cosine of the two best vector files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerlab.records import SOURCES, position_order
from steerlab.report.analyse import groups
from steerlab.report.gather import Report
from steerlab.report.uncertainty import Score, best_score

FIGURES = ("cross_trait.png", "positions.png", "cosine.png")


def draw(report: Report, out: Path) -> dict[str, str]:
    """PNG figures next to the report; returns figure name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    gs = groups(report.keys)
    bars = {
        g: [best_score(k for k in ks if k.source == s) for s in SOURCES] for g, ks in gs.items()
    }
    if any(b for bs in bars.values() for b in bs):
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(bars), 3.2))
        for j, src in enumerate(SOURCES):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(bars))]
            scores = [bs[j][1] if bs[j] else None for bs in bars.values()]
            ys = [sc.delta if sc else 0.0 for sc in scores]
            ax.bar(xs, ys, width=0.38, label=src, yerr=_yerr(scores), capsize=3)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(range(len(bars)), list(bars))
        ax.set_ylabel("best Δ, held-out (95% CI)")
        ax.legend(fontsize=7)
        made["cross_trait"] = _save(fig, out / "cross_trait.png")
    nat = {g: [k for k in ks if k.source == "natural"] for g, ks in gs.items()}
    nat = {g: ks for g, ks in nat.items() if ks}
    if nat:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        axis = sorted({k.position for ks in nat.values() for k in ks}, key=position_order)
        for n, (g, ks) in enumerate(nat.items()):
            pts = [
                (i + (n - (len(nat) - 1) / 2) * 0.06, b[1])
                for i, p in enumerate(axis)
                if (b := best_score(k for k in ks if k.position == p))
            ]
            if pts:
                xs, scores = [x for x, _ in pts], [sc for _, sc in pts]
                ys = [sc.delta for sc in scores]
                ax.errorbar(xs, ys, yerr=_yerr(scores), fmt="o-", capsize=3, label=g)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(range(len(axis)), axis)
        ax.set_ylabel("best Δ, held-out (95% CI)")
        ax.legend(fontsize=7)
        made["positions"] = _save(fig, out / "positions.png")
    cos = [c for c in report.extras.cosines if c.per_layer]
    if cos:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for c in cos:
            ax.plot(range(len(c.per_layer)), c.per_layer, ".-", label=c.group)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine (instruction vs natural)")
        ax.legend(fontsize=7)
        made["cosine"] = _save(fig, out / "cosine.png")
    return made


def _yerr(scores: list[Score | None]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars (below, above) from each score's CI (0 without)."""
    lo = [sc.delta - sc.ci[0] if sc and sc.ci else 0.0 for sc in scores]
    hi = [sc.ci[1] - sc.delta if sc and sc.ci else 0.0 for sc in scores]
    return [[max(x, 0.0) for x in lo], [max(x, 0.0) for x in hi]]


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
