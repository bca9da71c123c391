"""MLflow tracking: runs land in `<root>/mlruns/mlflow.db`, and `make ui` serves them."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from steerlab import tracking

REPO = Path(__file__).resolve().parents[1]


def test_runs_are_stored_under_root_with_nested_params(tmp_path):
    with tracking.run(tmp_path, "m/evil", "parent", {"a": {"b": 1}}) as mlflow:
        parent = mlflow.active_run().info.run_id
        mlflow.log_metric("trait", 12.5)
    with tracking.run(tmp_path, "m/evil", "child", {"x": 2}, parent_run_id=parent):
        pass
    client = tracking.client(tmp_path)
    exp = client.get_experiment_by_name("m/evil")
    assert exp.artifact_location.startswith((tmp_path / "mlruns").resolve().as_uri())
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.run_name for r in runs} == {"parent", "child"}
    child = next(r for r in runs if r.info.run_name == "child")
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert next(r for r in runs if r.info.run_name == "parent").data.params == {"a.b": "1"}
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_ui_serves_the_store(tmp_path):
    with tracking.run(tmp_path, "smollm2/evil", "trial-0", {"steering": {"layer": 3}}):
        pass
    port = _free_port()
    proc = subprocess.Popen(
        ["make", "-s", "ui", f"PORT={port}", f"ROOT={tmp_path}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ | {"MAKEFLAGS": ""},
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        deadline, body = time.time() + 120, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(1)
        assert body is not None, "MLflow UI did not come up within 120 s"
        assert "smollm2/evil" in {e["name"] for e in body["experiments"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
