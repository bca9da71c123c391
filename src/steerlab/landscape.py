"""A landscape: every (layer, coef) of a grid measured once, per question, and kept as data, so
a search strategy can be replayed against it by lookup (`bench/search_bench.py`).

    python -m steerlab.landscape trait=evil extraction=natural position=10 size=cpu \\
        --coefs 12 --dense 3 --out data/landscape/smollm2-135m-evil-natural.json.gz

Every layer of `search.layer_range` (default: all) x `--coefs` log-spaced coefficients over
`search.coef_range`, then `--dense` more coefficients between the grid's neighbours around the
best configuration (layers best +- 1). Each configuration is answered and judged on the search
questions and the held-out ones (`confirm.n_questions`) in batches of `--batch` configurations;
finished ones are appended to `<out>.partial.jsonl`, so an interrupted run resumes. The table
(gzip JSON) records its provenance: commit, model and its weights' hash, judge, sizes, seed, date.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from steerlab import prog
from steerlab.cache import KeyedJsonlStore


def grid(lo: float, hi: float, n: int) -> list[float]:
    return [round(lo * (hi / lo) ** (i / max(n - 1, 1)), 6) for i in range(n)]


def scores(rows: list[dict], n_search: int) -> dict[str, dict[str, list]]:
    """Per-question trait and coherence of answers, split into search and held-out."""
    part = {"search": rows[:n_search], "held_out": rows[n_search:]}
    return {k: {m: [r[m] for r in rs] for m in ("trait", "coherence")} for k, rs in part.items()}


def true_mean(entry: dict, metric: str) -> float:
    xs = [x for part in ("search", "held_out") for x in entry[part][metric] if x is not None]
    return sum(xs) / len(xs) if xs else math.nan


def best(entries: list[dict], cmin: float) -> dict | None:
    """The configuration with the highest trait, on all its questions, that is valid on them."""
    valid = [e for e in entries if true_mean(e, "coherence") >= cmin]
    return max(valid, key=lambda e: true_mean(e, "trait")) if valid else None


def dense(entries: list[dict], coefs: list[float], layers: list[int], n: int, cmin: float):
    """`n` coefficients between the grid neighbours of the best configuration's coef, at its
    layer and the layers beside it."""
    top = best(entries, cmin)
    if top is None or n <= 0:
        return []
    i = coefs.index(top["coef"])
    lo, hi = coefs[max(i - 1, 0)], coefs[min(i + 1, len(coefs) - 1)]
    extra = [c for c in grid(lo, hi, n + 2)[1:-1] if c not in coefs]
    return [(la, c) for la in layers if abs(la - top["layer"]) <= 1 for c in extra]


def measure(cfg: DictConfig, coefs_n: int, dense_n: int, batch: int, out: Path) -> dict:
    from steerlab import provenance
    from steerlab.config import position_of, root_of, steering_of
    from steerlab.evaluate import evaluate
    from steerlab.runner import Runner

    runner = Runner()
    setup = runner.setup(cfg)
    questions = setup.questions + setup.held_out
    n_search, cmin = len(setup.questions), float(cfg.search.coherence_min)
    lo, hi = cfg.search.coef_range
    coefs = grid(float(lo), float(hi), coefs_n)
    top = setup.model.n_layers - 1
    a, b = cfg.search.layer_range or (0, top)
    layers = list(range(int(a), int(b) + 1))
    store = KeyedJsonlStore(out.with_name(out.name + ".partial.jsonl"))
    base, root = steering_of(cfg), root_of(cfg)

    def run(points: list[tuple[int, float]]) -> None:
        todo = [p for p in points if f"{p[0]}:{p[1]}" not in store.records]
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            terms = [runner.terms(setup, replace(base, layer=la, coef=c), root) for la, c in chunk]
            results = evaluate(setup.model, setup.judge, setup.trait, terms, questions,
                               setup.gen, setup.cache, None, cmin)  # fmt: skip
            store.add({"k": f"{la}:{c}", "layer": la, "coef": c, **scores(r.rows, n_search)}
                      for (la, c), r in zip(chunk, results, strict=True))  # fmt: skip
            print(f"landscape: {len(store.records)} configurations measured", flush=True)

    run([(la, c) for la in layers for c in coefs])
    entries = [store.records[f"{la}:{c}"] for la in layers for c in coefs]
    run(dense(entries, coefs, layers, dense_n, cmin))
    base_rows = setup.base.rows + (setup.held_base.rows if setup.held_base else [])
    models = {"steering": cfg.model.steering, "extraction": cfg.model.extraction}
    facts = provenance.collect(cfg, models, setup.trait, setup.judge.identity, setup.model.device)
    return {
        "provenance": {
            "model": cfg.model.name,
            "model_identity": facts["model.steering"],
            "judge": setup.judge.identity,
            "trait": cfg.trait.name,
            "source": cfg.extraction.source,
            "position": position_of(cfg),
            "method": cfg.extraction.method,
            "component": cfg.steering.component,
            "coef_units": cfg.steering.coef_units,
            "coherence_min": cmin,
            "commit": facts["commit"],
            "dirty": facts["dirty"],
            "seed": int(cfg.seed),
            "date": datetime.date.today().isoformat(),
            "sizes": {
                "search_questions": n_search,
                "held_out_questions": len(setup.held_out),
                "max_new_tokens": int(setup.gen.max_new_tokens),
                "extraction_pairs": cfg.extraction.max_pairs,
            },  # fmt: skip
        },
        "layers": layers,
        "coefs": coefs,
        "baseline": scores(base_rows, n_search),
        "configs": [{k: v for k, v in e.items() if k != "k"} for e in store.records.values()],
    }


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_dir

    from steerlab.config import register
    from steerlab.data import CONF_DIR

    p = argparse.ArgumentParser(prog=prog("steerlab.landscape"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--coefs", type=int, default=12, help="log-spaced coefficients a layer")
    p.add_argument("--dense", type=int, default=3, help="more around the best (0: none)")
    p.add_argument("--batch", type=int, default=8, help="configurations a generate")
    p.add_argument("--out", type=Path, required=True, help="the table (.json.gz)")
    p.add_argument("overrides", nargs="*", help="the study's overrides, as `python -m steerlab`")
    a = p.parse_args(argv)
    from steerlab.errors import InfraError

    register()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=a.overrides)
        table = measure(cfg, a.coefs, a.dense, a.batch, a.out)
    except (ValueError, InfraError, OSError) as e:  # input, service, disk: one line, exit 2
        print(f"steerlab.landscape: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(a.out, "wt", encoding="utf-8") as f:
        json.dump(table, f)
    print(f"landscape: {len(table['configs'])} configurations -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
