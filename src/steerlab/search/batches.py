"""One batch of trials evaluated: one batched generate and judge for all its configurations, or
two with pruning over questions (`pruning.py`): the first share of the questions for every
trial, the rest for the trials not pruned."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from steerlab import runner as rn
from steerlab.config import SteeringConfig
from steerlab.evaluate import Result, joined
from steerlab.search import pruning

log = logging.getLogger("steerlab.sweeper")


@dataclass
class Pruned:
    """A trial stopped after the first pass: its result on the questions it answered."""

    result: Result
    why: str


def evaluate(
    runner: rn.Runner,
    setup: rn.Setup,
    steers: list[SteeringConfig],
    root: Path,
    infra: tuple[type[BaseException], ...],
    questions: list[str] | None = None,
) -> list[Any]:
    """One batched generate for all K; if it fails, each alone, so one bad trial fails alone
    (its exception is returned in its place). `infra` errors are the world's: raised."""
    try:
        return runner.evaluate(setup, steers, root, questions)
    except infra:
        raise  # not the configurations' fault: the caller gives the trials back
    except Exception as e:  # noqa: BLE001 - retried one by one, which reports
        log.warning("batched evaluation failed (%s); running trials one by one", e)
    out: list[Any] = []
    for s in steers:
        try:
            out += runner.evaluate(setup, [s], root, questions)
        except infra:
            raise
        except Exception as e:  # noqa: BLE001 - recorded as the trial's failure
            out.append(e)
    return out


def staged(
    runner: rn.Runner,
    setup: rn.Setup,
    steers: list[SteeringConfig],
    root: Path,
    infra: tuple[type[BaseException], ...],
    trials: list[optuna.trial.Trial],
    search: Any,
) -> list[Any]:
    """`evaluate` in two passes, pruning between them (`search.prune`); each trial's outcome:
    a `Result` over every question, a `Pruned`, or its exception. Every trial that answers
    every question reports them all, so that it can be the best the next ones are tested
    against."""
    questions = list(setup.questions)
    first = pruning.first_questions(
        len(questions), float(search.prune.first), int(search.seed), trials[0].number
    )
    rest = [i for i in range(len(questions)) if i not in first]
    out = evaluate(runner, setup, steers, root, infra, [questions[i] for i in first])
    go = []
    for k, (t, r) in enumerate(zip(trials, out, strict=True)):
        if isinstance(r, Exception):
            continue
        if why := pruning.decide(t, first, r.rows, ask=bool(rest)):
            out[k] = Pruned(r, why)
        else:
            go.append(k)
    if not rest or not go:
        return out
    more = evaluate(
        runner, setup, [steers[k] for k in go], root, infra, [questions[i] for i in rest]
    )
    for k, r in zip(go, more, strict=True):
        if isinstance(r, Exception):
            out[k] = r
            continue
        pruning.report(trials[k], rest, r.rows)
        by_step = dict(zip(first, out[k].rows, strict=True)) | dict(zip(rest, r.rows, strict=True))
        rows = [by_step[i] for i in range(len(questions))]
        out[k] = joined(rows, setup.coherence_min, setup.base.trait)
    return out
