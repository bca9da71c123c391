"""The cluster path for real: `scripts/slurm_array.sbatch`, unchanged, submitted as a SLURM array
to a one-node cluster on this machine (`scripts/slurm.sh`: slurmctld, slurmd, munge), every task a
worker on one PostgreSQL study and one MLflow server (the fixtures of test_workers)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_args
from test_workers import POLL_ERRORS, check_runs, complete, params_of, the_study

pytestmark = [pytest.mark.server, pytest.mark.slow]
SCRIPT = REPO / "scripts" / "slurm_array.sbatch"


@pytest.fixture(scope="module")
def slurm():
    """A one-node SLURM cluster (24 CPUs, 3 GPU slots) in a temporary folder; its SLURM_CONF."""
    if not shutil.which("slurmctld") and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM is not installed (make test installs slurm-wlm and munge)")
    folder = Path(tempfile.mkdtemp(prefix="steerlab-slurm-"))
    conf = subprocess.run(
        [str(REPO / "scripts" / "slurm.sh"), "start", str(folder)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert conf.returncode == 0, conf.stderr
    yield conf.stdout.strip()
    subprocess.run([str(REPO / "scripts" / "slurm.sh"), "stop", str(folder)], timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def slurm_env(conf: str, pg: str, mlflow: str) -> dict[str, str]:
    return os.environ | {
        "SLURM_CONF": conf, "STORAGE": pg, "TRACKING": mlflow, "OMP_NUM_THREADS": "1",
    }  # fmt: skip


def submit(tmp_path: Path, env: dict, model: Path, cache: Path, *extra: str) -> str:
    """`sbatch --array=0-2 scripts/slurm_array.sbatch ...` from a project folder; the job id."""
    work = tmp_path / "project"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    if not (work / ".venv").exists():
        (work / ".venv").symlink_to(REPO / ".venv")
    own = (f"paths.cache={cache}", f"tracking.experiment={tmp_path.name}")  # its own runs view
    args = tiny_args(tmp_path / "root", model, *own, *extra)[1:]  # no -m
    out = subprocess.run(
        ["sbatch", "--parsable", "--array=0-2", str(SCRIPT), *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def squeue(env: dict, job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    return out.stdout.split("\n")[:-1] if out.returncode == 0 else []


def wait_done(env: dict, job: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while squeue(env, job):
        assert time.time() < deadline, f"array {job} still queued after {timeout} s"
        time.sleep(2)


def states(env: dict, job: str) -> dict[str, str]:
    """Each array task's final state from the job completion log (`sacct -c`)."""
    out = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "jobid,state"], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    rows = [line.split("|") for line in out.stdout.splitlines() if line]
    return {r[0]: r[1] for r in rows}


def logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((tmp_path / "project" / "logs").glob("*")))


def connections(postgres: dict) -> dict[str, int]:
    """Server connections held per steerlab worker (`application_name` names it)."""
    import psycopg

    admin = f"host=127.0.0.1 port={postgres['port']} user=steerlab dbname=postgres"
    with psycopg.connect(admin) as c:
        rows = c.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE application_name LIKE 'steerlab %' GROUP BY 1"
        ).fetchall()
    return dict(rows)


def test_an_array_of_three_tasks_runs_one_study(tmp_path, slurm, postgres, pg_url, mlflow_server,
                                                 tiny_dir, cache):  # fmt: skip
    env = slurm_env(slurm, pg_url, mlflow_server)
    job = submit(tmp_path, env, tiny_dir, cache, "search.n_trials=9")
    held: dict[str, int] = {}  # the most connections each worker held at once
    while squeue(env, job):
        for worker, n in connections(postgres).items():
            held[worker] = max(held.get(worker, 0), n)
        time.sleep(0.5)
    assert held and max(held.values()) <= 4, held  # study.POOL: what docs/workers.md states
    done = complete(the_study(pg_url))
    assert len(done) == 9 and len(set(params_of(done))) == 9, logs(tmp_path)[-3000:]
    assert not the_study(pg_url).get_trials(states=(optuna_running(),))
    check_runs(mlflow_server, 9, tmp_path.name)
    final = list(states(env, job).values())
    assert final[-3:] == ["COMPLETED"] * 3, (final, logs(tmp_path)[-3000:])


def optuna_running():
    from optuna.trial import TrialState

    return TrialState.RUNNING


def pid_of(env: dict, task: str) -> str | None:
    """The worker's pid of array task `task` (`<job>_<i>`) while it runs."""
    raw = subprocess.run(["squeue", "-h", "-j", task, "-o", "%A"], env=env,
                         capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
    if not raw.isdigit():  # pending, or gone
        return None
    out = subprocess.run(["scontrol", "listpids", raw], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    pids = [r.split()[0] for r in out.stdout.splitlines()[1:] if r.split()]
    return next((p for p in pids if p.isdigit()), None)


def when_in_flight(env: dict, pg_url: str, task: str, timeout: float = 600) -> None:
    """Return once `task`'s worker has a trial in flight (a RUNNING trial tagged with its pid)."""
    pid, deadline = None, time.time() + timeout
    while time.time() < deadline:
        pid = pid or pid_of(env, task)
        try:
            flying = the_study(pg_url).get_trials(deepcopy=False, states=(optuna_running(),))
        except POLL_ERRORS:
            flying = []
        if pid and any(str(t.user_attrs.get("worker", "")).endswith(f":{pid}") for t in flying):
            return
        time.sleep(0.05)
    pytest.fail(f"task {task} never had a trial in flight within {timeout} s")


SLOW_BATCHES = ("search.n_trials=9", "search.batch_size=2", "steering.max_new_tokens=48",
                "search.grace_period=600")  # fmt: skip


def test_a_cancelled_task_gives_its_trials_back_at_once(tmp_path, slurm, pg_url, mlflow_server,
                                                        tiny_dir, cache):  # fmt: skip
    env = slurm_env(slurm, pg_url, mlflow_server)
    job = submit(tmp_path, env, tiny_dir, cache, *SLOW_BATCHES)
    victim = f"{job}_1"
    when_in_flight(env, pg_url, victim)
    subprocess.run(["scancel", victim], env=env, check=True, timeout=30)
    cancelled = dt.datetime.now()
    wait_done(env, job)
    study = the_study(pg_url)
    back = [
        t
        for t in study.get_trials(deepcopy=False)
        if "SIGTERM" in str(t.user_attrs.get("interrupted", ""))
    ]
    assert back, logs(tmp_path)[-3000:]
    log = (tmp_path / "project" / "logs" / f"steerlab-{victim}.log").read_text()
    assert re.search(
        r"steerlab: stopped by SIGTERM: [1-9]\d* trial\(s\) in flight given back", log
    ), log[-3000:]
    for t in back:  # closed within seconds of scancel, not after the 600 s grace period
        assert (t.datetime_complete - cancelled).total_seconds() < 30
    done = complete(study)
    assert len(done) == 9 and len(set(params_of(done))) == 9
    assert {params_of([t])[0] for t in back} <= set(params_of(done))  # re-tried by the others
    check_runs(mlflow_server, 9, tmp_path.name)
    final = states(env, job)
    assert "CANCELLED" in final.values(), final


def test_a_requeued_task_rejoins_the_study_and_nothing_counts_twice(
    tmp_path, slurm, pg_url, mlflow_server, tiny_dir, cache
):
    env = slurm_env(slurm, pg_url, mlflow_server)
    job = submit(tmp_path, env, tiny_dir, cache, *SLOW_BATCHES)
    task = f"{job}_1"
    when_in_flight(env, pg_url, task)
    subprocess.run(["scontrol", "requeue", task], env=env, check=True, timeout=30)
    # SLURM holds a requeued job ~2 min (BeginTime); release it now, as `scontrol update` lets
    for _ in range(50):
        held = subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], env=env,
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        if held.returncode == 0:
            break
        time.sleep(0.2)
    wait_done(env, job)
    show = subprocess.run(["scontrol", "show", "job", task], env=env, capture_output=True,
                          text=True, timeout=30).stdout  # fmt: skip
    assert "Restarts=1" in show and "JobState=COMPLETED" in show, show
    log = (tmp_path / "project" / "logs" / f"steerlab-{job}_1.log").read_text()
    assert "DUE TO JOB REQUEUE" in log, log[-3000:]  # one log, both runs (--open-mode=append)
    study = the_study(pg_url)
    assert any("SIGTERM" in str(t.user_attrs.get("interrupted", ""))
               for t in study.get_trials(deepcopy=False))  # fmt: skip
    done = complete(study)
    assert len(done) == 9 and len(set(params_of(done))) == 9, logs(tmp_path)[-3000:]
    assert not study.get_trials(states=(optuna_running(),))
    check_runs(mlflow_server, 9, tmp_path.name)


def test_a_postgres_restart_mid_study_then_the_same_command_finishes_it(
    tmp_path, slurm, postgres, pg_url, mlflow_server, tiny_dir, cache
):
    env = slurm_env(slurm, pg_url, mlflow_server)
    job = submit(tmp_path, env, tiny_dir, cache, *SLOW_BATCHES)
    deadline = time.time() + 600
    while True:
        try:
            if (seen := len(complete(the_study(pg_url)))) >= 2:
                break
        except POLL_ERRORS:
            pass
        assert time.time() < deadline, logs(tmp_path)[-3000:]
        time.sleep(0.5)
    pg, folder = str(REPO / "scripts" / "postgres.sh"), str(postgres["dir"])
    subprocess.run([pg, "stop", folder], check=True, timeout=60)
    assert seen < 9 and squeue(env, job), "the study ended before the restart"
    time.sleep(5)
    subprocess.run([pg, "start", folder, str(postgres["port"])], check=True, timeout=120,
                   capture_output=True)  # fmt: skip
    wait_done(env, job)
    for i in range(3):  # each worker rode it out, or gave up in one line naming the database
        text = (tmp_path / "project" / "logs" / f"steerlab-{job}_{i}.log").read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "9 trials done" in text or "steerlab: error: study storage" in text, text[-3000:]
    # the same command again finishes the study: n_trials exactly, nothing asked twice
    job = submit(tmp_path, env, tiny_dir, cache, *SLOW_BATCHES)
    wait_done(env, job)
    study = the_study(pg_url)
    done = complete(study)
    assert len(done) == 9 and len(set(params_of(done))) == 9, logs(tmp_path)[-3000:]
    assert not study.get_trials(states=(optuna_running(),))
    check_runs(mlflow_server, 9, tmp_path.name)
