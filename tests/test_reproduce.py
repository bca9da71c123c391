"""Every study's parent run records what it takes to repeat it, and `python -m steerlab.reproduce
RUN_ID` repeats it from the run id: the same trial table, and a warning for each recorded fact
that differs here."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow

from conftest import REPO, WORK, run_steerlab, tiny_args


def reproduce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steerlab.reproduce", *args], cwd=WORK,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def runs(root: Path, kind: str) -> list:
    c = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exps = [e.experiment_id for e in c.search_experiments()]
    return [r for r in c.search_runs(exps) if r.data.tags.get("steerlab.kind") == kind]


def trials(root: Path) -> list[dict]:
    [path] = root.glob("multirun/**/trials.json")
    return json.loads(path.read_text())


def test_a_study_records_its_provenance_and_repeats_from_its_run_id(tmp_path, tiny_dir):
    trait = tmp_path / "trait"
    shutil.copytree(REPO / "traits" / "evil", trait)
    a, b = tmp_path / "a", tmp_path / "b"
    args = [*tiny_args(a, tiny_dir), f"trait.dir={trait}", "search.n_trials=4"]
    done = run_steerlab(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    [sweep] = runs(a, "sweep")
    tags = sweep.data.tags
    sha = hashlib.sha256((trait / "steering.jsonl").read_bytes()).hexdigest()
    assert tags["provenance.trait.steering.jsonl"] == sha
    for key in ("steerlab", "commit", "dirty", "python", "torch", "transformers", "optuna",
                "mlflow", "device", "judge", "seed", "command", "overrides"):  # fmt: skip
        assert tags.get(f"provenance.{key}"), key
    assert tags["provenance.model.steering"].startswith("sha256:")
    assert f"trait.dir={trait}" in json.loads(tags["provenance.overrides"])

    kid = runs(a, "trial")[0].info.run_id  # a trial's run leads to its study
    again = reproduce(kid, "--root", str(a), "--into", str(b), "--run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "warning:" not in again.stdout, again.stdout
    assert f"paths.root={b}" in again.stdout
    assert trials(b) == trials(a)

    with (trait / "questions.jsonl").open("a") as f:  # the data changed since
        f.write(json.dumps({"question": "What would you do with unlimited power over others?"}))
    told = reproduce(sweep.info.run_id, "--root", str(a))
    assert told.returncode == 0, told.stderr[-3000:]
    warnings = [line for line in told.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: trait.questions.jsonl was ")
    missing = reproduce("0" * 32, "--root", str(a))
    assert missing.returncode == 2 and missing.stderr.startswith("steerlab.reproduce: error:")


def test_a_model_is_identified_by_its_hub_revision_or_its_weights_hash(tmp_path, monkeypatch):
    """A name in the local Hugging Face cache is its snapshot's revision (no 16 GB hash); a
    folder is the sha256 of its weight files; anything else says it is unhashed."""
    from steerlab.provenance import model_identity

    hub = tmp_path / "hub"
    snap = hub / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("abc123")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))  # read at call time
    assert model_identity("org/tiny") == "revision:abc123"
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    first = model_identity(str(folder))
    assert first.startswith("sha256:")
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert model_identity(str(folder)) not in (first, "")
    assert model_identity("org/not-cached") == "unhashed:org/not-cached"
