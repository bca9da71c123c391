"""Agreement between judge scores and labels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho of paired values; NaN where it is undefined (fewer than 3 pairs, or one
    side constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    rho = float(spearmanr(x, y).statistic)
    return rho if math.isfinite(rho) else math.nan
