"""Is a study repeatable on this machine? The same study (`bench/sweep_bench.py`'s: random 8B
weights of real shapes, a random `hf` judge, the reference size) run twice, each in its own
process and empty root (the second with the compile cache the first left), then compared trial
by trial: how many trials' greedy answers differ, the largest trait and coherence differences,
and whether the best configuration moved. The last line is

    repeat: trials=.. answers_differ=.. max_trait_diff=.. max_coherence_diff=.. same_best=..

    python bench/repeat_bench.py                       # a GPU
    python bench/repeat_bench.py --tiny                # any machine
    python bench/repeat_bench.py -- search.n_trials=16
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_bench import run, study  # noqa: E402 - the sibling bench's study and runner


def trials(root: Path) -> dict[int, dict]:
    """Each trial's metrics and answers, from its folder."""
    [sweep] = {p.parent for p in root.glob("multirun/**/optuna.db")}
    out = {}
    for d in sweep.iterdir():
        if d.name.isdigit() and (d / "metrics.json").is_file():
            rows = [json.loads(x) for x in (d / "responses.jsonl").read_text().splitlines()]
            out[int(d.name)] = json.loads((d / "metrics.json").read_text()) | {
                "answers": [r["answer"] for r in rows],
                "steering": (d / "config.yaml").read_text().split("steering:")[1],
            }
    return out


def best(ts: dict[int, dict]) -> int | None:
    valid = [n for n, t in ts.items() if t["valid"]]
    return max(valid, key=lambda n: (ts[n]["trait"], -n)) if valid else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="random_llama31_8b")
    ap.add_argument("--judge", default="random:qwen2.5-7b")
    ap.add_argument("--trait", default="evil")
    ap.add_argument("--position", default="10")
    ap.add_argument("--size", default="reference")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on any CPU")
    ap.add_argument("--out", type=Path, default=Path("/tmp/steerlab-repeat-bench"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.tiny:
        args.model, args.judge = "random_tiny", "random:tiny-qwen2"
    work = args.out
    shutil.rmtree(work, ignore_errors=True)
    compile_dir = work / "compile"
    got = []
    for name in ("first", "second"):
        root = work / name
        root.mkdir(parents=True)
        run(name, study(args, "natural", root, compile_dir), root, compile_dir, work)
        got.append(trials(root))
    a, b = got
    common = sorted(a.keys() & b.keys())
    differ = sum(a[n]["answers"] != b[n]["answers"] for n in common)
    same_points = all(a[n]["steering"] == b[n]["steering"] for n in common)
    gap = {k: max((abs(a[n][k] - b[n][k]) for n in common), default=0.0)
           for k in ("trait", "coherence")}  # fmt: skip
    print(f"repeat: trials={len(common)} same_points={same_points} answers_differ={differ} "
          f"max_trait_diff={gap['trait']:.3g} max_coherence_diff={gap['coherence']:.3g} "
          f"same_best={best(a) == best(b)} best={best(a)},{best(b)}")  # fmt: skip


if __name__ == "__main__":
    main()
