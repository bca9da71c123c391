"""Study handling (search/study.py) on a real sqlite Optuna study: settings refusal, resume after
a kill (interrupted trials closed, not counted), enqueue once, and trials read back as records."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from steerlab.config import register, steering_of
from steerlab.search import liveness
from steerlab.search import settings as sets
from steerlab.search import storage as sto
from steerlab.search import study as st
from steerlab.search.points import sampler_seed
from steerlab.search.strategies import Strategy, make_sampler

CONF = Path(__file__).resolve().parents[1] / "conf"
register()


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _open(cfg, sweep_dir):
    handle = st.open_study(cfg, sweep_dir, ["maximize"])
    handle.study.sampler = make_sampler("tpe", sampler_seed(0, handle.study, handle.created), {})
    return handle.study


def test_settings_name_what_changed_and_ignore_speed_and_search_size(tmp_path):
    cfg = _cfg("trait=evil", "search.n_trials=4")
    _open(cfg, tmp_path)
    speed = ("search.n_trials=40", "search.batch_size=16", "steering.batch_size=3")
    faster = _cfg("trait=evil", *speed)
    sets.check_settings(tmp_path, sets.study_settings(faster))  # same study: allowed
    other = _cfg("trait=evil", "steering.max_new_tokens=12")
    with pytest.raises(ValueError, match=r"steering.max_new_tokens: 40 -> 12"):
        sets.check_settings(tmp_path, sets.study_settings(other))


def test_dead_workers_trials_are_closed_and_retried_live_ones_untouched(tmp_path):
    import subprocess
    import sys

    cfg = _cfg("trait=evil", "search.enqueue=[{layer:3,coef:0.2}]")
    study = _open(cfg, tmp_path)
    strategy = Strategy(cfg.search, list(range(2, 6)))
    done, killed, broken, live = strategy.propose(study, 4)
    assert (done.params["layer"], done.params["coef"]) == (3, 0.2)  # enqueued first
    strategy.tell(study, done, {"trait": 40.0, "coherence": 80.0, "delta": 5.0}, 70.0)
    liveness.fail(study, broken, "ValueError('bad config')")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    host = sto.worker_id().rpartition(":")[0]
    killed.set_user_attr(sto.WORKER, f"{host}:{dead}")  # as after a kill -9 of that worker
    live.set_user_attr(sto.WORKER, sto.worker_id())  # this process: alive
    again = _open(cfg, tmp_path)  # a resume or another worker
    assert liveness.close_dead(again) == [killed.number]
    states = {t.number: t.state for t in again.get_trials(deepcopy=False)}
    assert states[killed.number] == TrialState.FAIL and states[live.number] == TrialState.RUNNING
    assert liveness.counted(again) == 2  # the completed one and the one that failed by itself
    assert liveness.n_failed(again) == (1, 1)
    [retry] = again.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert retry.params == killed.params  # re-tried: no budget lost
    assert len(cfg.search.enqueue) == 1 and len(liveness.running(again)) == 1  # enqueued only once
    assert sto.WORKER not in retry.user_attrs  # not the dead worker's any more
    # a live worker pops the retry; before it tags it, another worker looks for dead ones
    [popped] = strategy.propose(again, 1)
    assert popped.number == retry.number
    assert liveness.close_dead(_open(cfg, tmp_path)) == []
    assert again.get_trials(deepcopy=False)[popped.number].state == TrialState.RUNNING


def test_surplus_trials_beyond_the_budget_are_given_back(tmp_path):
    cfg = _cfg("trait=evil")
    study = _open(cfg, tmp_path)
    strategy = Strategy(cfg.search, [1, 2])
    first = strategy.propose(study, 2)  # another worker's batch, in flight
    mine = strategy.propose(study, 2)
    kept = liveness.release_surplus(study, mine, total=3)
    assert [t.number for t in kept] == [mine[0].number]  # lowest numbers fit the budget
    assert study.get_trials(deepcopy=False)[mine[1].number].state == TrialState.PRUNED
    assert liveness.counted(study) == 0 and len(liveness.running(study)) == 3 and len(first) == 2


def test_records_carry_the_steering_each_trial_evaluated(tmp_path):
    cfg = _cfg("trait=evil")
    study = _open(cfg, tmp_path)
    strategy = Strategy(cfg.search, [1, 2])
    [t] = strategy.propose(study, 1)
    strategy.tell(study, t, {"trait": 71.5, "coherence": 69.9, "delta": 3.0}, 70.0)
    [rec] = st.records(study, strategy, steering_of(cfg), 70.0)
    assert (rec.number, rec.layer, rec.coef) == (0, t.params["layer"], t.params["coef"])
    assert (rec.trait, rec.coherence, rec.delta, rec.valid) == (71.5, 69.9, 3.0, False)
    url = sto.storage_url(cfg, tmp_path)
    assert optuna.load_study(study_name=sto.study_name(cfg, tmp_path), storage=url).trials


def test_settings_of_earlier_versions_compare_under_their_new_names(tmp_path):
    import json

    now = sets.study_settings(_cfg("trait=evil"))
    old = {("search.coef" if k == "search.coef_range" else k): v for k, v in now.items()}
    (tmp_path / sets.SETTINGS).write_text(json.dumps(old | {"judge.model": ""}))
    sets.check_settings(tmp_path, now)  # renamed key and a key that no longer exists: same study
    (tmp_path / sets.SETTINGS).write_text(json.dumps(old | {"search.coef": "[0.1, 0.2]"}))
    with pytest.raises(ValueError, match=r"search.coef_range: \[0.1, 0.2\] -> \[0.05, 0.6\]"):
        sets.check_settings(tmp_path, now)


def test_held_out_questions_are_a_setting_only_when_the_search_asks_every_question(tmp_path):
    import json

    every = ("steering.n_questions=null",)
    before = sets.study_settings(_cfg("trait=evil", *every, "confirm.n_questions=0"))
    (tmp_path / sets.SETTINGS).write_text(json.dumps(before))  # a study saved before held-out
    with pytest.raises(ValueError, match=r"confirm.n_questions: None -> 6"):
        sets.check_settings(tmp_path, sets.study_settings(_cfg("trait=evil", *every)))
    sets.check_settings(
        tmp_path, sets.study_settings(_cfg("trait=evil", *every, "confirm.n_questions=0"))
    )
    # a fixed question count: the held-out ones (the last) never change which are searched
    fixed = sets.study_settings(_cfg("trait=evil", "confirm.n_questions=3"))
    assert fixed == sets.study_settings(_cfg("trait=evil", "confirm.n_questions=8"))


def test_storage_and_judge_failures_name_the_storage_and_the_real_cause():
    """A lost PostgreSQL connection or a full disk under the study names the storage (password
    masked) and a cause that says something, never "(cause: ())"; asyncio's "no running event
    loop" bookkeeping is never given as the cause."""
    from steerlab.search.sweep import secret_free

    url = "postgresql+psycopg://steerlab:hunter2@db.example:5433/steerlab"
    cfg = _cfg("trait=evil", f"search.storage={url}")
    try:
        try:
            raise OSError()  # a cause with no message
        except OSError as inner:
            raise optuna.exceptions.StorageInternalError("invalid data in the commit") from inner
    except optuna.exceptions.StorageInternalError as e:
        text = secret_free(e, cfg)
    assert text.startswith("study storage postgresql+psycopg://steerlab:***@db.example:5433")
    assert "(cause: OSError)" in text and "hunter2" not in text and "()" not in text
    try:
        try:
            raise RuntimeError("no running event loop")
        except RuntimeError:
            raise ConnectionError("judge endpoint http://127.0.0.1:9/v1 refused") from None
    except ConnectionError as e:
        e.__context__ = RuntimeError("no running event loop")
        text = secret_free(e, cfg)
    assert "event loop" not in text and "127.0.0.1:9" in text
