"""A whole `-m` sweep in seconds: a tiny random Llama saved to disk stands in for the model, the
offline judge calibrates on one trait folder, and the real sweeper, Optuna sqlite study and
MLflow store run end to end (extract, steer in batches, judge, record, resume)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import run_steerlab, t_interval, tiny_args


def sweep(root: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_steerlab(*tiny_args(root, model, *extra))


def held_delta(held: dict) -> float:
    """Rollouts of a question averaged first, then questions."""
    base: dict[str, list[float]] = {}
    steered: dict[str, list[float]] = {}
    for rows, out in ((held["baseline"], base), (held["rows"], steered)):
        for r in rows:
            out.setdefault(r["question"], []).append(r["trait"])
    return sum(sum(v) / len(v) - sum(base[q]) / len(base[q]) for q, v in steered.items()) / len(
        steered
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
        answers = [json.loads(line) for line in (job / "responses.jsonl").read_text().splitlines()]
        assert len(answers) == 2
        # 95% CIs over the questions, beside the means (Student t, written out in conftest)
        for name in ("trait", "coherence"):
            lo, hi = t_interval([a[name] for a in answers])
            assert (r[f"{name}_lo"], r[f"{name}_hi"]) == pytest.approx((lo, hi))
        assert r["delta_lo"] <= r["delta"] <= r["delta_hi"]
    # the best valid trial re-measured on held-out questions the search never asked
    held = json.loads((sweep_dir / "confirmation.json").read_text())
    best = max((r for r in rows if r["valid"]), key=lambda r: (r["delta"], r["coherence"]))
    assert held["trial"] == best["trial"] and len(held["rows"]) == 6
    asked = {a["question"] for a in answers}
    assert asked and not asked & {q["question"] for q in held["rows"]}
    assert f"confirmed on 6 held-out question(s): delta {held_delta(held):+.1f}" in first.stdout
    assert "delta 95% CI" in first.stdout

    (sweep_dir / "confirmation.json").write_text('{"trial": ')  # as a killed worker left it
    # resume: only 2 more trials; the best is confirmed again, now with 2 sampled rollouts
    again = sweep(
        tmp_path, tiny_dir, "search.n_trials=5", "confirm.rollouts=2", "confirm.temperature=1.0"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 trials done, 0 failed" in again.stdout
    rows = json.loads((sweep_dir / "trials.json").read_text())
    assert sorted(r["trial"] for r in rows) == [0, 1, 2, 3, 4]
    best = max((r for r in rows if r["valid"]), key=lambda r: (r["delta"], r["coherence"]))
    held = json.loads((sweep_dir / "confirmation.json").read_text())  # confirmed again, whole
    assert held["trial"] == best["trial"] and len(held["rows"]) == 12
    by_question: dict[str, list[str]] = {}
    for r in held["rows"]:
        by_question.setdefault(r["question"], []).append(r["answer"])
    assert len(by_question) == 6 and any(len(set(a)) == 2 for a in by_question.values())
    assert f"confirmed on 6 held-out question(s): delta {held_delta(held):+.1f}" in (again.stdout)
