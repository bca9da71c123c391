"""Uncertainty of per-question scores: bootstrap confidence intervals, paired comparisons, a
trial's intervals (`score_intervals`) and a sweep's held-out re-measurement (`Confirmation`).

A configuration's score is a mean over questions, so its uncertainty comes from which questions
were asked. Every function resamples *questions* (rollouts of one question are averaged first, so
a question counts once however many answers it has). Everything is seeded: the same scores give
the same intervals and p-values, so a report is reproducible.

The algorithms, exactly (a test recomputes them independently):

- `bootstrap_ci(x)`: `rng = numpy.random.default_rng(seed)`; `idx = rng.integers(0, n, (B, n))`;
  the B means `x[idx].mean(1)`; the interval is their `numpy.quantile` at (1 - level) / 2 and
  (1 + level) / 2. One value: (x, x).
- `sign_flip_p(d)`: the two-sided paired permutation test of mean(d) = 0. Every sign pattern
  when n <= EXACT_MAX (2^n patterns, exact), else `rng.choice([-1, 1], (B, n))` with the first
  pattern all +1; p = the share of patterns whose |mean(s * d)| >= |mean(d)| (1e-9 tolerance).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

SEED = 0
N_BOOT = 10_000
LEVEL = 0.95
EXACT_MAX = 16  # sign-flip tests enumerate all 2^n patterns up to this many questions
TOL = 1e-9

Interval = tuple[float, float]
SCORES = ("trait", "coherence", "delta")  # a trial's means; `<score>_lo`, `<score>_hi` bound them


def bootstrap_ci(
    values: Sequence[float], seed: int = SEED, n_boot: int = N_BOOT, level: float = LEVEL
) -> Interval | None:
    """Percentile bootstrap interval of the mean of `values`; None when there are none."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return None
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def sign_flip_p(diffs: Sequence[float], seed: int = SEED, n_perm: int = N_BOOT) -> float:
    """Two-sided p-value of a paired permutation (sign-flip) test that mean(diffs) is 0."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return 1.0
    if d.size <= EXACT_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], (n_perm, d.size))
        signs[0] = 1.0
    observed = abs(d.mean())
    return float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed - TOL))


def per_question(rows: Iterable[Mapping], field: str) -> dict[str, float]:
    """Mean `field` per question over its rollouts (rows without a finite score are skipped),
    in first-seen question order."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        if (x := finite(r.get(field))) is not None:
            sums.setdefault(str(r.get("question", "")), []).append(x)
    return {q: sum(xs) / len(xs) for q, xs in sums.items()}


def fmt_ci(ci: Interval | None, sign: str = "+") -> str:
    """A 95% CI as shown everywhere: `[-1.0, +9.3]` (a delta's), `[68.2, 75.0]` with sign=""
    (a score's), `[n/a]` without per-question scores."""
    return "[n/a]" if ci is None else f"[{ci[0]:{sign}.1f}, {ci[1]:{sign}.1f}]"


def excludes_zero(ci: Interval | None) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def straddles(ci: Interval | None, threshold: float) -> bool:
    """The interval reaches both sides of `threshold` (a borderline validity)."""
    return ci is not None and ci[0] < threshold <= ci[1]


@dataclass(frozen=True)
class Paired:
    """`a - b` over the questions both answered: mean difference, its interval, p-value, n."""

    diff: float
    ci: Interval
    p: float
    n: int

    @property
    def detected(self) -> bool:
        """A difference is claimed only when the interval excludes 0 and the permutation test
        agrees (p < 1 - LEVEL): with a handful of questions the percentile bootstrap interval
        is too narrow, and a few large differences can push it off 0 alone."""
        return excludes_zero(self.ci) and self.p < 1 - LEVEL


def paired(a: Mapping[str, float], b: Mapping[str, float], seed: int = SEED) -> Paired | None:
    """Paired comparison of two configurations' per-question scores (questions in `a`'s
    order); None when they share no question."""
    common = [q for q in a if q in b]
    if not common:
        return None
    d = [a[q] - b[q] for q in common]
    ci = bootstrap_ci(d, seed)
    assert ci is not None
    return Paired(float(np.mean(d)), ci, sign_flip_p(d, seed), len(d))


def deltas(scores: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """Per question: the steered trait minus the unsteered answer's on the same question."""
    return {q: scores[q] - base[q] for q in scores if q in base}


def finite(value: Any) -> float | None:
    """A number read back from a table or a param, or None when it is absent or not finite."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------
# a trial's intervals, and a sweep's confirmation


def intervals_of(values: Mapping[str, Any]) -> tuple[Interval | None, ...]:
    """(trait, coherence, delta) intervals from `trait_lo`, `trait_hi`, ... values."""
    out: list[Interval | None] = []
    for k in SCORES:
        lo, hi = finite(values.get(f"{k}_lo")), finite(values.get(f"{k}_hi"))
        out.append(None if lo is None or hi is None else (lo, hi))
    return tuple(out)


def score_intervals(
    rows: Iterable[Mapping[str, Any]], base_rows: Iterable[Mapping[str, Any]]
) -> dict[str, float | None]:
    """The 95% bootstrap intervals of a trial's trait, coherence and delta (per question, the
    steered trait minus the unsteered one: paired), from its answers' and the baseline's rows."""
    rows = list(rows)
    trait, base = per_question(rows, "trait"), per_question(base_rows, "trait")
    return ci_columns(
        (
            bootstrap_ci(list(trait.values())),
            bootstrap_ci(list(per_question(rows, "coherence").values())),
            bootstrap_ci(list(deltas(trait, base).values())),
        )
    )


def ci_columns(cis: Sequence[Interval | None]) -> dict[str, float | None]:
    """`trait_lo`, `trait_hi`, ...: the trial table's and metrics' names of the intervals."""
    out: dict[str, float | None] = {}
    for k, ci in zip(SCORES, cis, strict=True):
        out[f"{k}_lo"], out[f"{k}_hi"] = (None, None) if ci is None else ci
    return out


@dataclass(frozen=True)
class Confirmation:
    """A sweep's best trial re-measured on answers not used to choose it (held-out steering
    questions, `confirm.rollouts` answers each): per-question means over rollouts, the steered
    trait and coherence and the unsteered trait on the same questions."""

    trial: int | None
    trait: dict[str, float]
    coherence: dict[str, float]
    baseline: dict[str, float]
    coherence_min: float

    @classmethod
    def of(
        cls,
        trial: int | None,
        rows: Iterable[Mapping[str, Any]],
        base_rows: Iterable[Mapping[str, Any]],
        coherence_min: float,
    ) -> Confirmation:
        rows = list(rows)
        return cls(
            trial,
            per_question(rows, "trait"),
            per_question(rows, "coherence"),
            per_question(base_rows, "trait"),
            coherence_min,
        )

    @cached_property
    def deltas(self) -> dict[str, float]:
        """Per question: steered trait minus unsteered trait."""
        return deltas(self.trait, self.baseline)

    @property
    def n(self) -> int:
        return len(self.deltas)

    @property
    def delta(self) -> float | None:
        d = list(self.deltas.values())
        return sum(d) / len(d) if d else None

    @cached_property  # a bootstrap: computed once
    def delta_ci(self) -> Interval | None:
        return bootstrap_ci(list(self.deltas.values()))

    @property
    def coherence_mean(self) -> float | None:
        c = list(self.coherence.values())
        return sum(c) / len(c) if c else None

    @cached_property
    def coherence_ci(self) -> Interval | None:
        return bootstrap_ci(list(self.coherence.values()))

    @property
    def valid(self) -> bool:
        c = self.coherence_mean
        return c is not None and c >= self.coherence_min

    @property
    def borderline(self) -> bool:
        return straddles(self.coherence_ci, self.coherence_min)

    def metrics(self) -> dict[str, float]:
        """The parent run's `confirm_*` metrics."""
        out = {"confirm_n": float(self.n)}
        if self.trial is not None:
            out["confirm_trial"] = float(self.trial)
        if (d := self.delta) is not None:
            out["confirm_delta"] = d
        if (c := self.coherence_mean) is not None:
            out["confirm_coherence"] = c
        for name, ci in (("delta", self.delta_ci), ("coherence", self.coherence_ci)):
            if ci is not None:
                out[f"confirm_{name}_lo"], out[f"confirm_{name}_hi"] = ci
        return out
