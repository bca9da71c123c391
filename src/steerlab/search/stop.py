"""A worker told to stop: SLURM's preemption, `scancel` or a time limit (SIGTERM, then SIGKILL
after `KillWait`, 30 s by default), or Ctrl-C (SIGINT).

The first signal raises `Stopped` where the worker is (mid-generation included); the sweep gives
its trials in flight back to the study at once, with the reason, so other workers re-try them
without waiting for `search.grace_period`, and the process exits with 128 + the signal's number
(143 for SIGTERM, 130 for SIGINT). A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):  # noqa: N818 - not an error: what `except Exception` must not eat
    """The worker was told to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.code = 128 + signum


@contextmanager
def on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `Stopped` inside the block (the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    told: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if told:  # told twice: no more cleaning up
            os._exit(128 + signum)
        told.append(signum)
        raise Stopped(signum)

    before = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
