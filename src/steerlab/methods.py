"""Turning positive/negative activations into a direction, per layer.

Both methods return a unit vector whose sign makes positives project higher than negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METHODS = ("mean_diff", "probe")


@dataclass(frozen=True)
class LayerStats:
    """Separation on the vector's projection: accuracy at the train midpoint, and Cohen's d."""

    train_acc: float
    val_acc: float
    cohens_d: float


def _unit_signed(v: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    v = v / v.norm().clamp_min(1e-12)
    return -v if (pos @ v).mean() < (neg @ v).mean() else v


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean(pos) - mean(neg) in fp32."""
    return _unit_signed(pos.float().mean(0) - neg.float().mean(0), pos.float(), neg.float())


def probe(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """L2 logistic regression (C=1, lbfgs) on row-normalised activations; the weights."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).float()
    x = (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=2000, random_state=seed).fit(x, y)
    return _unit_signed(torch.from_numpy(clf.coef_[0]).float(), pos.float(), neg.float())


def direction(method: str, pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> torch.Tensor:
    if method == "mean_diff":
        return mean_diff(pos, neg)
    if method == "probe":
        return probe(pos, neg, seed)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def split(n: int, val_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/val index split; val is empty when there are too few samples."""
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * val_frac)) if n >= 10 else 0
    return perm[k:], perm[:k]


def _acc(v: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, cut: float) -> float:
    if len(pos) + len(neg) == 0:
        return float("nan")
    right = int(((pos @ v) > cut).sum()) + int(((neg @ v) <= cut).sum())
    return right / (len(pos) + len(neg))


def cohens_d(a: torch.Tensor, b: torch.Tensor) -> float:
    pooled = (
        (a.var(unbiased=True) * (len(a) - 1) + b.var(unbiased=True) * (len(b) - 1))
        / max(len(a) + len(b) - 2, 1)
    ).sqrt()
    return float((a.mean() - b.mean()) / pooled.clamp_min(1e-12))


def extract_layer(
    method: str, pos: torch.Tensor, neg: torch.Tensor, val_frac: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, LayerStats]:
    """Fit on the train split, report accuracy on both splits and Cohen's d on all samples."""
    pos, neg = pos.float(), neg.float()
    (ptr, pva), (ntr, nva) = split(len(pos), val_frac, seed), split(len(neg), val_frac, seed + 1)
    v = direction(method, pos[ptr], neg[ntr], seed)
    cut = float(((pos[ptr] @ v).mean() + (neg[ntr] @ v).mean()) / 2)
    stats = LayerStats(
        train_acc=_acc(v, pos[ptr], neg[ntr], cut),
        val_acc=_acc(v, pos[pva], neg[nva], cut),
        cohens_d=cohens_d(pos @ v, neg @ v),
    )
    return v, stats
