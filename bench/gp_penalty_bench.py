"""Why `gp` is told raw trait scores: Optuna's GPSampler with the coherence constraint, on a
synthetic layer x coef problem, told either the trait score or steerlab's single objective
(`records.objective`: trait - 100 - coherence shortfall for an invalid trial).

Trait rises with coef, most at layer 13; coherence falls with coef, most at layer 13; valid
iff coherence >= 70, so the best valid trial sits on the threshold. Prints the best valid trait
found per seed and its mean for both variants (measured: raw 57.9, penalised 38.3, 6 seeds x 18
trials, 8 random first).

    python bench/gp_penalty_bench.py [SEEDS]
"""

from __future__ import annotations

import math
import sys
import warnings

import optuna

from steerlab import records

THRESHOLD = 70.0


def scores(layer: int, coef: float) -> tuple[float, float]:
    peak = math.exp(-(((layer - 13) / 4) ** 2))
    trait = 100 / (1 + math.exp(-(coef * 12 * peak - 3)))
    coherence = 95 - 60 * coef * (0.5 + peak) - 2 * abs(layer - 13)
    return trait, coherence


def best_valid(seed: int, penalise: bool, n: int = 18) -> float:
    sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dists = {
        "layer": optuna.distributions.IntDistribution(0, 29),
        "coef": optuna.distributions.FloatDistribution(0.05, 0.6, log=True),
    }
    best = -1.0
    for _ in range(n):
        t = study.ask(dists)
        trait, coherence = scores(t.params["layer"], t.params["coef"])
        t.set_constraint("coherence", THRESHOLD - coherence)
        value = records.objective(trait, coherence, THRESHOLD) if penalise else trait
        study.tell(t, value)
        if coherence >= THRESHOLD:
            best = max(best, trait)
    return best


def main() -> None:
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = range(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
    for penalise in (False, True):
        found = [best_valid(s, penalise) for s in seeds]
        name = "penalised" if penalise else "raw trait"
        print(f"{name:>9}: {[round(x, 1) for x in found]} mean {sum(found) / len(found):.1f}")


if __name__ == "__main__":
    main()
