"""No point asked twice in a study, however its workers were started.

Two rules: every process but the study's creator samples with a seed of its own (`sampler_seed`),
and a trial asked for a point that a COMPLETE or RUNNING trial already has is told PRUNED, never
counted, and asked again (`drop_repeats`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from steerlab.search import pruning
from steerlab.search.storage import worker_id


def sampler_seed(seed: int, study: optuna.Study, created: bool) -> int:
    """`seed` for the process that created the study (one process alone reproduces its
    search); for every other (a resumed study, a worker that joined, however it was started)
    `seed` mixed with the trial count and this worker's host and pid, so none replays another's
    points. Only one process creates a study, so two started at the same moment differ."""
    if created:
        return int(seed)
    n = len(study.get_trials(deepcopy=False))
    who = zlib.crc32(worker_id().encode())
    return (int(seed) * 1_000_003 + n * 7919 + who) % (2**31 - 1)


def repeats(study: optuna.Study, trials: Sequence[optuna.trial.Trial]) -> list[int]:
    """Asked trials whose parameters a COMPLETE, pruned or RUNNING trial already has (or an earlier
    one of `trials`): the no-point-asked-twice rule. A retry repeats its failed trial, which is
    neither, so it passes unless another retry or trial has its point; points placed on purpose
    (`search.enqueue`, a strategy's placements) always pass."""
    asked = {t.number for t in trials}
    known = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.RUNNING or pruning.recorded(t)  # a pruned point is known
    ]
    seen = {_key(t.params) for t in known if t.number not in asked and t.params}
    fixed = {
        t.number
        for t in known
        if t.number in asked and "fixed_params" in t.system_attrs
        and "failed_trial" not in t.system_attrs
    }  # fmt: skip
    out = []
    for t in trials:
        if t.number in fixed or not t.params:
            continue
        key = _key(t.params)
        if key in seen:
            out.append(t.number)
        seen.add(key)
    return out


def _key(params: dict[str, Any]) -> tuple:
    return tuple(
        sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items())
    )


def drop_repeats(study: optuna.Study, trials: list[Any]) -> list[Any]:
    """The asked trials less `repeats`, which are told PRUNED (never counted) with the attr
    `repeat`: a point is evaluated once per study, whichever worker asked it."""
    again = set(repeats(study, trials))
    for t in trials:
        if t.number in again:
            t.set_user_attr("repeat", True)
            study.tell(t, state=TrialState.PRUNED)
    return [t for t in trials if t.number not in again]
