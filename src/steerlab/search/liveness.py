"""Trials in flight: which count, which belong to a worker that died (closed and re-tried, so no
budget is lost and a live worker's trials are never touched), heartbeats, and the surplus that
workers asking at the same moment give back."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from steerlab.search.pruning import recorded
from steerlab.search.storage import WORKER, Retry

if TYPE_CHECKING:
    from steerlab.search.study import Handle

ERROR = "error"  # trial user attr: why a trial failed by itself (it counts toward n_trials)


def close_dead(study: optuna.Study) -> list[int]:
    """Close RUNNING trials whose worker is gone and enqueue their parameters again.

    Local workers (same host) are checked by pid at once; others by Optuna's heartbeat after
    the grace period (RDB storages). Returns the closed trial numbers.
    """
    with warnings.catch_warnings():  # stable for years, still flagged experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB heartbeats; retries enqueued by Optuna
    retry = Retry()
    closed = []
    for t in dead(study):
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker closed it first
            continue
        retry(study, t)
        closed.append(t.number)
    for t in lost(study):  # closed, but its retry was never queued (e.g. the disk was full)
        retry(study, t)
    return closed


def lost(study: optuna.Study) -> list[FrozenTrial]:
    """Trials closed by the world around them (not by their own error) that no retry covers:
    every such point is evaluated again, however its run ended."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL and ERROR not in t.user_attrs and t.params
        and t.number not in retried
    ]  # fmt: skip


def dead(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials of a worker on this host that is gone (or that no worker tagged within
    a minute of asking)."""
    host, out = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(t.user_attrs.get(WORKER, ""))
        h, _, pid = who.rpartition(":")
        if who and (h != host or _alive(int(pid))):
            continue
        if not who and t.datetime_start and time.time() - t.datetime_start.timestamp() < 60:
            continue  # just asked by a worker that has not tagged it yet
        out.append(t)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def heartbeats(handle: Handle, trials: Sequence[Any]) -> Iterator[None]:
    """Record Optuna heartbeats of trials in flight (RDB storages) until the block ends, so
    another worker can tell a live worker's trials from a dead one's."""
    storage = handle.storage
    if not isinstance(storage, optuna.storages.RDBStorage) or not trials:
        yield
        return
    study_id = storage.get_study_id_from_name(handle.name)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
    stop = threading.Event()

    def beat() -> None:
        while True:
            for i in ids:  # a missed beat only shortens the grace period
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(i)
            if stop.wait(storage.get_heartbeat_interval() or 10):
                return

    thread = threading.Thread(target=beat, name="steerlab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def running(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def counted(study: optuna.Study) -> int:
    """Trials that use up `search.n_trials`: completed, pruned over questions, or failed by
    themselves (an `error`). Trials closed because their worker died, and surplus ones given
    back, do not count."""
    return sum(
        recorded(t) or (t.state == TrialState.FAIL and ERROR in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def n_failed(study: optuna.Study) -> tuple[int, int]:
    """(failed by themselves, interrupted: closed because their worker died) trial counts."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    own = sum(ERROR in t.user_attrs for t in failed)
    return own, len(failed) - own


def n_pruned(study: optuna.Study) -> int:
    """Trials pruned over questions (not the surplus given back, PRUNED too)."""
    return sum(
        t.state == TrialState.PRUNED and recorded(t) for t in study.get_trials(deepcopy=False)
    )


def fail(study: optuna.Study, trial: optuna.trial.Trial, error: str) -> None:
    """A trial that failed by itself (its configuration): it counts toward `n_trials`."""
    trial.set_user_attr(ERROR, error[:2000])
    study.tell(trial, state=TrialState.FAIL)


def give_back(study: optuna.Study, trial: optuna.trial.Trial, why: str) -> None:
    """A trial stopped by the world around it (judge down, disk full): closed with the reason,
    not counted, and its parameters queued again for the next run."""
    trial.set_user_attr("interrupted", why[:2000])
    study.tell(trial, state=TrialState.FAIL)
    frozen = study.get_trials(deepcopy=False)[trial.number]
    Retry()(study, frozen)


def release_surplus(study: optuna.Study, trials: list[Any], total: int) -> list[Any]:
    """Keep the asked trials that fit in `total` counting every worker's; give the rest back.

    Workers that asked at the same moment may together hold more than the budget: trials are
    kept by number (the lowest first, the same order every worker sees), the surplus is told
    PRUNED, which never counts."""
    running = sorted(
        t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    )
    room = total - counted(study)
    keep_numbers = set(running[: max(room, 0)])
    kept = []
    for t in trials:
        if t.number in keep_numbers:
            kept.append(t)
        else:
            t.set_user_attr("surplus", True)
            study.tell(t, state=TrialState.PRUNED)
    return kept
