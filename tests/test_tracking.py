"""MLflow tracking: runs land in `<root>/mlruns/mlflow.db`, and `make ui` serves them."""

import json

import pytest

from conftest import make_ui, wait_http
from steerlab import tracking


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


@pytest.mark.slow
def test_make_ui_serves_the_store(tmp_path):
    with tracking.run(tmp_path, "smollm2/evil", "trial-0", {"steering": {"layer": 3}}):
        pass
    with make_ui(f"ROOT={tmp_path}", timeout=120) as base:
        body = json.loads(wait_http(f"{base}/api/2.0/mlflow/experiments/search?max_results=10",
                                    5, "MLflow UI"))  # fmt: skip
        assert "smollm2/evil" in {e["name"] for e in body["experiments"]}
