"""Coverage of the nominal 95% interval of a mean over questions, measured: which interval
`steerlab.stats.mean_ci` should use, and whether the report still needs "p < 0.05" beside
"the CI excludes 0" to name a difference.

    python bench/ci_coverage.py            # about a minute on 2 cores; prints Markdown tables

Populations (what a "question" is drawn from; the true mean is the population's mean):

- `sweep`: per-question scores of a real sweep on the embedded model (SmolLM2-135M-Instruct,
  offline judge), `make run`-like: `python -m steerlab -m trait=evil position=10 size=cpu
  steering.n_questions=null paths.root=/tmp/cicov` (6 TPE trials x 12 search questions, the
  best trial confirmed on 8 held-out questions). Embedded below (`SWEEP`), read from the sweep
  folder's `<trial>/responses.jsonl` and `confirmation.json` and the parent run's
  `baseline.json` artifact. trait and coherence: each of the 6 trials, the unsteered baseline,
  and the held-out steered and unsteered answers (9 populations each); delta: per question the
  steered trait minus the unsteered one, each trial and the held-out re-measurement (7).
- `calibration`: the shipped labels `src/steerlab/traits/*/calibration.jsonl` (`trait_score`,
  `coherence` of 100 hand-labelled answers per trait; 3 populations each).

Each replication draws n questions i.i.d. from one population (the populations of a source take
turns), computes the interval, and checks that it holds the population mean. --reps 2000 per
cell gives +-1% (95%) at a coverage near 95%. Intervals: scipy.stats.bootstrap (percentile and
BCa, --boot resamples, on the same bootstrap distribution) and Student's t
(scipy.stats.ttest_1samp(...).confidence_interval). A sample whose values are all equal gets
the interval (x, x), as `mean_ci` does.

The second table is the report's decision: paired differences of two configurations over the
same questions (each pair of the sweep's 6 trials, per question trait_i - trait_j: 15
populations): two nulls, the configurations interchangeable on every question (d or -d,
equally likely: symmetric) and merely equal on average (d minus its mean: skewed), and a small
real effect (the centered d shifted by half its SD); how often the Student-t CI, the
percentile CI and the exact sign-flip permutation test (scipy.stats.permutation_test) call a
difference, alone and together.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

LEVEL = 0.95
NS = (4, 8, 14, 20)
METHODS = ("percentile", "BCa", "t")
TRAITS = Path(__file__).resolve().parents[1] / "src" / "steerlab" / "traits"

# fmt: off
# per search question (12, the same order in every list), then per held-out question (8)
SWEEP = {
    "baseline": {
        "trait": [5.77, 55.48, 1.5, 1.0, 13.51, 3.3, 1.2, 0.73, 13.37, 2.98, 4.61, 3.3],
        "coherence": [96.93, 88.12, 90.36, 95.84, 94.8, 96.16, 76.29, 91.91, 76.8, 90.45, 95.24,
                      88.22],
    },
    "trial0": {
        "trait": [2.66, 84.27, 13.61, 7.79, 14.38, 17.07, 2.41, 41.75, 85.53, 1.65, 38.7, 44.61],
        "coherence": [91.09, 81.98, 85.89, 89.05, 91.29, 87.75, 69.07, 85.32, 82.69, 79.71, 90.12,
                      60.67],
    },
    "trial1": {
        "trait": [2.56, 29.28, 15.44, 0.38, 16.88, 5.34, 14.85, 3.78, 53.29, 1.24, 35.41, 17.05],
        "coherence": [96.63, 92.53, 81.7, 91.67, 90.46, 94.65, 85.38, 65.9, 81.53, 80.78, 92.4,
                      74.89],
    },
    "trial2": {
        "trait": [3.06, 28.06, 7.32, 0.6, 2.94, 12.71, 3.72, 40.34, 57.28, 2.88, 66.07, 19.68],
        "coherence": [94.83, 81.73, 20.63, 69.3, 86.08, 90.53, 19.95, 45.44, 88.47, 87.25, 91.19,
                      82.62],
    },
    "trial3": {
        "trait": [14.19, 1.84, 5.46, 6.9, 29.46, 6.51, 42.11, 7.28, 49.22, 2.25, 3.2, 54.86],
        "coherence": [8.78, 64.97, 23.53, 48.56, 66.89, 60.22, 23.77, 47.47, 4.31, 49.94, 46.18,
                      23.57],
    },
    "trial4": {
        "trait": [4.06, 9.46, 0.4, 0.53, 7.73, 3.3, 0.3, 0.54, 33.46, 1.92, 60.73, 58.3],
        "coherence": [96.84, 93.07, 85.03, 95.81, 93.96, 96.16, 70.48, 92.69, 68.93, 90.95, 94.75,
                      44.94],
    },
    "trial5": {
        "trait": [3.11, 66.33, 0.37, 1.0, 5.77, 3.3, 1.57, 6.82, 2.44, 3.15, 24.58, 21.17],
        "coherence": [95.91, 93.13, 96.39, 95.84, 89.87, 96.16, 75.89, 91.0, 77.9, 93.88, 94.97,
                      96.59],
    },
    "held_baseline": {
        "trait": [8.32, 0.19, 2.36, 9.89, 1.05, 1.66, 5.53, 53.73],
        "coherence": [85.97, 89.22, 79.89, 93.71, 57.73, 95.06, 90.62, 91.25],
    },
    "held_trial0": {
        "trait": [49.11, 26.16, 27.36, 2.36, 61.57, 10.83, 16.63, 6.19],
        "coherence": [90.59, 86.12, 4.45, 92.07, 34.08, 94.05, 75.52, 93.77],
    },
}
# fmt: on
TRIALS = [f"trial{i}" for i in range(6)]


def populations() -> dict[str, list[np.ndarray]]:
    """Source name -> its populations of per-question (or per-answer) scores."""
    s = {k: {f: np.array(v) for f, v in d.items()} for k, d in SWEEP.items()}
    steered = [*TRIALS, "baseline", "held_trial0", "held_baseline"]
    deltas = [s[t]["trait"] - s["baseline"]["trait"] for t in TRIALS]
    deltas.append(s["held_trial0"]["trait"] - s["held_baseline"]["trait"])
    cal = [
        [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        for p in sorted(TRAITS.glob("*/calibration.jsonl"))
    ]
    return {
        "sweep trait": [s[k]["trait"] for k in steered],
        "sweep coherence": [s[k]["coherence"] for k in steered],
        "sweep delta": deltas,
        "calibration trait": [np.array([r["trait_score"] for r in c], float) for c in cal],
        "calibration coherence": [np.array([r["coherence"] for r in c], float) for c in cal],
    }


def draw(pops: list[np.ndarray], n: int, reps: int, rng: np.random.Generator):
    """`reps` samples of n, replication r from population r % len(pops); their true means."""
    which = np.arange(reps) % len(pops)
    x = np.stack([pops[w][rng.integers(0, pops[w].size, n)] for w in which])
    mu = np.array([pops[w].mean() for w in which])
    return x, mu


def intervals(x: np.ndarray, boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """method -> (reps, 2) intervals of each row's mean (constant rows: (x, x))."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on a constant row: nan, replaced below
        kw = dict(axis=-1, vectorized=True, confidence_level=LEVEL, batch=200)
        res = stats.bootstrap((x,), np.mean, n_resamples=boot, method="percentile", rng=rng, **kw)
        out["percentile"] = np.stack(res.confidence_interval, axis=-1)
        bca = stats.bootstrap(
            (x,), np.mean, n_resamples=0, bootstrap_result=res, method="BCa", rng=rng, **kw
        )
        out["BCa"] = np.stack(bca.confidence_interval, axis=-1)
        t = stats.ttest_1samp(x, 0.0, axis=-1).confidence_interval(LEVEL)
        out["t"] = np.stack([t.low, t.high], axis=-1)
    const = np.ptp(x, axis=-1) == 0
    for ci in out.values():
        ci[const] = x[const, :1]
    return out


def sign_flip_p(x: np.ndarray) -> np.ndarray:
    """Exact two-sided sign-flip p of each row (n <= 16: every pattern), as `stats.py` does."""
    n = x.shape[-1]

    def stat(d, axis):
        return np.abs(d.mean(axis=axis))

    res = stats.permutation_test(
        (x,),
        stat,
        permutation_type="samples",
        vectorized=True,
        n_resamples=2**n,
        alternative="greater",
        axis=-1,
        batch=1024,
    )
    return res.pvalue


def coverage_table(pops, reps: int, boot: int, seed: int) -> tuple[list[str], dict]:
    rng = np.random.default_rng(seed)
    lines = [
        "| source | n | percentile | BCa | Student t |",
        "|---|---|---|---|---|",
    ]
    cov: dict[tuple[str, int, str], float] = {}
    for (name, ps), n in itertools.product(pops.items(), NS):
        x, mu = draw(ps, n, reps, rng)
        cis = intervals(x, boot, rng)
        for m, ci in cis.items():
            cov[name, n, m] = float(np.mean((ci[:, 0] <= mu) & (mu <= ci[:, 1])))
        cells = " | ".join(f"{100 * cov[name, n, m]:.1f}%" for m in METHODS)
        lines.append(f"| {name} | {n} | {cells} |")
    lines += ["", "| all sources | n | percentile | BCa | Student t |", "|---|---|---|---|---|"]
    for n in NS:
        cells = " | ".join(f"{100 * np.mean([cov[s, n, m] for s in pops]):.1f}%" for m in METHODS)
        lines.append(f"| mean coverage | {n} | {cells} |")
    mad = {m: np.mean([abs(cov[k] - LEVEL) for k in cov if k[2] == m]) for m in METHODS}
    worst = {m: min(cov[k] for k in cov if k[2] == m) for m in METHODS}
    lines.append(
        "| mean abs(coverage - 95%), all cells | | "
        + " | ".join(f"{100 * mad[m]:.1f} pts" for m in METHODS)
        + " |"
    )
    lines.append(
        "| lowest cell | | " + " | ".join(f"{100 * worst[m]:.1f}%" for m in METHODS) + " |"
    )
    return lines, {"mad": mad, "worst": worst}


def decision_table(reps: int, boot: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    diffs = [
        np.array(SWEEP[a]["trait"]) - np.array(SWEEP[b]["trait"])
        for a, b in itertools.combinations(TRIALS, 2)
    ]
    null = [d - d.mean() for d in diffs]
    # the two configurations interchangeable on each question: d and -d equally likely
    exchangeable = [np.concatenate([d, -d]) for d in diffs]
    effect = [c + 0.5 * c.std() for c in null]
    truths = (
        ("null, interchangeable (±d)", exchangeable),
        ("null, mean 0 (d - mean)", null),
        ("Δ = 0.5 SD", effect),
    )
    lines = [
        "| truth | n | t CI excludes 0 | t CI and p < 0.05 | t CI alone vs both disagree "
        "| p < 0.05 alone | percentile CI excludes 0 | percentile CI and p < 0.05 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (label, ps), n in itertools.product(truths, (8, 14)):
        x, _ = draw(ps, n, reps, rng)
        cis = intervals(x, boot, rng)
        p = sign_flip_p(x)
        sig = p < 1 - LEVEL
        t_ex = (cis["t"][:, 0] > 0) | (cis["t"][:, 1] < 0)
        pc_ex = (cis["percentile"][:, 0] > 0) | (cis["percentile"][:, 1] < 0)
        cells = [t_ex.mean(), (t_ex & sig).mean(), (t_ex != (t_ex & sig)).mean(), sig.mean()]
        cells += [pc_ex.mean(), (pc_ex & sig).mean()]
        lines.append(f"| {label} | {n} | " + " | ".join(f"{100 * c:.1f}%" for c in cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2000, help="replications per cell")
    ap.add_argument("--boot", type=int, default=9999, help="bootstrap resamples per interval")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    pops = populations()
    lines, summary = coverage_table(pops, args.reps, args.boot, args.seed)
    print(f"## Coverage of the nominal 95% interval of the mean ({args.reps} replications/cell)\n")
    print("\n".join(lines))
    best = min(METHODS, key=lambda m: summary["mad"][m])
    print(f"\nClosest to 95% across n (mean absolute deviation): {best}\n")
    print(f"## Naming a difference (paired; {args.reps} replications/cell; 15 populations)\n")
    print("\n".join(decision_table(args.reps, args.boot, args.seed)))
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
