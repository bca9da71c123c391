"""Pure analysis over the results model (`steerlab.records`) that the report's sections share:
traits grouped, mean baselines, a key's operating range and the cosine of two vector rows. The
best-trial rules themselves are records' (`Key.best`, `best_of`); how sure each number is, the
`uncertainty` module's."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from steerlab.records import Key, Trial

WINDOW = 5.0  # operating range: valid trials whose trait is within this many points of the best


def groups(keys: Iterable[Key]) -> dict[str, list[Key]]:
    """Keys by their group label (trait, or trait and model), groups sorted by label."""
    out: dict[str, list[Key]] = {}
    for k in keys:
        out.setdefault(k.group, []).append(k)
    return dict(sorted(out.items()))


def baseline(keys: Iterable[Key]) -> tuple[float | None, int]:
    """Mean `baseline_trait` of the keys' sweeps, and how many sweeps logged one."""
    vals = [b for k in keys for s in k.sweeps if (b := s.baseline) is not None]
    return (sum(vals) / len(vals) if vals else None), len(vals)


def operating_range(key: Key, window: float = WINDOW) -> list[Trial]:
    """Valid single-layer trials of the key's sweeps within `window` trait points of its best."""
    best = key.best()
    if best is None:
        return []
    top = best[0].trait
    return [
        t
        for s in key.sweeps
        for t in s.trials
        if t.valid and not t.weights and t.layer is not None and t.trait >= top - window
    ]


def cosine(a: Any, b: Any) -> float:
    """Cosine of two tensors in float64; nan when either is zero."""
    import torch

    a, b = a.double(), b.double()
    den = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(torch.dot(a, b)) / den if den else math.nan
