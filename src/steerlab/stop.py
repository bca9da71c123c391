"""A worker told to stop: SLURM's preemption, `scancel` or a time limit (SIGTERM, then SIGKILL
after `KillWait`, 30 s by default), or Ctrl-C (SIGINT).

The first signal raises `Stopped` where the worker is (mid-generation included), except inside
`held()`, which delays it to the block's end: between asking a trial and tagging it with its
worker a stop would leave a trial nobody can name as this worker's. The sweep then gives every
trial this worker has in flight back to the study at once, with the reason, so other workers
re-try them without waiting for `search.grace_period`, and the process exits with 128 + the
signal's number (143 for SIGTERM, 130 for SIGINT). A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):  # noqa: N818 - not an error: what `except Exception` must not eat
    """The worker was told to stop by a signal; `given_back` counts the trials it returned."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.code = 128 + signum
        self.given_back = 0


class _State:
    told: list[int] = []  # signals received inside on_signals()
    holding = 0  # depth of held() blocks
    due: int | None = None  # a signal that arrived while held


@contextmanager
def on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `Stopped` inside the block (the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.told, _State.holding, _State.due = [], 0, None

    def handler(signum: int, frame: object) -> None:
        if _State.told:  # told twice: no more cleaning up
            os._exit(128 + signum)
        _State.told.append(signum)
        if _State.holding:
            _State.due = signum
        else:
            raise Stopped(signum)

    before = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@contextmanager
def held() -> Iterator[None]:
    """Delay a stop to the end of the block (which should be short)."""
    _State.holding += 1
    try:
        yield
    finally:
        _State.holding -= 1
        if not _State.holding and _State.due is not None:
            signum, _State.due = _State.due, None
            raise Stopped(signum)


def stopped_in(e: BaseException | None) -> Stopped | None:
    """The stop behind an error: a signal that lands inside a database call comes back as the
    driver's or Optuna's own error, the `Stopped` in its chain of causes."""
    for _ in range(8):
        if e is None or isinstance(e, Stopped):
            return e
        e = e.__cause__ or e.__context__
    return None
