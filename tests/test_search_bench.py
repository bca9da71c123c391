"""bench/search_bench.py on a small synthetic landscape: a replay is a lookup, so these check the
bookkeeping a comparison of strategies rests on (determinism, regret on true values, pruning,
refusing a table of other conditions)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("search_bench", REPO / "bench/search_bench.py")
sb = importlib.util.module_from_spec(spec)
sys.modules["search_bench"] = sb  # dataclasses resolve their module by name
spec.loader.exec_module(sb)

LAYERS, COEFS = list(range(6)), [0.05, 0.1, 0.2, 0.4, 0.8]
PROVENANCE = {
    "model": "synthetic",
    "judge": "synthetic-judge",
    "trait": "evil",
    "coherence_min": 70.0,
}


def make_landscape(
    path: Path,
    layers: list[int] = LAYERS,
    coefs: list[float] = COEFS,
    n_search: int = 4,
    n_held: int = 4,
    seed: int = 0,
    held_as_search: bool = False,
) -> Path:
    """Trait rising with coef, most at the layer at 60% depth; coherence falling with coef, so
    the optimum sits near the threshold; per-question noise from a seeded RNG."""
    rng = np.random.default_rng(seed)
    peak = 0.6 * (len(layers) - 1)
    width = max(len(layers) / 6, 1.0)

    def answers(layer: int, coef: float, n: int) -> dict[str, list[float]]:
        x = math.log(coef / coefs[0]) / math.log(coefs[-1] / coefs[0])  # 0..1
        gain = math.exp(-(((layer - peak) / width) ** 2))
        trait = 10 + 85 * gain * x + rng.normal(0, 6, n)
        coherence = 95 - 45 * x * (0.5 + gain) + rng.normal(0, 5, n)
        clip = lambda a: [round(float(v), 2) for v in np.clip(a, 0, 100)]  # noqa: E731
        return {"trait": clip(trait), "coherence": clip(coherence)}

    def scored(layer: int, coef: float) -> dict[str, Any]:
        search = answers(layer, coef, n_search)
        return {
            "search": search,
            "held_out": search if held_as_search else answers(layer, coef, n_held),
        }

    data = {
        "provenance": PROVENANCE
        | {"sizes": {"search_questions": n_search, "held_out_questions": n_held}},
        "layers": layers,
        "coefs": coefs,
        "baseline": {
            "search": {"trait": [5.0] * n_search, "coherence": [95.0] * n_search},
            "held_out": {"trait": [7.0] * n_held, "coherence": [94.0] * n_held},
        },  # fmt: skip
        "configs": [{"layer": la, "coef": c, **scored(la, c)} for la in layers for c in coefs],
    }
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    return path


@pytest.fixture
def land(tmp_path: Path):
    return sb.load_landscape(make_landscape(tmp_path / "synthetic.json.gz"))


def test_replay_is_deterministic_for_a_seed(land) -> None:
    for strategy in sb.STRATEGIES:
        a, b = (sb.replay(land, strategy, seed=3, budget=16) for _ in range(2))  # gp: past
        assert a == b, strategy  # its 10 random trials
        assert a.judge_calls <= 16 * 4
    other = [sb.replay(land, "tpe", seed=s, budget=8).trials for s in (0, 1)]
    assert other[0] != other[1]  # the seed matters


def test_one_study_read_at_each_budget_is_a_study_per_budget(land) -> None:
    for strategy in ("tpe", "gp", "cmaes", "nsga2", "grid", "random", "adaptive", "tpe_sh"):
        budgets = [4, 6, 16] if strategy == "gp" else [4, 6, 12, 24]  # gp: 10 random first
        each = [sb.replay(land, strategy, seed=1, budget=b) for b in budgets]
        assert sb.replays(land, strategy, seed=1, budgets=budgets) == each, strategy


def test_full_grid_has_no_regret_and_the_optimum_is_on_true_values(tmp_path: Path) -> None:
    same = sb.load_landscape(make_landscape(tmp_path / "same.json.gz", held_as_search=True))
    run = sb.replay(same, "grid", seed=0, budget=64)
    assert len(run.trials) == len(LAYERS) * len(COEFS)  # capped at the grid's size
    assert sorted(i for i, _, _ in run.trials) == list(range(len(same.configs)))
    assert run.regret == 0.0 and not run.invalid
    assert run.judge_calls == len(same.configs) * 4

    path = make_landscape(tmp_path / "noisy.json.gz", n_held=12, seed=1)
    land = sb.load_landscape(path)
    with gzip.open(path, "rt") as f:
        raw = json.load(f)
    true = [
        (np.mean(c["search"]["trait"] + c["held_out"]["trait"]),
         np.mean(c["search"]["coherence"] + c["held_out"]["coherence"]))
        for c in raw["configs"]
    ]  # fmt: skip
    best = max(t for t, coh in true if coh >= 70)
    assert land.optimum.true_trait == pytest.approx(best)
    searched = max(
        (i for i, c in enumerate(land.configs) if c.coherence >= 70),
        key=lambda i: land.configs[i].trait,
    )
    run = sb.replay(land, "grid", seed=0, budget=64)
    assert run.pick == searched
    assert run.regret == pytest.approx(best - true[searched][0])


def test_a_pruned_tpe_sh_trial_is_never_the_pick(land) -> None:
    runs = [sb.replay(land, "tpe_sh", seed=s, budget=32) for s in range(6)]
    pruned = [(r, i, q) for r in runs for i, q, p in r.trials if p]
    assert pruned, "the pruner never pruned"
    assert all(q < 4 for _, _, q in pruned)  # a pruned trial costs only the questions it used
    for r in runs:
        assert r.pick is None or r.pick in {i for i, _, p in r.trials if not p}
        assert r.judge_calls == sum(q for _, q, _ in r.trials) < 4 * len(r.trials)
    # a pruned trial that would have won on its full search scores still is not picked
    would = [r for r in runs if land.pick([i for i, _, _ in r.trials]) != r.pick]
    assert would, "no pruned trial beat the pick: the check above tested nothing"


def test_load_landscape_refuses_other_conditions(tmp_path: Path) -> None:
    path = make_landscape(tmp_path / "l.json.gz")
    assert sb.load_landscape(path, {"model": "synthetic", "sizes.search_questions": 4}).configs
    with pytest.raises(ValueError) as e:
        sb.load_landscape(path, {"model": "synthetic", "judge": "gpt-4o"})
    msg = str(e.value)
    assert "\n" not in msg
    assert str(path) in msg and "judge" in msg and "synthetic-judge" in msg and "gpt-4o" in msg
    with pytest.raises(ValueError, match="sizes.held_out_questions is 4, expected 8"):
        sb.load_landscape(path, {"sizes.held_out_questions": 8})


def test_table_and_plot(land, tmp_path: Path) -> None:
    rows = sb.summarize(sb.bench(land, ["random", "axbench"], seeds=3, budgets=[4, 8]))
    text = sb.table(land, rows)
    assert "| random | 8 |" in text and "| axbench | 4 |" in text and "| full grid | 30 |" in text
    assert sb.plot(land, rows, tmp_path).stat().st_size > 0


def test_the_convergence_hint_follows_its_rule_and_is_scored_against_twice_the_budget(land):
    from steerlab.search.summary import convergence

    assert convergence([], 4).more and "no valid trial in 0" in convergence([], 4).text
    few = [(False, 50.0)] * 5 + [(True, 30.0)] * 4  # 4 of 9 valid: the coherent region thin
    assert convergence(few, 4).more and "4 of 9 trials valid" in convergence(few, 4).text
    covered = [(True, 30.0), (True, 40.0), (True, 40.0), (False, 90.0), (True, 35.0)]
    hint = convergence(covered, 2)
    assert not hint.more and "the best at 2" in hint.text  # the first to reach 40
    assert "(in the last batch)" in convergence([(True, 1.0), (True, 2.0)], 1).text
    runs = sb.bench(land, ["tpe", "random"], 3, [4, 8, 16])
    right, judged = sb.hint_accuracy(land, runs)
    assert judged == 2 * 3 * 2  # budgets 4 and 8 have a run of twice their budget beside them
    assert 0 <= right <= judged and (right, judged) == sb.hint_accuracy(land, runs)
    always = sb.hint_accuracy(land, runs, covered=2.0)  # every hint says "more trials"
    helped = sum(
        r.regret - t.regret >= sb.HELPS
        for r in runs for t in runs
        if (t.strategy, t.seed, t.budget) == (r.strategy, r.seed, 2 * r.budget)
    )  # fmt: skip
    assert always == (helped, judged)
