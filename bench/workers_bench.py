"""Trials per minute of one study with 1 and with N worker processes (`make workers`' split).

    python bench/workers_bench.py                 # embedded model, 1 vs 2 workers, 12 trials
    python bench/workers_bench.py --workers 1 4 --trials 24 --model-args model=...

Each run is a fresh study on Optuna's journal storage (several processes on one host) sharing one
warm cache (elicitation, vectors, judge fit and baseline computed once beforehand), so the figure
is the sweep itself: process start, model load, batched steering, judging and recording. Without
GPUs the CPU cores are split between workers (OMP_NUM_THREADS = cores / N), as scripts/workers.sh
does. Ends with one line: `trials_per_min_<n>=<x> ... scaling=<N workers / 1 worker>`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import SMALL  # noqa: E402 - the test suite's CPU-sized study on the embedded model

STUDY = [*SMALL, "search.batch_size=2", "search.storage=journal", "tracking.enabled=false"]


def steerlab(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "steerlab", "-m", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(n: int, trials: int, base: list[str], cache: Path) -> float:
    """Wall seconds for `n` workers to finish a fresh study of `trials` trials."""
    root = Path(tempfile.mkdtemp(prefix=f"workers{n}-"))
    args = [*base, f"paths.root={root}", f"paths.cache={cache}", f"search.n_trials={trials}"]
    threads = str(max(1, (os.cpu_count() or 1) // n))
    t0 = time.perf_counter()
    procs = [steerlab(args, os.environ | {"OMP_NUM_THREADS": threads}) for _ in range(n)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed:\n{err[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--model-args", nargs="*", default=[], help="extra overrides (e.g. model=...)")
    a = p.parse_args()
    base = [*STUDY, *a.model_args]
    cache = Path(tempfile.mkdtemp(prefix="workers-cache-"))
    warm = steerlab([*base, f"paths.root={cache}/warm", f"paths.cache={cache}",
                     "search.n_trials=0"], dict(os.environ))  # fmt: skip
    if warm.wait() != 0:
        raise SystemExit(f"warm-up failed:\n{warm.stderr.read()[-2000:]}")
    rates = {}
    for n in a.workers:
        secs = run(n, a.trials, base, cache)
        rates[n] = 60 * a.trials / secs
        print(f"workers={n} trials={a.trials} wall_s={secs:.1f} trials_per_min={rates[n]:.2f}")
    first, last = a.workers[0], a.workers[-1]
    cells = " ".join(f"trials_per_min_{n}={r:.2f}" for n, r in rates.items())
    print(f"{cells} scaling={rates[last] / rates[first]:.2f}")


if __name__ == "__main__":
    main()
