"""Uncertainty of per-question scores: confidence intervals of a mean over questions, paired
comparisons, a trial's intervals (`score_intervals`) and a sweep's held-out re-measurement
(`Confirmation`).

A configuration's score is a mean over questions, so its uncertainty comes from which questions
were asked. Every function works on *questions* (rollouts of one question are averaged first, so
a question counts once however many answers it has). Everything is deterministic (the
permutation test is exact up to EXACT_MAX questions, seeded above): the same scores give the same
intervals and p-values, so a report is reproducible.

The algorithms, exactly (scipy.stats does the work; the tests compare with direct scipy calls
and a brute-force enumeration):

- `mean_ci(x)`: Student's t interval of the mean,
  `scipy.stats.t.interval(level, n - 1, loc=mean(x), scale=sd(x) / sqrt(n))` (sd with n - 1),
  the interval `scipy.stats.ttest_1samp(x, 0).confidence_interval(level)` gives. One value, or
  values all equal: (x, x). Chosen by measured coverage (`python bench/ci_coverage.py`,
  docs/uncertainty.md): on per-question scores of a real sweep and the calibration labels, at
  4-20 questions, it is the closest to its nominal 95% of percentile bootstrap, BCa and t (mean
  coverage 82% at n=4 and 90% at n=8, where the percentile bootstrap covered 72% and 85%).
- `sign_flip_p(d)`: the two-sided paired permutation test of mean(d) = 0,
  `scipy.stats.permutation_test((d,), |mean|, permutation_type="samples",
  alternative="greater")` (one sample, "samples": each value keeps or flips its sign). Exact
  when n <= EXACT_MAX: every one of the 2^n sign patterns, p = the share whose |mean(s * d)| >=
  |mean(d)| (ties within scipy's relative tolerance of 100 machine epsilons). Above that,
  n_perm random patterns from `numpy.random.default_rng(seed)`, p = (hits + 1) / (n_perm + 1).
  Fewer than 2 values: 1.0.

No interval reaches 95% at a handful of questions on these skewed scores: read a CI over 4
questions as roughly an 80% one, over 8 as roughly 90%.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

SEED = 0
N_PERM = 10_000  # random sign patterns of a permutation test above EXACT_MAX questions
LEVEL = 0.95
EXACT_MAX = 16  # sign-flip tests enumerate all 2^n patterns up to this many questions

Interval = tuple[float, float]
SCORES = ("trait", "coherence", "delta")  # a trial's means; `<score>_lo`, `<score>_hi` bound them


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """The `level` confidence interval of the mean of `values` (Student's t; see the module
    docstring for why); None when there are none."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return None
    if np.ptp(x) == 0:  # one value, or all equal: no spread to scale t by
        return (float(x[0]), float(x[0]))
    from scipy import stats as sps  # here: scipy.stats takes 0.5 s to import

    sem = x.std(ddof=1) / math.sqrt(x.size)
    lo, hi = sps.t.interval(level, x.size - 1, loc=x.mean(), scale=sem)
    return (float(lo), float(hi))


def _abs_mean(d: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(d.mean(axis=axis))


def sign_flip_p(diffs: Sequence[float], seed: int = SEED, n_perm: int = N_PERM) -> float:
    """Two-sided p-value of a paired permutation (sign-flip) test that mean(diffs) is 0: exact
    (all 2^n sign patterns) up to EXACT_MAX values, else `n_perm` seeded random patterns."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:  # none, or one: both of its sign patterns reach |mean(d)|
        return 1.0
    from scipy import stats as sps

    res = sps.permutation_test(
        (d,),
        _abs_mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=2**d.size if d.size <= EXACT_MAX else n_perm,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


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
        """A difference is claimed when its interval excludes 0. `p` is shown beside it, not
        required: with the t interval, also requiring p < 0.05 changed 0.1-1.6% of the calls
        in simulation, and the interval alone called 4-8% of null differences (the permutation
        test alone 5-8%); see docs/uncertainty.md. The percentile bootstrap the rule was added
        for called 9-15%."""
        return excludes_zero(self.ci)


def paired(a: Mapping[str, float], b: Mapping[str, float], seed: int = SEED) -> Paired | None:
    """Paired comparison of two configurations' per-question scores (questions in `a`'s
    order); None when they share no question."""
    common = [q for q in a if q in b]
    if not common:
        return None
    d = [a[q] - b[q] for q in common]
    ci = mean_ci(d)
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
    """The 95% intervals of a trial's trait, coherence and delta (per question, the
    steered trait minus the unsteered one: paired), from its answers' and the baseline's rows."""
    rows = list(rows)
    trait, base = per_question(rows, "trait"), per_question(base_rows, "trait")
    return ci_columns(
        (
            mean_ci(list(trait.values())),
            mean_ci(list(per_question(rows, "coherence").values())),
            mean_ci(list(deltas(trait, base).values())),
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

    @cached_property
    def delta_ci(self) -> Interval | None:
        return mean_ci(list(self.deltas.values()))

    @property
    def coherence_mean(self) -> float | None:
        c = list(self.coherence.values())
        return sum(c) / len(c) if c else None

    @cached_property
    def coherence_ci(self) -> Interval | None:
        return mean_ci(list(self.coherence.values()))

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
