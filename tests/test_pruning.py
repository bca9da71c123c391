"""Pruning over questions (search/pruning.py, search/batches.py): the pruner's two rules on real
in-memory Optuna studies, then whole tiny-model sweeps: pruned trials are PRUNED, counted,
tagged in MLflow and never a result or a best; survivors score as without pruning; a study
with pruned trials resumes."""

import json

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_steerlab, search_config, tiny_args
from steerlab.errors import ConfigError
from steerlab.search import liveness, pruning
from steerlab.search.strategies import Strategy, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study():
    return optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 0, {}))


def _complete(study, strategy, per_question, coherence=90.0):
    """A trial that answered every question: its per-question trait scores reported."""
    [t] = strategy.propose(study, 1)
    pruning.report(t, range(len(per_question)), [{"trait": x} for x in per_question])
    mean = sum(per_question) / len(per_question)
    strategy.tell(study, t, {"trait": mean, "coherence": coherence, "delta": mean}, 70.0)
    return t


def _first_pass(study, strategy, steps, traits, coherences):
    [t] = strategy.propose(study, 1)
    pruning.report(t, steps, [{"trait": x} for x in traits])
    t.set_user_attr(pruning.STAGE_COHERENCE, list(coherences))
    return t


def test_the_pruner_stops_clearly_incoherent_and_clearly_worse_trials_and_says_why():
    study, s = _study(), Strategy(search_config(), list(range(4)))
    pruner = pruning.QuestionPruner(70.0, 0.1)
    study.pruner = pruner
    # no best valid trial yet: only incoherence can prune
    garbage = _first_pass(study, s, [0, 1, 2], [90, 95, 99], [12, 15, 10])
    unsure = _first_pass(study, s, [0, 1, 2], [5, 6, 7], [20, 95, 99])  # spread: not clearly
    assert garbage.should_prune() and not unsure.should_prune()
    assert pruner.why[garbage.number].startswith("incoherent: mean coherence 12.3 on 3 questions")
    best = _complete(study, s, [80, 82, 84, 86, 88, 90, 92, 94])
    steps = [0, 2, 3, 5, 6, 7]
    worse = _first_pass(study, s, steps, [10, 12, 14, 11, 13, 15], [90] * 6)
    better = _first_pass(study, s, steps, [99, 98, 97, 99, 98, 97], [90] * 6)
    close = _first_pass(study, s, steps, [82, 83, 87, 89, 91, 95], [90] * 6)  # not clearly worse
    assert worse.should_prune() and not better.should_prune() and not close.should_prune()
    assert pruner.why[worse.number] == (
        f"worse than trial {best.number} (the best valid) on 6 questions (Wilcoxon p < 0.1)"
    )
    # an invalid trial is never "the best" a trial is tested against: Optuna's best is feasible
    _complete(study, s, [100] * 8, coherence=10.0)
    assert study.best_trial.number == best.number


def test_a_pruned_trial_counts_but_is_never_a_result_or_the_best():
    from steerlab.config import SteeringConfig
    from steerlab.search import study as st

    study, s = _study(), Strategy(search_config(), list(range(4)))
    kept = _complete(study, s, [40, 50], coherence=80.0)
    [cut] = s.propose(study, 1)
    pruning.report(cut, [0], [{"trait": 99.0}])
    scores = {"trait": 99.0, "coherence": 95.0, "delta": 99.0}  # higher, on one question
    pruning.tell(study, cut, scores, "worse than trial 0", 70.0)
    [surplus] = s.propose(study, 1)
    study.tell(surplus, state=TrialState.PRUNED)  # a surplus trial given back: not recorded
    frozen = {t.number: t for t in study.get_trials()}
    assert frozen[cut.number].state == TrialState.PRUNED
    assert frozen[cut.number].user_attrs["pruned"] == "worse than trial 0"
    assert frozen[cut.number].system_attrs["constraints"] == [-25.0]  # written for Optuna
    assert [pruning.recorded(t) for t in frozen.values()] == [True, True, False]
    assert liveness.counted(study) == 2 and liveness.n_pruned(study) == 1
    assert study.best_trial.number == kept.number
    rows = st.records(study, s, SteeringConfig(), 70.0)
    assert [r.number for r in rows] == [kept.number]


def test_pruning_is_refused_with_samplers_that_ignore_pruned_trials():
    for bad in ({"sampler": "gp"}, {"sampler": "cmaes"}, {"multi_objective": True}):
        search = search_config(**bad, prune={"enabled": True, "first": 0.5, "p": 0.1})
        with pytest.raises(ConfigError, match="search.prune.enabled=true does not work with"):
            pruning.check(search)
    search = search_config(prune={"enabled": True, "first": 1.0, "p": 0.1})
    with pytest.raises(ConfigError, match=r"search.prune.first=1.0 must lie in \(0, 1\)"):
        pruning.check(search)
    search = search_config(prune={"enabled": True, "first": 0.5, "p": 0.99})
    with pytest.raises(ConfigError, match=r"search.prune.p=0.99 in \(0, 0.5\]"):
        pruning.check(search)
    pruning.check(search_config(prune={"enabled": True, "first": 0.5, "p": 0.1}))


def test_the_first_questions_are_at_least_two_repeatable_and_vary_by_batch():
    a = pruning.first_questions(14, 0.5, 0, 0)
    assert a == sorted(a) and len(a) == 7 and a == pruning.first_questions(14, 0.5, 0, 0)
    assert a != pruning.first_questions(14, 0.5, 0, 4)
    assert len(pruning.first_questions(3, 0.1, 0, 0)) == 2


PRUNE = [  # 6 questions, 3 first; p=0.5, the loosest "clearly worse", so that trials get pruned
    "steering.n_questions=6",
    "search.prune.enabled=true",
    "search.prune.p=0.5",
    "search.batch_size=2",
]


def _sweep_dir(root):
    [d] = (root / "multirun" / "tiny" / "evil").glob("*/*")
    return d


@pytest.mark.slow
def test_a_pruned_sweep_records_pruned_trials_apart_and_resumes(tmp_path, tiny_dir, cache):
    from steerlab import tracking
    from steerlab.search import runs

    pruned_root, plain_root = tmp_path / "pruned", tmp_path / "plain"
    common = (f"paths.cache={cache}", "search.n_trials=4")
    first = run_steerlab(*tiny_args(pruned_root, tiny_dir, *PRUNE, *common))
    assert first.returncode == 0, first.stderr[-3000:]
    plain = run_steerlab(
        *tiny_args(plain_root, tiny_dir, *PRUNE[:1], "search.prune.enabled=false",
                   "search.batch_size=2", *common)
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    # resume the pruned study to 8 trials
    again = run_steerlab(*tiny_args(pruned_root, tiny_dir, *PRUNE, f"paths.cache={cache}",
                                    "search.n_trials=8"))  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    sweep = _sweep_dir(pruned_root)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{sweep}/optuna.db")
    trials = study.get_trials(deepcopy=False)
    cut = [t for t in trials if t.state == TrialState.PRUNED and "pruned" in t.user_attrs]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert cut and done and len(cut) + len(done) == 8, [(t.number, t.state) for t in trials]
    params = [tuple(sorted(t.params.items())) for t in cut + done]
    assert len(set(params)) == 8  # no point asked twice, pruned ones included
    rows = json.loads((sweep / "trials.json").read_text())
    assert sorted(r["trial"] for r in rows) == sorted(t.number for t in done)  # never a row
    confirmed = json.loads((sweep / "confirmation.json").read_text())
    assert confirmed["trial"] in {t.number for t in done}  # never the best
    for t in cut:  # answered the first 3 questions only, every trial of its batch the same 3
        answered = (sweep / str(t.number) / "responses.jsonl").read_text().splitlines()
        assert len(answered) == 3 and len(t.intermediate_values) == 3
        assert json.loads((sweep / str(t.number) / "metrics.json").read_text())["pruned"] == 1.0
    for t in done:
        assert len(t.intermediate_values) == 6  # every question: a best to test against
    # MLflow mirrors the study: one FINISHED run per recorded trial, the pruned ones tagged
    parent = study.user_attrs["mlflow_parent_run_id"]
    store = f"sqlite:///{pruned_root}/mlruns/mlflow.db"
    logged = runs.logged_trials(store, parent)
    assert sorted(logged) == sorted(t.number for t in cut + done)
    assert all(len(ids) == 1 for ids in logged.values())
    c = tracking.client(store)
    for t in cut + done:
        tags = c.get_run(logged[t.number][0]).data.tags
        assert (tags.get("steerlab.pruned") == "true") == (t in cut), t.number
    # the first batch is the same in both studies and none of it can be pruned (no best yet):
    # its scores, two passes over the questions, equal those of one pass
    plain_rows = {
        r["trial"]: r for r in json.loads((_sweep_dir(plain_root) / "trials.json").read_text())
    }
    for r in rows:
        if r["trial"] < 2:
            p = plain_rows[r["trial"]]
            assert (r["layer"], r["coef"], r["trait"], r["coherence"]) == (
                p["layer"], p["coef"], p["trait"], p["coherence"]
            )  # fmt: skip
    assert f"{len(done)} trials done, {len(cut)} pruned, 0 failed" in again.stdout
