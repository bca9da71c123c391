"""Pruning over questions (`search.prune`), with Optuna's own machinery.

Every trial of a batch answers the first share of the search questions (one batched generate
and judge for the whole batch); each reports its per-question trait scores (`trial.report`, the
step being the question's index in the study's list) and asks the study's pruner
(`trial.should_prune`). `QuestionPruner` stops a trial that is clearly incoherent (a one-sided
Student t bound of its mean coherence below `coherence_min`) or clearly worse than the best
valid trial on the same questions (Optuna's `WilcoxonPruner`, whose best trial is the best
feasible one: the coherence constraint is each trial's `constraints` attr). The survivors answer
the rest in a second batched pass; their answers equal those of a single pass (generation is
batch-invariant), so pruning changes which trials finish, never a finished trial's scores.

The samplers' limits, and how they are met:
- A pruned trial is told PRUNED with the user attr `pruned` (why): it counts toward `n_trials`,
  is never a result row or a best, and keeps an MLflow run tagged `steerlab.pruned`.
- Optuna calls no constraints function on PRUNED trials: steerlab writes each pruned trial's
  constraint itself (its coherence on the questions it answered), as for complete ones.
- TPE ranks PRUNED trials below every complete one (by their last reported value): a pruned
  point is not proposed again as a good one.
- GP, CMA-ES and NSGA-II ignore PRUNED trials (they would propose a pruned point again), the
  reference's staircase and `cmaes_ensemble` replay only complete trials, and the Wilcoxon test
  needs one objective: pruning is refused with them (`check`), naming what works.
- Which questions come first is drawn per batch from `search.seed` and the batch's first trial
  number (WilcoxonPruner's advice: vary the order), so a study stays repeatable.
"""

from __future__ import annotations

import math
import random
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from steerlab.errors import ConfigError
from steerlab.records import PRUNED
from steerlab.search.strategies import set_constraint

STAGE_COHERENCE = "stage_coherence"  # trial user attr: per-question coherence of the first pass
PRUNABLE = ("tpe", "random", "grid")  # samplers that read PRUNED trials (or need not)


def check(search: Any) -> None:
    """`search.prune` in range and with a sampler that handles PRUNED trials; one line else."""
    p = search.prune
    if not p.enabled:
        return
    if not (0 < p.first < 1 and 0 < p.p <= 0.5):  # p > 0.5: a "bound" below the mean itself
        raise ConfigError(
            f"search.prune.first={p.first} must lie in (0, 1) and search.prune.p={p.p} in "
            "(0, 0.5]: a test at a level above 0.5 would prune trials that are not clearly bad"
        )
    if search.sampler not in PRUNABLE or search.multi_objective:
        what = "multi_objective=true" if search.multi_objective else f"sampler={search.sampler}"
        raise ConfigError(
            f"search.prune.enabled=true does not work with search.{what}: it ignores pruned "
            f"trials or has no single objective to test; use search={'|'.join(PRUNABLE)} with "
            "one objective, or search.prune.enabled=false"
        )


def n_first(n: int, share: float) -> int:
    """How many of `n` questions come before the decision: at least two (a test needs two)."""
    return min(n, max(2, round(share * n)))


def first_questions(n: int, share: float, seed: int, batch: int) -> list[int]:
    """Indices (sorted) of the questions a batch's trials all answer before the decision,
    drawn from the seed and the batch's first trial number."""
    return sorted(random.Random(f"{seed}:{batch}").sample(range(n), n_first(n, share)))


def decide(
    trial: optuna.trial.Trial, steps: Sequence[int], rows: Sequence[dict], ask: bool = True
) -> str | None:
    """After the first pass: report the trial's answers and (`ask`: questions are left) ask the
    study's pruner; why it is pruned, or None."""
    report(trial, steps, rows)
    trial.set_user_attr(STAGE_COHERENCE, [row["coherence"] for row in rows])
    if not (ask and trial.should_prune()):
        return None
    return getattr(trial.study.pruner, "why", {}).get(trial.number, "pruned")


def report(trial: optuna.trial.Trial, steps: Sequence[int], rows: Sequence[dict]) -> None:
    """A trial's per-question trait scores as Optuna intermediate values (step: the question's
    index in the study's list)."""
    for step, row in zip(steps, rows, strict=True):
        if row["trait"] is not None and math.isfinite(row["trait"]):
            trial.report(float(row["trait"]), step)


def tell(
    study: optuna.Study,
    trial: optuna.trial.Trial,
    scores: dict[str, float],
    why: str,
    threshold: float,
) -> None:
    """Close a trial as pruned: its scores on the questions it answered, why, and its coherence
    constraint (which Optuna would not compute for a PRUNED trial)."""
    set_constraint(trial, threshold - scores["coherence"])
    for k, v in {"feasible": False, **scores, PRUNED: why}.items():
        trial.set_user_attr(k, v)
    study.tell(trial, state=TrialState.PRUNED)


def recorded(t: FrozenTrial) -> bool:
    """A trial with a result to keep (folder, MLflow run): COMPLETE, or pruned over questions
    (not a surplus trial given back, which is PRUNED too)."""
    return t.state == TrialState.COMPLETE or (
        t.state == TrialState.PRUNED and PRUNED in t.user_attrs
    )


class QuestionPruner(optuna.pruners.BasePruner):
    """Prune a trial clearly incoherent, or clearly worse than the best valid trial (Wilcoxon
    signed-rank over the questions both answered); `why[number]` says which."""

    def __init__(self, coherence_min: float, p: float) -> None:
        self.coherence_min = coherence_min
        self.p = p
        with warnings.catch_warnings():  # in Optuna since 3.6, still flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.wilcoxon = optuna.pruners.WilcoxonPruner(p_threshold=p)
        self.why: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        coh = [float(c) for c in trial.user_attrs.get(STAGE_COHERENCE, []) if c is not None]
        if (bound := upper_bound(coh, self.p)) < self.coherence_min:
            self.why[trial.number] = (
                f"incoherent: mean coherence {statistics.fmean(coh):.1f} on {len(coh)} "
                f"questions, upper {1 - self.p:.0%} bound {bound:.1f} < {self.coherence_min:g}"
            )
            return True
        if self.wilcoxon.prune(study, trial):
            best = study.best_trial.number
            self.why[trial.number] = (
                f"worse than trial {best} (the best valid) on {len(trial.intermediate_values)} "
                f"questions (Wilcoxon p < {self.p:g})"
            )
            return True
        return False


def upper_bound(xs: Sequence[float], p: float) -> float:
    """One-sided upper (1 - p) Student t bound of the mean; +inf with fewer than two values."""
    if len(xs) < 2:
        return math.inf
    from scipy import stats

    sd = statistics.stdev(xs)
    return statistics.fmean(xs) + stats.t.ppf(1 - p, len(xs) - 1) * sd / math.sqrt(len(xs))
