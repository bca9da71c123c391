"""What a run finds that earlier runs left undone, and finishes: trials a dead worker had
recorded (completed from their folders, not evaluated again) and trials MLflow lacks (logged from
their folders), so the study and its MLflow mirror agree after any fault.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import yaml
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from steerlab import runner as rn
from steerlab import tracking
from steerlab.config import SteeringConfig
from steerlab.records import PRUNED
from steerlab.search import liveness, pruning, runs
from steerlab.search.strategies import Strategy

log = logging.getLogger("steerlab.sweeper")


def adopt(
    study: optuna.Study,
    strategy: Strategy,
    base: SteeringConfig,
    sweep_dir: Path,
    coherence_min: float,
    multi: bool,
) -> None:
    """Trials a dead worker had recorded (its folder has its metrics: the process died between
    writing them and telling the study) are told COMPLETE from that folder, not evaluated again:
    its MLflow run, if any, stays its one run."""
    for t in liveness.dead(study):
        job = sweep_dir / str(t.number)
        try:
            steered = yaml.safe_load((job / "config.yaml").read_text())["steering"]
            scores = json.loads((job / "metrics.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not recorded (or half-written): close_dead re-tries it
        if steered != asdict(strategy.steering(t, base)):
            continue  # a folder of another study's trial of the same number
        with contextlib.suppress(ValueError, RuntimeError):  # another worker was first
            trial = optuna.trial.Trial(study, t._trial_id)
            if scores.get(PRUNED):
                why = "pruned over questions (told from its folder)"
                pruning.tell(study, trial, scores, why, coherence_min)
            else:
                strategy.tell(study, trial, scores, coherence_min, multi)
            log.info("trial %d: recorded by a worker that died, completed from %s", t.number, job)


def log_missing(
    cfg: DictConfig,
    study: optuna.Study,
    parent: str | None,
    sweep_dir: Path,
    setup: rn.Setup,
    params: dict[str, Any],
    steer_of: Callable[[FrozenTrial], SteeringConfig],
    known: list[int] | None = None,
) -> list[int]:
    """Log recorded trials (COMPLETE, or pruned over questions) that have no FINISHED MLflow
    run under the study's parent from their folders (their logging failed, or their worker died
    before it): MLflow mirrors the study, one run per trial. Every folder is read first, so
    all damaged ones are named in one pass and rebuilt from the study (`steer_of`: a trial's
    steering). Returns the numbers still unlogged: while the store cannot be read, `known`
    (those this run knows it could not log), else every recorded one."""
    todo = _missing(cfg, study, parent)
    if todo is None:  # the store cannot be read: fail fast, every trial waits for the next run
        if known is not None:
            return sorted(set(known))
        return [t.number for t in study.get_trials(deepcopy=False) if pruning.recorded(t)]
    folders = {t.number: _folder(sweep_dir / str(t.number), t, steer_of(t), params) for t in todo}
    if todo:
        with contextlib.suppress(Exception):  # the store is down: nothing to drop now either
            runs.drop_unfinished(tracking.store_of(cfg), parent, {t.number for t in todo})
    left: list[int] = []
    for t in todo:
        if left:  # the store just failed: the rest wait for the next run too
            left.append(t.number)
            continue
        span = (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
        job = sweep_dir / str(t.number)
        try:
            rn.relog(cfg, setup, job, t.number, parent, span, params, folders[t.number])
        except Exception as e:  # noqa: BLE001 - listed, and tried again by the next run
            why = tracking.why_failed(e, tracking.store_of(cfg))
            log.warning("trial %d is not in MLflow yet (%s)", t.number, why)
            left.append(t.number)
    if len(left) < len(todo):  # another worker may have logged one at once: keep one run each
        _missing(cfg, study, parent)
    return left


def _folder(job: Path, t: FrozenTrial, steer: SteeringConfig, params: dict[str, Any]) -> rn.Folder:
    """A trial's folder as read; a damaged one is named in one line and rebuilt from the study,
    which holds the trial's steering and scores (answers that cannot be read are lost: their
    file is kept beside as `<name>.damaged`)."""
    try:
        return rn.read_trial(job)
    except rn.FolderError as e:
        metrics = e.got.get("metrics.json") or {
            k: float(v)
            for k, v in t.user_attrs.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "fitness"
        }
        rows = e.got.get("responses.jsonl", [])
        for name in e.bad:
            if (job / name).exists():
                (job / name).replace(job / f"{name}.damaged")
        rn.write_trial(job, params, steer, rows, metrics)
        lost = "; its answers are lost" if "responses.jsonl" in e.bad else ""
        log.warning("trial %d: %s: rebuilt from the study%s", t.number, e, lost)
        return rn.read_trial(job)


def unlogged(
    cfg: DictConfig, study: optuna.Study, parent: str | None, known: list[int]
) -> list[int]:
    """Numbers of recorded trials without a FINISHED MLflow run under the study's parent; while
    the store cannot be read, `known`: those this run knows it could not log."""
    missing = _missing(cfg, study, parent)
    return sorted(set(known)) if missing is None else [t.number for t in missing]


def _missing(cfg: DictConfig, study: optuna.Study, parent: str | None) -> list[FrozenTrial] | None:
    """Recorded trials (COMPLETE, or pruned) without a FINISHED run; None if the store cannot
    be read (none without a parent: tracking is off)."""
    if not parent:
        return []
    store = tracking.store_of(cfg)
    try:
        logged = runs.logged_trials(store, parent)  # before the study: see `runs.mirror`
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if pruning.recorded(t)]  # COMPLETE, or pruned
        live = {t.number for t in trials if not t.state.is_finished()}
        have = runs.mirror(store, logged, {t.number for t in done}, live)
    except Exception as e:  # noqa: BLE001 - any failure: the store cannot say what it has
        why = tracking.why_failed(e, store)
        log.warning("MLflow store unreachable (%s); trials are logged by the next run", why)
        return None
    return [t for t in done if t.number not in have]
