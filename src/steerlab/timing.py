"""Wall time per pipeline stage, for benchmarks: off unless `STEERLAB_TIMINGS` names a file.

Stages nest (`search/generate`, `confirm/judge`): `stage(name)` adds the time spent inside it to
its path, and `mark(event)` keeps the first time an event happened (e.g. the first recorded
trial). At exit the totals, the marks, the process start, the peak GPU memory and the engines'
compile counts are written as JSON to that file, which `bench/sweep_bench.py` reads. A profiler
is process-wide by nature, so its state is this module's.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV = "STEERLAB_TIMINGS"
_path = os.environ.get(ENV)
_stack: list[str] = []
_totals: dict[str, list[float]] = {}  # path -> [seconds, calls]
_marks: dict[str, float] = {}
_counters: dict[str, float] = {}


def enabled() -> bool:
    return _path is not None


@contextmanager
def stage(name: str, since: float | None = None) -> Iterator[None]:
    """Time the block under `<enclosing stages>/name` (nothing when timings are off), from
    `since` (a `time.perf_counter()` reading) when the stage began before the block."""
    if _path is None:
        yield
        return
    _stack.append(name)
    path, t0 = "/".join(_stack), time.perf_counter() if since is None else since
    try:
        yield
    finally:
        _stack.pop()
        tot = _totals.setdefault(path, [0.0, 0])
        tot[0] += time.perf_counter() - t0
        tot[1] += 1


def mark(event: str) -> None:
    """Remember when `event` first happened (seconds since the epoch)."""
    if _path is not None:
        _marks.setdefault(event, time.time())


def count(name: str, n: float = 1) -> None:
    if _path is not None:
        _counters[name] = _counters.get(name, 0) + n


def _peak_gib() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**30


def _compile_phases() -> str | None:
    """Dynamo's own table of compile time per phase (tracing, inductor...), when it compiled."""
    utils = sys.modules.get("torch._dynamo.utils")
    try:
        return utils.compile_times(repr="str", aggregate=True) if utils else None
    except Exception:  # noqa: BLE001 - a diagnostic; never fail the run's exit over it
        return None


def snapshot() -> dict[str, Any]:
    import psutil

    return {
        "process_start": psutil.Process().create_time(),
        "stages": {k: {"s": v[0], "calls": int(v[1])} for k, v in _totals.items()},
        "marks": dict(_marks),
        "counters": dict(_counters),
        "peak_gib": _peak_gib(),
        "compile_phases": _compile_phases(),
    }


@atexit.register
def _write() -> None:
    if _path is not None:
        Path(_path).write_text(json.dumps(snapshot(), indent=1))
