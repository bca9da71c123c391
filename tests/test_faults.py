"""Faults around a sweep: a judge endpoint that stops answering in the middle of a study costs
no budget (its trials are given back and re-tried by the next run), and fails in bounded time
with one line naming the URL; a full disk stops a run in one line, the study intact."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
from optuna.trial import TrialState

from conftest import WORK, run_steerlab, tiny_args


def completion(score: str) -> bytes:
    """A chat completion whose only top token is `score`, with probability 1."""
    item = {"token": score, "logprob": 0.0, "top_logprobs": [{"token": score, "logprob": 0.0}]}
    message = {"role": "assistant", "content": score}
    choice = {"index": 0, "logprobs": {"content": [item]}, "message": message}
    return json.dumps({"choices": [choice]}).encode()


class Judge(ThreadingHTTPServer):
    """A local OpenAI-compatible judge that answers 60 to everything until `hang` is set, then
    accepts requests and never answers."""

    daemon_threads = True

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                if judge.hang.is_set():
                    judge.release.wait(120)
                    return
                body = completion("60")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def sweep(root: Path, model: Path, judge: Judge, *extra: str):
    args = [a for a in tiny_args(root, model) if not a.startswith("judge.options.")]
    args += ["judge=openai", f"judge.base_url={judge.url}", "judge.model=test",
             "judge.timeout=1", "judge.concurrency=4", "judge.backoff=0.05", *extra]  # fmt: skip
    return run_steerlab(*args)


def test_a_judge_that_dies_mid_sweep_costs_no_budget(tmp_path, tiny_dir):
    judge = Judge()
    try:
        warm = sweep(tmp_path, tiny_dir, judge, "search.n_trials=2")  # extraction, baseline
        assert warm.returncode == 0, warm.stderr[-3000:]
        judged = _judged(tmp_path)  # answers a dead judge need not see: scored already
        judge.hang.set()
        t0 = time.monotonic()
        dead = sweep(tmp_path, tiny_dir, judge, "search.n_trials=6")
        elapsed = time.monotonic() - t0
        errors = [line for line in dead.stderr.splitlines() if line.startswith("steerlab: error:")]
        assert dead.returncode == 2 and len(errors) == 1, dead.stderr[-3000:]
        assert judge.url in errors[0] and "resumes" in errors[0]
        assert "Traceback" not in dead.stderr
        assert elapsed < 60, elapsed  # bounded by the breaker, not prompts x retries x timeout
        [db] = tmp_path.glob("multirun/**/optuna.db")
        storage = f"sqlite:///{db}"
        [name] = optuna.get_all_study_names(storage)
        study = optuna.load_study(study_name=name, storage=storage)
        given = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        assert given and all("interrupted" in t.user_attrs for t in given)
        # a trial completes while the judge is dead only if every answer of it was scored
        # before (a tiny model's short answers often repeat); any other was given back
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert {0, 1} <= {t.number for t in complete}
        for t in complete:
            rows = (db.parent / str(t.number) / "responses.jsonl").read_text().splitlines()
            if t.number > 1:
                assert {_key(json.loads(r)) for r in rows} <= judged, t.number

        judge.hang.clear()
        judge.release.set()
        again = sweep(tmp_path, tiny_dir, judge, "search.n_trials=6")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "6 trials done, 0 failed" in again.stdout
        study = optuna.load_study(study_name=name, storage=storage)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert len(done) == 6
        params = {(t.params["layer"], t.params["coef"]) for t in done}
        assert {(t.params["layer"], t.params["coef"]) for t in given} <= params  # re-tried
    finally:
        judge.release.set()
        judge.shutdown()


def _judged(root: Path) -> set[str]:
    """The judge cache's keys: the (question, answer) pairs scored so far."""
    return {
        json.loads(line)["k"]
        for path in (root / "cache" / "judge").glob("*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    }


def _key(row: dict) -> str:
    """A trial answer's judge cache key, as `evaluate` judges it (its complete sentences)."""
    from steerlab.cache import digest
    from steerlab.evaluate import complete_sentences

    return digest(row["question"], complete_sentences(row["answer"]), n=24)


def test_a_full_disk_stops_a_sweep_in_one_line_and_the_study_resumes(tmp_path, tiny_dir):
    """paths.root on a 1.5 MB tmpfs: the sweep fills it, stops in one line; moved to a disk
    with room, the same study resumes to its total."""
    import shutil

    import pytest

    disk = tmp_path / "small"
    disk.mkdir()
    cache = tmp_path / "cache"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mounting a small tmpfs needs root")
    try:
        args = [*tiny_args(disk, tiny_dir), f"paths.cache={cache}", "search.n_trials=40"]
        full = run_steerlab(*args)
        errors = [line for line in full.stderr.splitlines() if line.startswith("steerlab: error:")]
        assert full.returncode == 2 and len(errors) == 1, full.stderr[-3000:]
        assert "full" in errors[0] and "Traceback" not in full.stderr
        shutil.copytree(disk / "multirun", tmp_path / "big" / "multirun")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    [db] = (tmp_path / "big").glob("multirun/**/optuna.db")
    storage = f"sqlite:///{db}"
    [name] = optuna.get_all_study_names(storage)
    before = optuna.load_study(study_name=name, storage=storage)
    n_done = len(before.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    assert 0 < n_done < 40
    args = [*tiny_args(tmp_path / "big", tiny_dir), f"paths.cache={cache}", "search.n_trials=40"]
    again = run_steerlab(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "40 trials done, 0 failed" in again.stdout
    study = optuna.load_study(study_name=name, storage=storage)
    done = {(t.params["layer"], t.params["coef"]) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,))}  # fmt: skip
    lost = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.params]
    assert {(t.params["layer"], t.params["coef"]) for t in lost} <= done  # every one re-tried
    _mirrors(study, f"sqlite:///{tmp_path / 'big'}/mlruns/mlflow.db")  # logged from folders


def test_a_judge_dead_during_setup_stops_in_one_line(tmp_path, tiny_dir):
    """A fresh root whose judge never answers: the failure comes during vetting, before any
    trial, and is still one line naming the URL, exit 2 (not a traceback)."""
    judge = Judge()
    judge.hang.set()
    try:
        dead = sweep(tmp_path, tiny_dir, judge, "search.n_trials=2")
        errors = [line for line in dead.stderr.splitlines() if line.startswith("steerlab: error:")]
        assert dead.returncode == 2 and len(errors) == 1, dead.stderr[-3000:]
        assert judge.url in errors[0] and "Traceback" not in dead.stderr
    finally:
        judge.release.set()
        judge.shutdown()


def test_a_judge_answering_500_on_a_fresh_root_is_said_once(tmp_path, tiny_dir, serve):
    """Vetting on a fresh root against a judge that answers 500: one line, said once (it was
    printed twice: the study's summary and the error line)."""
    srv = serve(lambda n, body: (500, {"error": {"message": "internal error"}}))
    args = [a for a in tiny_args(tmp_path, tiny_dir) if not a.startswith("judge.options.")]
    args = [a for a in args if a != "extraction.vet.enabled=false"]
    done = run_steerlab(*args, "judge=openai", f"judge.base_url={srv.url}", "judge.model=test",
                        "judge.backoff=0.05", "search.n_trials=2", timeout=300)  # fmt: skip
    out = done.stdout + done.stderr
    errors = [line for line in out.splitlines() if line.startswith("steerlab: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert srv.url.split("/v1")[0] in errors[0], errors[0]
    said = errors[0].removeprefix("steerlab: error: ")[:60]
    assert out.count(said) == 1, out[-3000:]


def _child_runs(uri: str) -> list:
    import mlflow

    c = mlflow.MlflowClient(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    return [
        r
        for r in c.search_runs(exps, max_results=1000)
        if r.data.tags.get("steerlab.kind") == "trial"
    ]


def _study(root: Path) -> optuna.Study:
    [db] = root.glob("multirun/**/optuna.db")
    storage = f"sqlite:///{db}"
    [name] = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def _mirrors(study: optuna.Study, uri: str) -> None:
    """One FINISHED child run per COMPLETE trial, with that trial's parameters."""
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    every = [r for r in _child_runs(uri) if int(r.data.tags["steerlab.trial"]) in done]
    kids = [r for r in every if r.info.status == "FINISHED"]
    assert len(every) == len(kids), [(r.data.tags["steerlab.trial"], r.info.status) for r in every]
    assert sorted(int(r.data.tags["steerlab.trial"]) for r in kids) == sorted(done)
    for r in kids:
        t = done[int(r.data.tags["steerlab.trial"])]
        assert int(r.data.params["steering.layer"]) == t.params["layer"]
        assert float(r.data.params["steering.coef"]) == t.params["coef"]
    import mlflow

    from steerlab.tracking import read_sweeps

    [read] = read_sweeps(mlflow.MlflowClient(uri), "tiny/evil")  # what the report reads
    assert sorted(t.number for t in read.trials) == sorted(done)


def test_a_tracking_server_killed_mid_study_loses_no_trial(tmp_path, tiny_dir):
    """`mlflow server` killed -9 while a study runs: the run ends in one line listing what is
    not in MLflow yet; with the server back, the same command logs those trials from their
    folders, and MLflow has exactly one run per trial."""
    import os
    import signal
    import socket
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()

    def serve() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(port), "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
             "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts",
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return proc
            except OSError:
                time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("mlflow server did not start")

    uri = f"http://127.0.0.1:{port}"
    env = dict(os.environ)  # MLflow's client as steerlab sets it up: its own retries
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(k, None)
    args = [*tiny_args(tmp_path, tiny_dir), f"tracking.uri={uri}", "search.n_trials=8"]
    server = serve()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "steerlab", *args], cwd=WORK, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        sweep_dir = None
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # batch 2 of 4 is under way
            found = list(tmp_path.glob("multirun/**/1/metrics.json"))
            if found:
                sweep_dir = found[0].parents[1]
                break
            time.sleep(0.02)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        out, err = proc.communicate(timeout=600)
        ended = time.time()
        errors = [line for line in err.splitlines() if line.startswith("steerlab: error:")]
        assert proc.returncode == 2 and len(errors) == 1, (out + err)[-3000:]
        assert "Traceback" not in err and "not in MLflow yet" in errors[0], errors[0]
        assert len(errors[0]) <= 220, errors[0]
        assert "Retrying" not in err, err[-3000:]  # the client's retries: summed up in the line
        body = errors[0].removeprefix("steerlab: error: ")
        assert body not in out and (out + err).count("not in MLflow yet") == 1, out + err
        assert sweep_dir is not None
        last = max(p.stat().st_mtime for p in sweep_dir.glob("*/metrics.json"))
        assert ended - last < 60, ended - last  # ends soon after its last trial
        server = serve()
        study = _study(tmp_path)
        done = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        logged = {int(r.data.tags["steerlab.trial"]) for r in _child_runs(uri)
                  if r.info.status == "FINISHED"}  # fmt: skip
        assert len(done) == 8 and logged < done, (done, logged)
        listed = re.search(r"not in MLflow yet \(([\d, -]+)", errors[0]).group(1)
        numbers = {n for part in listed.split(", ") for n in _span(part)}
        assert numbers == done - logged, (errors[0], done, logged)
        again = run_steerlab(*args, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        study = _study(tmp_path)
        assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 8
        _mirrors(study, uri)
    finally:
        os.killpg(server.pid, signal.SIGKILL)


def _span(part: str) -> range:
    lo, _, hi = part.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def test_a_trial_recorded_by_a_worker_that_died_is_completed_not_repeated(tmp_path, tiny_dir):
    """A worker killed after writing a trial's folder but before telling the study: the next
    run completes that trial from its folder (no retry, no second evaluation) and logs its one
    MLflow run."""
    import shutil

    import yaml

    args = [*tiny_args(tmp_path, tiny_dir), "search.n_trials=2"]
    first = run_steerlab(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    study = _study(tmp_path)
    [sweep_dir] = {p.parent.parent for p in tmp_path.glob("multirun/**/0/metrics.json")}
    t = study.ask(study.trials[0].distributions)  # what the dead worker was evaluating
    number = t.number
    job = sweep_dir / str(number)
    shutil.copytree(sweep_dir / "0", job)  # its folder, written before it died
    config = yaml.safe_load((job / "config.yaml").read_text())
    config["steering"] |= {"layer": t.params["layer"], "coef": t.params["coef"]}
    (job / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    import socket

    t.set_user_attr("worker", f"{socket.gethostname()}:999999")  # this host, a dead pid
    again = run_steerlab(*tiny_args(tmp_path, tiny_dir), "search.n_trials=3")
    assert again.returncode == 0, again.stderr[-3000:]
    study = _study(tmp_path)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert sorted(x.number for x in done) == [0, 1, number]  # completed, nothing re-asked
    assert not study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    _mirrors(study, f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def test_a_full_tracking_disk_loses_no_trial(tmp_path, tiny_dir):
    """The MLflow store (a sqlite `tracking.uri`) on a disk that fills during the study: the
    trials stand, the end is one line naming what is not in MLflow yet; with the store moved
    to a disk with room, the same command logs them all from their folders."""
    import shutil
    import sys

    import pytest

    work = tmp_path / "work"  # the current folder: a sqlite store's artifacts go there
    work.mkdir()
    made = tmp_path / "made.db"  # an empty store, made where there is room (~0.9 MB)
    subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient("
                    f"'sqlite:///{made}').search_experiments()"], cwd=work, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    disk = tmp_path / "small"
    disk.mkdir()
    room = made.stat().st_size // 1024 + 250  # KB: the parent run and a few trials
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("mounting a small tmpfs needs root")
    shutil.copy(made, disk / "mlflow.db")

    def sweep_with(uri: str) -> subprocess.CompletedProcess:
        args = [*tiny_args(tmp_path, tiny_dir), f"tracking.uri={uri}", "search.n_trials=12"]
        return subprocess.run([sys.executable, "-m", "steerlab", *args], cwd=work,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    try:
        full = sweep_with(f"sqlite:///{disk}/mlflow.db")
        shutil.copy(disk / "mlflow.db", tmp_path / "mlflow.db")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    errors = [line for line in full.stderr.splitlines() if line.startswith("steerlab: error:")]
    assert full.returncode == 2 and len(errors) == 1, (full.stdout + full.stderr)[-3000:]
    assert "not in MLflow yet" in errors[0] and "Traceback" not in full.stderr, errors[0]
    study = _study(tmp_path)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 12
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert len([r for r in _child_runs(uri) if r.info.status == "FINISHED"]) < 12
    again = sweep_with(uri)
    assert again.returncode == 0, again.stderr[-3000:]
    _mirrors(_study(tmp_path), uri)
