"""Studies you can trust: resumed, killed and shared by several worker processes through a real
PostgreSQL server (started here), Optuna's journal file and a real `mlflow server`.

The workers are real `python -m steerlab -m` processes on a tiny random Llama (a whole sweep in
seconds), so what is tested is the study machinery: trial counts across workers, no replayed
parameters, dead workers' trials re-tried, one MLflow parent run, no run left RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from conftest import REPO, WORK, tiny_args

pytestmark = pytest.mark.server


def start(root: Path, model: Path, cache: Path, *extra: str) -> subprocess.Popen:
    args = tiny_args(root, model, f"paths.cache={cache}", *extra)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "steerlab", *args], cwd=WORK, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def finish(*procs: subprocess.Popen) -> list[str]:
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


_STORAGES: dict[str, optuna.storages.BaseStorage] = {}
POLL_ERRORS = (ValueError, KeyError, optuna.exceptions.StorageInternalError, SQLAlchemyError)


def the_study(storage) -> optuna.Study:
    """The one study of a storage (one storage object per URL: polling must not open a new
    connection pool each time)."""
    if isinstance(storage, str):
        if storage not in _STORAGES:  # pre-pinged: it outlives a server restart
            kwargs = {} if storage.startswith("sqlite") else {"pool_pre_ping": True}
            _STORAGES[storage] = optuna.storages.RDBStorage(storage, engine_kwargs=kwargs)
        storage = _STORAGES[storage]
    [summary] = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def params_of(trials) -> list[tuple]:
    return [(t.params["layer"], round(t.params["coef"], 12)) for t in trials]


def complete(study: optuna.Study):
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def mlflow_runs(uri: str, experiment: str | None = None):
    import mlflow

    client = mlflow.MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()
            if experiment in (None, e.name)]  # fmt: skip
    return client.search_runs(exps, max_results=1000)


def check_runs(uri: str, n: int, experiment: str | None = None) -> None:
    """One sweep parent, n finished trial runs under it, nothing RUNNING (in `experiment`, or
    in the whole store)."""
    runs = mlflow_runs(uri, experiment)
    parents = [r for r in runs if r.data.tags.get("steerlab.kind") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("steerlab.kind") == "trial"]
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parents[0].info.run_id}
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    finished = [r for r in kids if r.info.status == "FINISHED"]
    assert len(finished) == n
    assert len({r.data.tags["steerlab.trial"] for r in finished}) == n


def test_resume_and_restart_after_kill_never_replay(tmp_path, tiny_dir, cache):
    storage = f"sqlite:///{tmp_path}/multirun/tiny/evil/natural-mean_diff-5/residual-tpe/optuna.db"
    finish(start(tmp_path, tiny_dir, cache, "search.n_trials=4"))
    finish(start(tmp_path, tiny_dir, cache, "search.n_trials=8"))  # raised: 4 more, new ones
    assert len(set(params_of(complete(the_study(storage))))) == 8

    root = tmp_path / "killed"
    storage = storage.replace(str(tmp_path), str(root))
    proc = start(root, tiny_dir, cache, "search.n_trials=8")
    deadline = time.time() + 300
    while time.time() < deadline:
        if Path(storage.removeprefix("sqlite:///")).is_file():
            try:
                if len(complete(the_study(storage))) >= 2:
                    break
            except POLL_ERRORS:  # the worker is still creating the study's tables
                pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 in the middle of the sweep
    proc.wait()
    [out] = finish(start(root, tiny_dir, cache, "search.n_trials=8"))
    study = the_study(storage)
    done = complete(study)
    assert len(done) == 8 and len(set(params_of(done))) == 8
    killed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    retried = {t.number for t in done if "failed_trial" in t.system_attrs}
    assert len(retried) == len(killed)  # every killed trial's parameters re-tried, once
    sampled = [t for t in killed if t.params]  # a kill inside `ask` leaves a trial without any
    assert set(params_of(sampled)) <= set(params_of(done))
    assert "8 trials done, 0 failed" in out
    check_runs_local = mlflow_runs(f"sqlite:///{root}/mlruns/mlflow.db")
    assert [r for r in check_runs_local if r.info.status == "RUNNING"] == []


def test_three_workers_share_a_postgres_study_and_an_mlflow_server(
    tmp_path, tiny_dir, cache, pg_url, mlflow_server
):
    extra = [f"search.storage={pg_url}", f"tracking.uri={mlflow_server}",
             "search.n_trials=9", "tracking.experiment=three-workers"]  # fmt: skip
    outs = finish(*(start(tmp_path, tiny_dir, cache, *extra) for _ in range(3)))
    study = the_study(pg_url)
    done = complete(study)
    assert len(done) == 9 and len(set(params_of(done))) == 9
    assert study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) == []
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) >= 2, workers  # the work was shared
    assert all("9 trials done" in out for out in outs)
    check_runs(mlflow_server, 9)


def test_a_killed_worker_leaves_its_trials_to_the_others(tmp_path, tiny_dir, cache, pg_url):
    extra = [f"search.storage={pg_url}", "search.n_trials=9",
             "steering.max_new_tokens=24"]  # fmt: skip
    procs = [start(tmp_path, tiny_dir, cache, *extra) for _ in range(3)]
    victim = procs[0]
    deadline = time.time() + 300
    study = None
    while time.time() < deadline:  # kill worker 0 while it has a batch in flight
        try:
            study = the_study(pg_url)
            mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]  # fmt: skip
            if mine:
                break
        except POLL_ERRORS:  # the workers are still creating the study's tables
            pass
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    finish(*procs[1:])
    study = the_study(pg_url)
    done = complete(study)
    assert len(done) == 9 and len(set(params_of(done))) == 9
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert failed and all(t.user_attrs["worker"].endswith(f":{victim.pid}") for t in failed)
    sampled = [t for t in failed if t.params]  # a kill inside `ask` leaves a trial without any
    assert set(params_of(sampled)) <= set(params_of(done))  # re-tried by the others
    assert study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) == []


def test_two_workers_on_a_journal_file(tmp_path, tiny_dir, cache):
    extra = ["search.storage=journal", "search.n_trials=6"]
    finish(*(start(tmp_path, tiny_dir, cache, *extra) for _ in range(2)))
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "multirun" / "optuna.journal")))
    study = the_study(storage)
    done = complete(study)
    assert len(done) == 6 and len(set(params_of(done))) == 6
    check_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", 6)


def test_a_worker_with_other_settings_or_no_database_is_refused_before_loading(
    tmp_path, tiny_dir, cache, pg_url
):
    base = [f"search.storage={pg_url}", "search.n_trials=1",
            "tracking.experiment=refusal"]  # fmt: skip
    finish(start(tmp_path, tiny_dir, cache, *base))
    other = start(tmp_path / "b", tiny_dir, cache, *base, "steering.max_new_tokens=5")
    out = other.communicate(timeout=300)[0]
    assert other.returncode == 2
    assert "steering.max_new_tokens: 4 -> 5" in out and "Loading weights" not in out
    url = "postgresql+psycopg://steerlab:s3cret@127.0.0.1:1/steerlab"
    t0 = time.time()
    dead = start(tmp_path / "c", tiny_dir, cache, f"search.storage={url}")
    out = dead.communicate(timeout=300)[0]
    errors = [line for line in out.splitlines() if line.startswith("steerlab: error:")]
    assert dead.returncode == 2 and len(errors) == 1, out[-2000:]
    assert "127.0.0.1:1/steerlab" in errors[0] and "***" in errors[0]
    assert "s3cret" not in out and "Loading weights" not in out
    assert time.time() - t0 < 60


def test_heartbeats_keep_a_remote_workers_trials_and_expire_a_dead_ones(tmp_path):
    """The other-host path: no pid to check, only Optuna's heartbeats and grace period."""
    from hydra import compose, initialize_config_dir

    from steerlab.config import register
    from steerlab.search import liveness
    from steerlab.search import storage as sto
    from steerlab.search import study as st
    from steerlab.search.strategies import Strategy

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["search.heartbeat_interval=1", "search.grace_period=3"])
    handle = st.open_study(cfg, tmp_path, ["maximize"])
    live, dead = Strategy(cfg.search, [1, 2]).propose(handle.study, 2)
    for t in (live, dead):
        t.set_user_attr(sto.WORKER, "some-other-host:4242")
    with liveness.heartbeats(handle, [dead]):
        time.sleep(0.5)  # one beat, then its worker "dies"
    with liveness.heartbeats(handle, [live]):
        time.sleep(4.5)  # the live one keeps beating past the grace period
        closed = liveness.close_dead(handle.study)
    assert closed == []  # not a local worker: Optuna's heartbeat check closed it
    states = {t.number: t.state for t in handle.study.get_trials(deepcopy=False)}
    assert states[dead.number] == TrialState.FAIL and states[live.number] == TrialState.RUNNING
    waiting = handle.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [dead.params]  # re-tried


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_copies_started_at_the_same_moment_never_ask_a_point_twice(
    tmp_path, tiny_dir, cache, storage
):
    """Two terminals running the same command (no STEERLAB_WORKER): one creates the study and
    keeps `search.seed`, the other joins with a seed of its own, and no point is asked twice."""
    extra = ("search.n_trials=8", f"search.storage={storage}")
    finish(*(start(tmp_path, tiny_dir, cache, *extra) for _ in range(2)))
    sweep = tmp_path / "multirun/tiny/evil/natural-mean_diff-5/residual-tpe"
    url = (
        f"sqlite:///{sweep}/optuna.db"
        if storage == "sqlite"
        else optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "multirun/optuna.journal"))
        )
    )
    study = the_study(url)
    done = complete(study)
    assert len(done) == 8 and len(set(params_of(done))) == 8, params_of(done)
    asked = [t for t in study.get_trials(deepcopy=False) if t.params]
    repeats = [t for t in asked if t.user_attrs.get("repeat")]
    assert len(set(params_of([t for t in asked if t not in repeats]))) == len(asked) - len(repeats)


def test_three_copies_started_by_hand_on_postgres_never_ask_a_point_twice(
    tmp_path, tiny_dir, cache, pg_url
):
    """Three terminals on one PostgreSQL study at the same moment: 9 trials, 9 points."""
    extra = (f"search.storage={pg_url}", "search.n_trials=9")
    finish(*(start(tmp_path, tiny_dir, cache, *extra) for _ in range(3)))
    done = complete(the_study(pg_url))
    assert len(done) == 9 and len(set(params_of(done))) == 9, params_of(done)


def test_workers_setting_one_new_experiment_tag_at_once_all_succeed(mlflow_server):
    """Every worker tags the shared experiment when its study ends (its runs view): a new tag
    set by several at once races on its insert in the server's database."""
    import threading

    from steerlab import tracking

    exp = tracking.experiment_id(mlflow_server, "tag-race")
    errors: list[BaseException] = []
    for key in range(6):
        start = threading.Barrier(6)

        def tag(i: int, key: int = key, start: threading.Barrier = start) -> None:
            c = tracking.client(mlflow_server)
            start.wait()
            try:
                tracking.racing(c.set_experiment_tag, exp, f"race.{key}", str(i))
            except Exception as e:  # noqa: BLE001 - collected, asserted below
                errors.append(e)

        threads = [threading.Thread(target=tag, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
