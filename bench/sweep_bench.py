"""The main job, timed stage by stage: what a whole study costs on the machine it runs on.

Each study is `python -m steerlab -m ...` in its own process, as a user runs it, on random
weights of real shapes (`model=random_llama31_8b`, a random `hf` judge of Qwen2.5-7B's shape,
vetting off: random judges score at random) at the reference size (`size=reference`: every
extraction pair, 14 searched + 6 held-out questions, 128-token answers, 40 trials in one batch).
Every process writes its stage times (`STEERLAB_TIMINGS`); this prints them side by side, the
MLflow store is read back through `python -m steerlab.report`, and the last line is

    trials_per_hour= first_trial_s= gen_frac= judge_frac= other_frac= peak_gib= compiles= ...

The runs: each study of `--studies` in turn in one root (the first with an empty compile cache:
cold), then the first study again in a fresh root with the compile cache the others left (warm:
a second process on the same machine). `--tiny` runs the same path on tiny shapes, on any CPU.

    python bench/sweep_bench.py                                  # a GPU: 8B shapes, reference size
    python bench/sweep_bench.py --tiny                           # any machine, a minute
    python bench/sweep_bench.py -- search.n_trials=80            # extra overrides after --
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [  # the tiny path: seconds per study on 2 CPU cores
    "extraction.max_pairs=8",
    "extraction.max_new_tokens=8",
    "steering.n_questions=2",
    "steering.max_new_tokens=8",
    "steering.layer=1",
    "search.n_trials=4",
    "search.batch_size=4",
]


def study(args: argparse.Namespace, source: str, root: Path, compile_dir: Path) -> list[str]:
    """The command line of one study."""
    size = [] if args.tiny else [f"size={args.size}"]
    return [
        *command(args.installed, "steerlab"), "-m",
        f"trait={args.trait}", f"position={args.position}", f"extraction={source}",
        f"model={args.model}", "judge=hf", f"judge.model={args.judge}",
        "extraction.vet.enabled=false", f"paths.root={root}",
        *size, *(TINY if args.tiny else []), *args.overrides,
    ]  # fmt: skip


def command(installed: bool, script: str) -> list[str]:
    """`python -m <module>` of this checkout, or the console script a `pip install` put beside
    this Python (`--installed`: no PYTHONPATH, the installed package alone)."""
    if installed:
        return [str(Path(sys.executable).with_name(script))]
    module = "steerlab" if script == "steerlab" else f"steerlab.{script.removeprefix('steerlab-')}"
    return [sys.executable, "-m", module]


def source_path(env: dict[str, str], installed: bool) -> dict[str, str]:
    """This checkout's `src` first on PYTHONPATH, unless the installed package is measured."""
    if not installed:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])
        )
    return env


def run(
    name: str, cmd: list[str], root: Path, compile_dir: Path, out: Path, installed: bool
) -> dict:
    """One study in its own process; its timings, wall time and first trial since spawn."""
    timings = out / f"timings-{name}.json"
    env = dict(os.environ, STEERLAB_TIMINGS=str(timings), PYTHONUNBUFFERED="1")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(compile_dir)
    env = source_path(env, installed)
    log = out / f"{name}.log"
    print(f"[{name}] {' '.join(cmd)}\n[{name}] log: {log}", flush=True)
    t0 = time.time()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=root).returncode
    wall = time.time() - t0
    tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:]
    if rc != 0 or not timings.is_file():
        sys.exit(f"[{name}] failed (rc {rc}); the end of {log}:\n" + "\n".join(tail))
    t = json.loads(timings.read_text())
    first = t["marks"].get("first_trial")
    t.update(name=name, wall=wall, first_trial_s=None if first is None else first - t0)
    print(f"[{name}] done in {wall:.1f} s", flush=True)
    return t


def secs(t: dict, path: str) -> float:
    return t["stages"].get(path, {}).get("s", 0.0)


def calls(t: dict, path: str) -> int:
    return t["stages"].get(path, {}).get("calls", 0)


def table(runs: list[dict]) -> str:
    """Every stage's seconds (and calls) per run."""
    paths: list[str] = []
    for t in runs:
        paths += [p for p in t["stages"] if p not in paths]
    head = f"| stage | {' | '.join(t['name'] for t in runs)} |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for p in paths:
        cells = [f"{secs(t, p):.1f} ({calls(t, p)})" if p in t["stages"] else "" for t in runs]
        lines.append(f"| {p} | {' | '.join(cells)} |")
    extra = {
        "process wall": lambda t: f"{t['wall']:.1f}",
        "first trial recorded (since spawn)": lambda t: f"{t['first_trial_s'] or 0:.1f}",
        "compile, warm-up, graph capture": lambda t: f"{t['counters'].get('compile_s', 0):.1f}",
        "buckets compiled": lambda t: f"{t['counters'].get('compiles', 0):.0f}",
        "peak GPU memory GiB": lambda t: f"{t['peak_gib'] or 0:.1f}",
    }
    for label, fn in extra.items():
        lines.append(f"| **{label}** | {' | '.join(fn(t) for t in runs)} |")
    return "\n".join(lines)


def projection(runs: list[dict], nat: dict, ins: dict | None) -> float:
    """Hours for experiment=model_diff (3 traits x 2 methods x 4 arms = 24 studies, one
    process): loads and compiles once; per trait one natural and one instruction elicitation,
    vetting and baseline; per study a capture, an extraction, the search, the confirmation and
    the closing, from the measured studies."""
    ins = ins or nat
    setup = sum(secs(t, p) for t in (nat, ins) for p in ("elicit", "vet")) + secs(nat, "baseline")
    per_study = [
        sum(secs(t, p) for p in ("capture", "extract", "search", "confirm", "finish", "mlflow"))
        for t in runs
    ]
    once = secs(nat, "load") + nat["counters"].get("compile_s", 0.0)
    return (once + 3 * setup + 24 * sum(per_study) / len(per_study)) / 3600


def report(root: Path, out: Path, installed: bool) -> str:
    """`python -m steerlab.report` on the first root's MLflow store: it must read back."""
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        names = [r[0] for r in db.execute("select name from experiments where name != 'Default'")]
    cmd = [*command(installed, "steerlab-report"), "--root", str(root)]
    cmd += ["--experiment", ",".join(names), "--out", str(out / "report"), "--no-log"]
    env = source_path(dict(os.environ), installed)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"the report failed (rc {r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="random_llama31_8b", help="model config (conf/model)")
    ap.add_argument("--judge", default="random:qwen2.5-7b", help="judge.model of judge=hf")
    ap.add_argument("--size", default="reference")
    ap.add_argument("--trait", default="evil")
    ap.add_argument("--position", default="10")
    ap.add_argument("--studies", default="natural,instruction", help="extraction sources")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm re-run")
    ap.add_argument("--tiny", action="store_true", help="tiny random shapes, a small study")
    ap.add_argument("--installed", action="store_true",
                    help="run the installed `steerlab` commands, not src/")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("/tmp/steerlab-sweep-bench"))
    ap.add_argument("overrides", nargs="*", help="more overrides, after --")
    args = ap.parse_args()
    if args.tiny:
        args.model, args.judge = "random_tiny", "random:tiny-qwen2"
    shutil.rmtree(args.out, ignore_errors=True)
    roots = [args.out / "root", args.out / "root-warm"]
    for r in roots:
        r.mkdir(parents=True)
    compile_dir = args.out / "compile"  # empty: the first process compiles cold
    sources = args.studies.split(",")
    runs = [
        run(
            s,
            study(args, s, roots[0], compile_dir),
            roots[0],
            compile_dir,
            args.out,
            args.installed,
        )
        for s in sources
    ]
    if not args.no_warm:
        cmd = study(args, sources[0], roots[1], compile_dir)
        runs.append(run(f"{sources[0]}-warm", cmd, roots[1], compile_dir, args.out, args.installed))
    read_back = report(roots[0], args.out, args.installed)

    searched = [t for t in runs if secs(t, "search")]
    search_s = sum(secs(t, "search") for t in searched)
    n = sum(calls(t, "search/record") for t in searched)
    gen = sum(secs(t, "search/generate") for t in searched) / search_s
    judge = sum(secs(t, "search/judge") for t in searched) / search_s
    cold, warm = runs[0], runs[-1] if not args.no_warm else None
    by = {t["name"]: t for t in runs}
    hours = projection(runs, cold, by.get("instruction"))
    print("\n" + table(runs) + "\n")
    print(read_back)
    (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
    c_cold = cold["counters"].get("compile_s", 0.0)
    line = {
        "trials_per_hour": f"{3600 * n / search_s:.0f}",
        "first_trial_s": f"{cold['first_trial_s']:.1f}",
        "gen_frac": f"{gen:.3f}",
        "judge_frac": f"{judge:.3f}",
        "other_frac": f"{1 - gen - judge:.3f}",
        "peak_gib": f"{max(t['peak_gib'] or 0 for t in runs):.1f}",
        "compiles": f"{cold['counters'].get('compiles', 0):.0f}",
        "compile_s": f"{c_cold:.1f}",
    }
    if warm is not None:
        c_warm = warm["counters"].get("compile_s", 0.0)
        line["first_trial_warm_s"] = f"{warm['first_trial_s']:.1f}"
        line["compile_warm_s"] = f"{c_warm:.1f}"
        line["warm_compile_ratio"] = f"{c_warm / c_cold:.2f}" if c_cold else "nan"
    line["model_diff_projected_h"] = f"{hours:.2f}"
    print(" ".join(f"{k}={v}" for k, v in line.items()))


if __name__ == "__main__":
    main()
