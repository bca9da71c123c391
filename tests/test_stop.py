"""A worker told to stop (steerlab.stop): where the signal lands, and a second one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from steerlab.stop import Stopped, held, on_signals


def test_a_signal_raises_where_the_worker_is_except_inside_held():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or ignored when started so
    log = []
    with pytest.raises(Stopped) as stop, on_signals():
        with held():
            os.kill(os.getpid(), signal.SIGTERM)
            log.append("asked and tagged")  # the stop waited for the block
        log.append("never reached")
    assert log == ["asked and tagged"]
    assert stop.value.code == 143 and str(stop.value) == "stopped by SIGTERM"
    with pytest.raises(Stopped) as stop, on_signals():
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.code == 130
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_second_signal_exits_at_once():
    code = textwrap.dedent("""
        import os, signal, time
        from steerlab.stop import Stopped, on_signals
        with on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except Stopped:
                os.kill(os.getpid(), signal.SIGINT)  # while cleaning up
                time.sleep(30)
        """)  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], timeout=20)
    assert r.returncode == 130


def test_a_stop_inside_a_database_call_is_still_a_stop():
    """Optuna re-raises what interrupts a commit as StorageInternalError (the driver may wrap
    it first): the stop is found in the chain and handled as a stop, not a database failure."""
    from optuna.exceptions import StorageInternalError

    from steerlab.stop import stopped_in

    def commit():
        try:
            try:
                raise Stopped(signal.SIGTERM)
            except BaseException as e:
                raise RuntimeError("server closed the connection") from e
        except RuntimeError as e:
            raise StorageInternalError("An exception is raised during the commit.") from e

    with pytest.raises(StorageInternalError) as wrapped:
        commit()
    assert stopped_in(wrapped.value).code == 143
    assert stopped_in(StorageInternalError("a real database failure")) is None


def test_a_stop_while_a_child_run_is_written_leaves_it_killed_and_tagged(tmp_path):
    """A real SIGTERM lands while a trial's MLflow child run is open (its folder's artifacts
    being copied): the run ends KILLED with `steerlab.interrupted`, as docs/workers.md says."""
    import sqlite3
    import time

    from steerlab import tracking

    folder = tmp_path / "trial"
    folder.mkdir()
    for i in range(6000):  # copying these keeps the run open for seconds
        (folder / f"f{i}.txt").write_text("x" * 64)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from steerlab.runlog import log_child
        from steerlab.stop import on_signals
        with on_signals():
            log_child(Path({str(tmp_path)!r}), "stops", "trial-0", None, {{}}, {{}},
                      {{"trait": 1.0}}, folder=(Path({str(folder)!r}), "trial"))
    """)
    c = tracking.client(tmp_path)  # the store exists before the worker starts
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as db:
            if db.execute("select 1 from runs where status = 'RUNNING'").fetchone():
                proc.send_signal(signal.SIGTERM)
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    [run] = c.search_runs([c.get_experiment_by_name("stops").experiment_id])
    assert run.info.status == "KILLED", (run.info.status, proc.stderr.read()[-2000:])
    assert run.data.tags.get("steerlab.interrupted") == "true"


@pytest.mark.parametrize("statement", ["INSERT INTO runs", "INSERT INTO metrics", "UPDATE runs"])
def test_a_stop_inside_a_database_write_waits_for_it_and_the_run_ends_killed(tmp_path, statement):
    """A SIGTERM that lands inside one of the run's database writes (sent by the worker to itself
    as the statement runs) waits until the write is committed: a write cut short would keep the
    SQLite lock, and the run could not be closed ("database is locked", left RUNNING)."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from steerlab.runlog import log_child
        from steerlab.stop import Stopped, on_signals

        def land(conn, cursor, sql, params, context, many):
            if sql.startswith({statement!r}) and not getattr(land, "done", False):
                land.done = True
                os.kill(os.getpid(), signal.SIGTERM)

        event.listen(Engine, "before_cursor_execute", land)
        try:
            with on_signals():
                log_child(Path({str(tmp_path)!r}), "stops", "trial-0", None, {{}}, {{"a": 1}},
                          {{"trait": 1.0}})
        except Stopped:
            raise SystemExit(143)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    from steerlab import tracking

    c = tracking.client(tmp_path)
    [run] = c.search_runs([c.get_experiment_by_name("stops").experiment_id])
    assert "database is locked" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 143, proc.stderr[-2000:]
    if statement == "UPDATE runs":  # the stop came as the run was closed FINISHED: it stays so
        assert run.info.status == "FINISHED"
    else:
        assert run.info.status == "KILLED", proc.stderr[-2000:]
        assert run.data.tags.get("steerlab.interrupted") == "true"
