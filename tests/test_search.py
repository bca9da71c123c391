"""Search strategies on in-memory Optuna studies (no model): proposals, replay, frontier."""

import optuna
import pytest

from conftest import search_config
from hydra_plugins.steerlab_sweeper.steerlab_sweeper import combos
from steerlab.config import SteeringConfig
from steerlab.search.pareto import frontier
from steerlab.search.strategies import Adaptive, CmaEnsemble, Strategy, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _tell(study, trial, trait, coherence, strategy, threshold=70.0):
    strategy.tell(study, trial, {"trait": trait, "coherence": coherence}, threshold)


def test_frontier_keeps_only_non_dominated_points():
    pts = [(10, 90), (50, 80), (40, 70), (80, 40), (80, 30), (20, 95)]
    front = frontier(pts)
    assert sorted(front) == [1, 3, 5]  # (10, 90) is dominated by (20, 95)
    assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


def test_optuna_strategy_respects_space_and_constraint():
    search = search_config()
    s = Strategy(search, list(range(3, 9)))
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 0, {}))
    for _ in range(3):
        for t in s.propose(study, 4):
            assert 3 <= t.params["layer"] <= 8 and 0.05 <= t.params["coef"] <= 0.8
            steer = s.steering(t, SteeringConfig(layer=0, coef=1.0))
            assert (steer.layer, steer.coef) == (t.params["layer"], t.params["coef"])
            _tell(
                study,
                t,
                trait=100 * t.params["coef"],
                coherence=100 - 100 * t.params["coef"],
                strategy=s,
            )
    best = study.best_trial  # Optuna's best considers feasible trials only
    assert best.user_attrs["feasible"]


def test_adaptive_multiplies_up_when_coherent_and_replays_state():
    search = search_config(
        sampler="adaptive",
        coef_range=[0.01, 10.0],
        options=dict(start=1.0, up=2.0, down=0.5, momentum=0.0, steps=2),
    )
    s = Adaptive(search, [4, 5])
    study = optuna.create_study(direction="maximize", sampler=make_sampler("adaptive", 0, {}))
    first = s.propose(study, 10)
    assert sorted(t.params["layer"] for t in first) == [4, 5]
    base = first[0].params["coef"]
    for t in first:  # layer 4 stays coherent, layer 5 does not
        _tell(study, t, 50, 90 if t.params["layer"] == 4 else 10, s)
    second = {t.params["layer"]: t.params["coef"] for t in s.propose(study, 10)}
    assert second[4] == pytest.approx(base * 2.0) and second[5] == pytest.approx(base * 0.5)
    # a fresh strategy object on the same study continues from the same state (resume)
    study2_props = Adaptive(search, [4, 5]).state(study)
    assert study2_props[4][2] == 1 and study2_props[5][2] == 1


def test_cma_ensemble_penalises_incoherent_candidates_and_replays_generations():
    search = search_config(sampler="cmaes_ensemble", batch_size=4, options={"base": 1.0})
    s = CmaEnsemble(search, list(range(10)), [2, 5])
    assert s.fitness(80, 60, 70) > s.fitness(10, 75, 70)  # any coherent beats any incoherent
    study = optuna.create_study(direction="maximize", sampler=make_sampler("random", 0, {}))
    gen0 = s.propose(study, 4)
    assert len(gen0) == 4 and all(0 <= v <= 4.0 for t in gen0 for v in t.params.values())
    steer = s.steering(gen0[0], SteeringConfig(coef=9.0))
    assert steer.layers == [2, 5] and steer.weights == [gen0[0].params[f"w{la}"] for la in (2, 5)]
    for t in gen0:
        _tell(study, t, 10 * t.params["w2"], 90, s)
    again = CmaEnsemble(search, list(range(10)), [2, 5])
    gen1 = again.propose(study, 4)
    assert again.generation == 1
    assert {t.user_attrs["generation"] for t in gen1} == {1}


def test_combos_expand_sweeps_params_and_arms():
    got = combos(
        ["trait=evil,sycophancy", "search.n_trials=3"],
        {"extraction.method": "mean_diff,probe"},
        ["extraction=natural position=5", "extraction=instruction position=all"],
    )
    assert len(got) == 8
    assert [
        "extraction=natural",
        "position=5",
        "extraction.method=mean_diff",
        "trait=evil",
        "search.n_trials=3",
    ] in got


def test_a_grid_study_tells_its_last_point_without_error():
    """Optuna's GridSampler calls `study.stop()` after the grid's last point, which raises
    outside `optimize`: the whole grid is told, every trial COMPLETE, and nothing raises."""
    search = search_config(sampler="grid", n_trials=4, batch_size=2, options={"coef_points": 2})
    strategy = Strategy(search, [0, 1])
    study = optuna.create_study(sampler=make_sampler("grid", 0, strategy.grid_space()))
    for _ in range(2):
        for t in strategy.propose(study, 2):
            strategy.tell(study, t, {"trait": 50.0, "coherence": 80.0}, 70.0)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 4
    assert len({(t.params["layer"], t.params["coef"]) for t in study.trials}) == 4
