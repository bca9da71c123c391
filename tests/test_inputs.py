"""Bad values never become results: each input a user can get wrong fails before any model
loads, in one line naming the value and what would be valid (exit 2), and nothing is logged as
a trial. The rows are the ones a battery of wrong inputs found running to the end or crashing."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import torch

from conftest import run_steerlab, tiny_args


def steerlab(root: Path, model: Path, *args: str, sweep: bool = False, env=None):
    full = tiny_args(root, model, *args)
    if not sweep:
        full.remove("-m")
    if "judge=openai" in args:  # the offline judge's calibration option is not the openai one's
        full = [a for a in full if not a.startswith("judge.options.")]
    proc = run_steerlab(*full, timeout=300, env=env)
    return proc, proc.stdout + proc.stderr


def assert_refused(proc, out: str, *needles: str) -> None:
    errors = [line for line in out.splitlines() if line.startswith("steerlab: error:")]
    assert proc.returncode == 2 and len(errors) == 1, out[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Traceback" not in out and "Loading weights" not in out, out[-3000:]


def no_trials(root: Path) -> bool:
    db = root / "mlruns" / "mlflow.db"
    if not db.is_file():
        return True
    with sqlite3.connect(db) as c:
        try:
            return c.execute("select count(*) from runs").fetchone()[0] == 0
        except sqlite3.DatabaseError:
            return True


@pytest.mark.parametrize(
    ("args", "sweep", "needles"),
    [
        (["steering.coef=nan"], False, ["steering.coef=nan", "finite"]),
        (["steering.coef=inf"], False, ["steering.coef=inf", "finite"]),
        (["steering.layers=[1,2]", "steering.weights=[0.1,nan]"], False, ["steering.weights"]),
        (['position="response[5:2]"'], False, ["response[5:2]", "empty"]),
        (["search.n_trials=-1"], True, ["search.n_trials=-1", ">= 0"]),
        (["search.batch_size=0"], True, ["search.batch_size=0", ">= 1"]),
        (["search.coef_range=[0.1,inf]"], True, ["search.coef_range"]),
        (["model.steering=/nonexistent/path"], False, ["model.steering=/nonexistent/path"]),
        (["steering.cof=0.2"], False, ["steering.cof", "coef", "layer"]),
        (["+steering.cof=0.2"], False, ["steering.cof", "coef"]),
        (["judge.modle=x"], False, ["judge.modle"]),
        (["confirm.n_questions=20"], True, ["confirm.n_questions=20", "steering.jsonl has 20"]),
        (["steering.n_questions=15"], True, ["steering.n_questions=15", "1 to 14"]),
        (["confirm.rollouts=2"], True, ["confirm.rollouts=2", "confirm.temperature > 0"]),
        (["confirm.temperature=-1"], True, ["confirm.temperature=-1.0", ">= 0"]),
        (["trait=nosuchtrait"], True, ["trait=nosuchtrait", "evil, hallucination, sycophancy"]),
        (["model=nope"], False, ["model=nope", "smollm2"]),
    ],
)
def test_bad_values_fail_in_one_line_before_any_model_loads(
    tmp_path, tiny_dir, args, sweep, needles
):
    proc, out = steerlab(tmp_path, tiny_dir, *args, sweep=sweep)
    assert_refused(proc, out, *needles)
    assert no_trials(tmp_path)


def test_a_vector_of_another_hidden_size_is_refused(tmp_path, tiny_dir):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"  # a file without hidden_size metadata
    save_file({"vectors": torch.ones(3, 32)}, str(path), metadata={"steerlab": "{}"})
    proc, out = steerlab(tmp_path, tiny_dir, f"steering.vector={path}")
    assert_refused(proc, out, str(path), "hidden size 32", "64")


def test_a_vector_with_non_finite_values_is_refused(tmp_path, tiny_dir):
    import json

    from safetensors.torch import save_file

    from steerlab.vectors import TraitVectors, VectorFileError

    v = torch.ones(3, 64)
    v[1, 5] = float("nan")
    meta = {"component": "residual", "norms": [1.0, 1.0, 1.0]}
    with pytest.raises(VectorFileError, match="not finite at layer"):  # never written by us
        TraitVectors(v, meta).save(tmp_path / "refused.safetensors")
    path = tmp_path / "nan.safetensors"  # made by another tool
    save_file({"vectors": v}, str(path), metadata={"steerlab": json.dumps(meta)})
    proc, out = steerlab(tmp_path, tiny_dir, f"steering.vector={path}")
    assert_refused(proc, out, str(path), "not finite", "layer(s) 1")


def test_a_broken_tracking_store_is_refused_before_work(tmp_path, tiny_dir):
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)  # a truncated database
    proc, out = steerlab(tmp_path, tiny_dir, "search.n_trials=2", sweep=True)
    assert_refused(proc, out, str(db))
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").rglob("*/0"))


@pytest.mark.parametrize("store", ["folder", "locked", "closed port"])
def test_an_unusable_tracking_store_is_refused_within_seconds(tmp_path, tiny_dir, store):
    """A folder where the sqlite file should be, a file another process holds locked, a server
    port nobody listens on: one line naming the store within 10 s of the start (MLflow's own
    retries took 107 s and 36 s with five retry warnings)."""
    import socket
    import sqlite3
    import time

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True)
    extra, lock = ["search.n_trials=2"], None
    if store == "folder":
        db.mkdir()
    elif store == "locked":
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("create table t (x)")
        lock.execute("begin exclusive")
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            extra.append(f"tracking.uri=http://127.0.0.1:{s.getsockname()[1]}")
    t0 = time.monotonic()
    try:
        proc, out = steerlab(tmp_path, tiny_dir, *extra, sweep=True)
    finally:
        if lock:
            lock.close()
    took = time.monotonic() - t0
    assert_refused(proc, out, "tracking store")
    assert "Retrying" not in out, out[-3000:]
    # the command's own start (Python, Hydra, imports) is most of it
    assert took < 10 + _startup(tmp_path, tiny_dir), took


def _startup(tmp_path, tiny_dir) -> float:
    """Seconds a refused command takes on this machine whatever its store (a bad layer)."""
    import time

    t0 = time.monotonic()
    steerlab(tmp_path / "startup", tiny_dir, "search.layer_range=[0,99]", sweep=True)
    return time.monotonic() - t0


def test_a_garbled_study_file_is_refused_before_the_model_loads(tmp_path, tiny_dir):
    sweep_dir = tmp_path / "multirun" / "tiny" / "evil" / "natural-mean_diff-5" / "residual-tpe"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "optuna.db").write_bytes(os.urandom(4096))
    proc, out = steerlab(tmp_path, tiny_dir, "search.n_trials=2", sweep=True)
    assert_refused(proc, out, "optuna.db")


def test_openai_judge_without_its_key_is_refused_before_elicitation(tmp_path, tiny_dir):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc, out = steerlab(tmp_path, tiny_dir, "judge=openai", env=env)
    assert_refused(proc, out, "OPENAI_API_KEY", "judge.api_key_env")
