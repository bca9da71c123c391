"""A whole `-m` sweep in seconds: a tiny random Llama saved to disk stands in for the model, the
offline judge calibrates on one trait folder, and the real sweeper, Optuna sqlite study and
MLflow store run end to end (extract, steer in batches, judge, record, resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_args


def sweep(root: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    args = tiny_args(root, model, *extra)
    return subprocess.run(
        [sys.executable, "-m", "steerlab", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_sweep_runs_records_and_resumes_on_a_tiny_model(tmp_path, tiny_dir):
    first = sweep(tmp_path, tiny_dir, "search.n_trials=3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3 trials done, 0 failed" in first.stdout
    [sweep_dir] = (tmp_path / "multirun" / "tiny" / "evil").glob("*/*")
    rows = json.loads((sweep_dir / "trials.json").read_text())
    assert [r["trial"] for r in rows] == [0, 1, 2]
    for r in rows:  # every trial has its folder with the typed config it evaluated
        job = sweep_dir / str(r["trial"])
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["trait"] == pytest.approx(r["trait"])
        assert f"layer: {r['layer']}" in (job / "config.yaml").read_text()
        assert len((job / "responses.jsonl").read_text().splitlines()) == 2

    again = sweep(tmp_path, tiny_dir, "search.n_trials=5")  # resume: only 2 more trials
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 trials done, 0 failed" in again.stdout
    rows = json.loads((sweep_dir / "trials.json").read_text())
    assert sorted(r["trial"] for r in rows) == [0, 1, 2, 3, 4]
