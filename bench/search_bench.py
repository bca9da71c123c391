"""Which search strategy finds the best coherent steering configuration for the fewest judge
calls? Strategies are replayed against a *landscape*: every (layer, coef) of a grid measured once,
with per-question scores, so a trial is a table lookup and a whole comparison takes seconds.

A proposed (layer, coef) reads the nearest measured point: its layer (the nearest measured one
when absent), the nearest of that layer's coefs in log space. A search sees only the search
questions; its pick (the search-valid trial with the highest search trait) is scored on all
questions (search + held-out), against the optimum: the highest true trait among true-valid
configs. Regret = optimum - the pick's true trait; a pick that is not valid on all questions
counts in P(invalid pick); no valid trial at all picks nothing (regret = optimum - baseline).

Steerlab's strategies run as `steerlab.search.sweep.run_study` drives them (a batch asked before
any of it is told, repeats dropped and asked again); two more are the bench's own: `axbench`
(one layer at 40% depth, the grid's coefs thinned to the budget) and `tpe_sh` (TPE whose trials
are pruned question by question by a successive-halving pruner; a pruned trial costs the
questions it used and is never picked). `tpe_prune` is steerlab's own `search.prune`
(`steerlab.search.pruning`: the same first questions, reports, pruner and tell as a sweep).

    python bench/search_bench.py data/landscape/*.json.gz --seeds 30 --budgets 4,8,16,32,64
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import multiprocessing
import os
import statistics
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from steerlab.config import PruneConfig
from steerlab.search import points, pruning
from steerlab.search.strategies import Strategy, make_sampler, make_strategy
from steerlab.search.summary import COVERED, convergence
from steerlab.search.sweep import MAX_REPEATS, OWN_STATE

STRATEGIES = (
    "tpe", "gp", "cmaes", "nsga2", "grid", "random", "adaptive", "axbench", "tpe_sh", "tpe_prune",
)  # fmt: skip
PRUNE = PruneConfig()  # tpe_prune: steerlab's own pruning at its defaults (tpe_prune@P: p = P)
AXBENCH_DEPTH = 0.4  # AxBench steers one layer, at about 40% of the model's depth


@dataclass(frozen=True)
class Config:
    """One measured (layer, coef): search means (what a search sees) and true means (all)."""

    layer: int
    coef: float
    trait: float  # search means
    coherence: float
    true_trait: float  # means over search + held-out questions
    true_coherence: float
    questions: tuple[float | None, ...]  # per search question trait: what a pruner sees
    coherences: tuple[float | None, ...] = ()  # per search question coherence


def _mean(xs: Sequence[float | None]) -> float:
    """Mean of the scored answers (None: unscored); NaN when none is scored."""
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else math.nan


@dataclass
class Landscape:
    path: Path
    provenance: dict[str, Any]
    layers: list[int]
    coefs: list[float]
    configs: list[Config]
    coherence_min: float
    baseline_trait: float  # true (all questions) mean trait without steering

    def __post_init__(self) -> None:
        by: dict[int, list[int]] = {}
        for i, c in enumerate(self.configs):
            by.setdefault(c.layer, []).append(i)
        self._measured = np.array(sorted(by))
        self._by_layer = {
            la: (np.log([self.configs[i].coef for i in ix]), np.array(ix))
            for la, ix in (
                (la, sorted(ix, key=lambda i: self.configs[i].coef)) for la, ix in by.items()
            )
        }
        valid = [c for c in self.configs if self.true_valid(c)]
        self.optimum: Config | None = max(valid, key=lambda c: c.true_trait) if valid else None

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".gz").removesuffix(".json")

    @property
    def best(self) -> float:
        """The optimum's true trait; with no coherent config, steering nothing is the best."""
        return self.optimum.true_trait if self.optimum else self.baseline_trait

    def search_valid(self, c: Config) -> bool:
        return c.coherence >= self.coherence_min  # NaN (nothing scored) is never valid

    def true_valid(self, c: Config) -> bool:
        return c.true_coherence >= self.coherence_min

    def lookup(self, layer: float, coef: float) -> int:
        """The index of the measured config nearest to a proposal (coef distance in log space)."""
        la = int(self._measured[np.argmin(np.abs(self._measured - layer))])
        logs, ix = self._by_layer[la]
        return int(ix[np.argmin(np.abs(logs - math.log(coef)))])

    def pick(self, indices: Sequence[int]) -> int | None:
        """The search-valid config with the highest search trait (the earliest of ties)."""
        valid = [i for i in indices if self.search_valid(self.configs[i])]
        return max(valid, key=lambda i: self.configs[i].trait, default=None)

    def score(self, pick: int | None) -> tuple[float, bool]:
        """(regret, invalid) of a pick; regret may be negative for a true-invalid pick."""
        if pick is None:
            return self.best - self.baseline_trait, True
        c = self.configs[pick]
        return self.best - c.true_trait, not self.true_valid(c)


def _get(d: dict[str, Any], dotted: str) -> Any:
    """A nested provenance field: "sizes.search_questions"."""
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def load_landscape(
    path: str | Path, expect: dict[str, Any] | None = None, search_questions: int | None = None
) -> Landscape:
    """Read a landscape table, refusing one measured under other conditions than `expect`
    (provenance fields, dotted for nested ones: {"model": .., "sizes.search_questions": 4}),
    since regrets of different models or judges do not compare. `search_questions`: a study
    that asks that many of each config's questions (search ones first, then held-out ones);
    the true value stays the mean over all of them."""
    path = Path(path)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    prov = data.get("provenance") or {}
    for field, want in (expect or {}).items():
        got = _get(prov, field)
        if got != want:
            raise ValueError(f"{path}: provenance {field} is {got!r}, expected {want!r}")
    for key in ("layers", "coefs", "configs", "baseline"):
        if not data.get(key):
            raise ValueError(f"{path}: no {key!r} in the landscape")
    if prov.get("coherence_min") is None:
        raise ValueError(f"{path}: provenance coherence_min is missing")

    def config(c: dict[str, Any]) -> Config:
        s, h = c["search"], c.get("held_out") or {"trait": [], "coherence": []}
        if search_questions is not None:
            k = search_questions
            every = {m: s[m] + h[m] for m in ("trait", "coherence")}
            s, h = ({m: v[:k] for m, v in every.items()}, {m: v[k:] for m, v in every.items()})
        return Config(
            layer=int(c["layer"]),
            coef=float(c["coef"]),
            trait=_mean(s["trait"]),
            coherence=_mean(s["coherence"]),
            true_trait=_mean(s["trait"] + h["trait"]),
            true_coherence=_mean(s["coherence"] + h["coherence"]),
            questions=tuple(s["trait"]),
            coherences=tuple(s["coherence"]),
        )

    base = data["baseline"]
    return Landscape(
        path=path,
        provenance=prov,
        layers=[int(x) for x in data["layers"]],
        coefs=sorted(float(x) for x in data["coefs"]),
        configs=[config(c) for c in data["configs"]],
        coherence_min=float(prov["coherence_min"]),
        baseline_trait=_mean(base["search"]["trait"] + base.get("held_out", {}).get("trait", [])),
    )


Tried = tuple[int, int, bool]  # (config index, search questions used, pruned)


@dataclass(frozen=True)
class Run:
    """One replayed study: each evaluated trial as (config index, questions used, pruned)."""

    strategy: str
    seed: int
    budget: int
    trials: tuple[Tried, ...]
    pick: int | None
    regret: float
    invalid: bool
    judge_calls: int


class AxBench(Strategy):
    """AxBench's factor grid: one layer at 40% depth, the grid's coefs evenly thinned."""

    def __init__(self, search: DictConfig, layers: list[int], coefs: list[float]):
        super().__init__(search, layers)
        k = min(int(search.n_trials), len(coefs))
        self.layer = layers[round(AXBENCH_DEPTH * (len(layers) - 1))]
        self.coefs = [coefs[round(x)] for x in np.linspace(0, len(coefs) - 1, k)]

    def grid_space(self) -> dict[str, list[Any]]:
        return {"layer": [self.layer], "coef": list(self.coefs)}


def search_node(land: Landscape, sampler: str, seed: int, budget: int, batch: int) -> DictConfig:
    """The `search` config node a sweep would have (as tests/conftest.py's `search_config`)."""
    return OmegaConf.create(
        dict(
            sampler=sampler,
            n_trials=budget,
            batch_size=batch,
            seed=seed,
            layer_range=[min(land.layers), max(land.layers)],
            coef_range=[land.coefs[0], land.coefs[-1]],
            coherence_min=land.coherence_min,
            multi_objective=sampler == "nsga2",
            enqueue=[],
            options={"coef_points": len(land.coefs)},  # grid: the landscape's own coefs
        )
    )


def replay(land: Landscape, strategy: str, seed: int, budget: int, batch: int = 4) -> Run:
    """One study of `budget` trials, asked in batches and told from the landscape."""
    return _run(land, strategy, seed, budget, _study(land, strategy, seed, budget, batch))


def replays(
    land: Landscape, strategy: str, seed: int, budgets: Sequence[int], batch: int = 4
) -> list[Run]:
    """`replay` at each budget. A strategy's k-th trial depends only on the trials before it,
    not on the budget, so one study of the largest budget, read up to each budget, has the same
    trials as a study per budget (tested) at a fraction of the cost; axbench's grid depends on
    the budget, so it runs a study per budget."""
    if strategy == "axbench":
        return [replay(land, strategy, seed, b, batch) for b in budgets]
    tried = _study(land, strategy, seed, max(budgets), batch)
    return [_run(land, strategy, seed, b, tried[:b]) for b in budgets]


def _run(land: Landscape, strategy: str, seed: int, budget: int, tried: list[Tried]) -> Run:
    pick = land.pick([i for i, _, pruned in tried if not pruned])
    regret, invalid = land.score(pick)
    calls = sum(q for _, q, _ in tried)
    return Run(strategy, seed, budget, tuple(tried), pick, regret, invalid, calls)


def _study(land: Landscape, strategy: str, seed: int, budget: int, batch: int) -> list[Tried]:
    """Drive a strategy as `steerlab.search.sweep.run_study` does: ask a batch, drop points
    already asked (asked again, up to MAX_REPEATS times in a row), evaluate, tell each."""
    strategy, _, at = strategy.partition("@")  # tpe_prune@0.3: its p
    prune_p = float(at) if at else PRUNE.p
    sampler = {"axbench": "grid", "tpe_sh": "tpe", "tpe_prune": "tpe"}.get(strategy, strategy)
    search = search_node(land, sampler, seed, budget, batch)
    layers = list(range(min(land.layers), max(land.layers) + 1))
    if strategy == "axbench":
        strat: Strategy = AxBench(search, layers, land.coefs)
    else:
        strat = make_strategy(search, layers, None)
    space = strat.grid_space()
    total = budget
    if sampler == "grid":
        total = min(budget, math.prod(len(v) for v in space.values()))
    multi = bool(search.multi_objective) and sampler not in OWN_STATE
    pruner: optuna.pruners.BasePruner | None = None
    if strategy == "tpe_sh":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    elif strategy == "tpe_prune":
        pruner = pruning.QuestionPruner(land.coherence_min, prune_p)
    tried: list[Tried] = []
    threads = _one_thread() if sampler == "gp" else contextlib.nullcontext()
    with warnings.catch_warnings(), threads:
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", "Constraints have been set, but CmaEsSampler")
        warnings.filterwarnings("ignore", "The value .* is out of range")  # grid's rounded coefs
        study = optuna.create_study(
            directions=["maximize"] * (2 if multi else 1),
            sampler=make_sampler(sampler, seed, space),
            pruner=pruner,
        )
        repeated = 0
        while (left := total - len(tried)) > 0:
            asked = strat.propose(study, min(batch, left))
            fresh = points.drop_repeats(study, asked)
            repeated = repeated + 1 if asked and not fresh else 0
            if not fresh:
                if 0 < repeated <= MAX_REPEATS:
                    continue
                break  # the strategy has nothing left to propose
            looked = [land.lookup(t.params["layer"], t.params["coef"]) for t in fresh]
            configs = [land.configs[i] for i in looked]
            if strategy == "tpe_prune":
                used = _staged(study, fresh, configs, land.coherence_min, seed)
            else:
                used = _prune(study, fresh, configs) if pruner else {}
            for t, i in zip(fresh, looked, strict=True):
                c = land.configs[i]
                if t.number in used:
                    tried.append((i, used[t.number], True))
                    continue
                scores = {"trait": c.trait, "coherence": c.coherence}
                _tell(strat, study, t, scores, land.coherence_min, multi)
                tried.append((i, len(c.questions), False))
    return tried


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """GPSampler's torch on one thread: many tiny ops, which threads slow down (8x on 2 busy
    cores) and whose float sums would depend on the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _tell(strat: Strategy, study: optuna.Study, trial: Any, scores: dict, cmin: float, multi: bool):
    """`Strategy.tell`, past Optuna's GridSampler calling `Study.stop` (legal only inside
    `optimize`) once the grid is used up: the trial is recorded before that raises."""
    try:
        strat.tell(study, trial, scores, cmin, multi)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _prune(study: optuna.Study, trials: list[Any], configs: list[Config]) -> dict[int, int]:
    """Answer a batch question by question, all its trials at once as a batched generate
    would; report each running mean trait and prune. The last question is never pruned on
    (nothing is saved then). Pruned trials are told PRUNED; returns {number: questions used}."""
    alive = dict(zip([t.number for t in trials], zip(trials, configs, strict=True), strict=True))
    used: dict[int, int] = {}
    n = max(len(c.questions) for c in configs)
    for q in range(1, n):
        for num, (t, c) in list(alive.items()):
            running = _mean(c.questions[:q])
            if math.isnan(running):
                continue
            t.report(running, step=q)
            if t.should_prune():
                study.tell(t, state=TrialState.PRUNED)
                used[num] = q
                del alive[num]
    return used


def _staged(
    study: optuna.Study, trials: list[Any], configs: list[Config], cmin: float, seed: int
) -> dict[int, int]:
    """`steerlab.search.batches.staged` on the landscape: the batch's first questions, each
    trial's reports and the study's pruner; a survivor reports the rest (its tell is the
    caller's). Returns {number: questions used} of the pruned, told PRUNED as a sweep tells."""
    n = len(configs[0].questions)
    first = pruning.first_questions(n, PRUNE.first, seed, trials[0].number)
    rest = [q for q in range(n) if q not in first]
    used: dict[int, int] = {}
    for t, c in zip(trials, configs, strict=True):
        rows = [{"trait": c.questions[q], "coherence": c.coherences[q]} for q in first]
        if pruning.decide(t, first, rows, ask=bool(rest)):
            part = {
                "trait": _mean([c.questions[q] for q in first]),
                "coherence": _mean([c.coherences[q] for q in first]),
            }
            pruning.tell(study, t, part, "pruned", cmin)
            used[t.number] = len(first)
        else:
            pruning.report(t, rest, [{"trait": c.questions[q]} for q in rest])
    return used


def _job(args: tuple[Landscape, str, int, list[int], int]) -> list[Run]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return replays(*args)


def bench(
    land: Landscape,
    strategies: Sequence[str],
    seeds: int,
    budgets: Sequence[int],
    batch: int = 4,
    jobs: int = 1,
) -> list[Run]:
    """Every strategy x seed x budget (`replays`). Results do not depend on `jobs`."""
    tasks = [(land, s, seed, list(budgets), batch) for s in strategies for seed in range(seeds)]
    if jobs > 1 and len(tasks) > 1:
        slow = sorted(range(len(tasks)), key=lambda i: tasks[i][1] != "gp")  # longest first
        with multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks))) as pool:
            done = pool.map(_job, [tasks[i] for i in slow], chunksize=1)
        out = [runs for _, runs in sorted(zip(slow, done, strict=True))]
    else:
        out = [_job(t) for t in tasks]
    return [r for runs in out for r in runs]


@dataclass(frozen=True)
class Row:
    strategy: str
    budget: int
    median: float
    lo: float  # the interval over seeds (quartiles)
    hi: float
    p_invalid: float
    calls: float
    trials: float


def summarize(runs: Sequence[Run]) -> list[Row]:
    """Per strategy x budget: median regret [IQR] over seeds, P(invalid pick), mean cost."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.strategy, r.budget), []).append(r)
    rows = []
    for (s, b), rs in groups.items():
        regret = [r.regret for r in rs]
        q = statistics.quantiles(regret, n=4, method="inclusive") if len(rs) > 1 else regret * 3
        mean = statistics.fmean
        cost = mean(r.invalid for r in rs), mean(r.judge_calls for r in rs)
        rows.append(
            Row(
                s, b, statistics.median(regret), q[0], q[-1], *cost, mean(len(r.trials) for r in rs)
            )
        )
    return rows


HELPS = 1.0  # trait points: twice the trials "helped" if the regret fell by at least this


def hint_accuracy(
    land: Landscape, runs: Sequence[Run], batch: int = 4, covered: float = COVERED
) -> tuple[int, int]:
    """How often the closing convergence hint is right: (right, judged). A run at budget b is
    judged when the same strategy and seed also ran 2b: "more trials would likely help" is right
    if the 2b run's regret is at least `HELPS` lower, "would likely change little" if not. The
    hint sees what the study saw: each trial's search validity and trait, pruned ones invalid."""
    by = {(r.strategy, r.seed, r.budget): r for r in runs}
    right = judged = 0
    for (s, seed, b), r in by.items():
        if (twice := by.get((s, seed, 2 * b))) is None:
            continue
        seen = [
            (not pruned and land.search_valid(land.configs[i]), land.configs[i].trait)
            for i, _, pruned in r.trials
        ]
        more = convergence(seen, batch, covered).more
        right += more == (r.regret - twice.regret >= HELPS)
        judged += 1
    return right, judged


def full_grid(land: Landscape) -> tuple[float, bool, int, int]:
    """Every config of the landscape evaluated: (regret, invalid, trials, judge calls)."""
    regret, invalid = land.score(land.pick(range(len(land.configs))))
    return regret, invalid, len(land.configs), sum(len(c.questions) for c in land.configs)


def table(land: Landscape, rows: Sequence[Row]) -> str:
    """A Markdown table of `summarize`'s rows and the full grid's own figures."""
    p, o = land.provenance, land.optimum
    where = f"L{o.layer} x {o.coef:g} (true trait {o.true_trait:.1f})" if o else "none coherent"
    regret, invalid, n, calls = full_grid(land)
    head = [
        f"### {land.name}",
        "",
        f"{p.get('model')} / {p.get('trait')} / {p.get('source')}, judge {p.get('judge')}; "
        f"{len(land.layers)} layers x {len(land.coefs)} coefs ({len(land.configs)} configs), "
        f"coherence >= {land.coherence_min:g}; optimum {where}, baseline true trait "
        f"{land.baseline_trait:.1f}",
        "",
        "| strategy | budget | trials | regret median [IQR] | P(invalid pick) | judge calls |",
        "|---|---:|---:|---|---:|---:|",
    ]
    body = [
        f"| {r.strategy} | {r.budget} | {r.trials:.1f} | {r.median:.2f} [{r.lo:.2f}, {r.hi:.2f}]"
        f" | {r.p_invalid:.2f} | {r.calls:.1f} |"
        for r in rows
    ]
    body.append(f"| full grid | {n} | {n} | {regret:.2f} | {float(invalid):.2f} | {calls} |")
    return "\n".join(head + body)


def plot(land: Landscape, rows: Sequence[Row], out: Path) -> Path:
    """Median regret vs trials per strategy, its IQR as a band; the full grid as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for s in dict.fromkeys(r.strategy for r in rows):
        rs = sorted((r for r in rows if r.strategy == s), key=lambda r: r.budget)
        xs = [r.budget for r in rs]
        (line,) = ax.plot(xs, [r.median for r in rs], marker="o", label=s)
        ax.fill_between(
            xs, [r.lo for r in rs], [r.hi for r in rs], alpha=0.15, color=line.get_color()
        )
    regret, _, n, _ = full_grid(land)
    ax.axhline(regret, color="k", linestyle="--", label=f"full grid ({n} trials)")
    ax.set_xscale("log", base=2)
    ticks = sorted({r.budget for r in rows})
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.minorticks_off()
    ax.set_xlabel("trials (budget)")
    ax.set_ylabel("regret (true trait points)")
    ax.set_title(f"{land.name}: median regret, IQR over seeds")
    ax.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{land.name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("landscapes", nargs="+", type=Path)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--budgets", default="4,8,16,32,64")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--search-questions", type=int, default=None,
                    help="questions a study asks (default: its search questions)")  # fmt: skip
    ap.add_argument("--expect", action="append", default=[], metavar="FIELD=VALUE",
                    help="refuse a landscape whose provenance FIELD differs")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes (the numbers do not change)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("/tmp/steerlab-search-bench"))
    args = ap.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if unknown := sorted({s.partition("@")[0] for s in strategies} - set(STRATEGIES)):
        ap.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    budgets = [int(b) for b in args.budgets.split(",")]
    expect = dict(_expected(e) for e in args.expect)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for path in args.landscapes:
        land = load_landscape(path, expect or None, args.search_questions)
        runs = bench(land, strategies, args.seeds, budgets, args.batch_size, args.jobs)
        rows = summarize(runs)
        print(table(land, rows) + "\n")
        right, judged = hint_accuracy(land, runs, args.batch_size)
        if judged:
            print(f"convergence hint right on {right}/{judged} = {right / judged:.0%} of the runs "
                  f"with a run of twice the budget beside them\n")  # fmt: skip
        print(f"plot: {plot(land, rows, args.out)}\n")


def _expected(text: str) -> tuple[str, Any]:
    field, _, value = text.partition("=")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


if __name__ == "__main__":
    main()
