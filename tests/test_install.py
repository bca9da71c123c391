"""`pip install .` (not editable) works from any folder: the wheel carries the configs, the
shipped traits and the Hydra sweeper plugin, so `python -m steerlab`, a search and the README's
API example run in a fresh virtualenv from a folder outside the repository.

The wheel is built from a copy of this working tree; the fresh venv gets only the wheel
(`--no-deps`), and the dependencies come from this interpreter's site-packages on PYTHONPATH
(whose `.pth` files, the editable install among them, are not processed from there, so the
source tree can not leak in: the test checks where steerlab is imported from)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ENSEMBLE, REPO, SWEEP, tiny_model, user_args
from test_readme import check_output, run_example

pytestmark = pytest.mark.slow
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "cache", "multirun",
    "mlruns", "outputs", "ensembles", ".pytest_cache", ".ruff_cache", "docs", "bench",
)  # fmt: skip


def sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src-copy"
    shutil.copytree(REPO, src, symlinks=True, ignore=IGNORE)
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", tmp / "dist", src, cwd=tmp)  # fmt: skip
    [wheel] = (tmp / "dist").glob("steerlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for want in (
        "steerlab/conf/config.yaml",
        "steerlab/conf/trait/evil.yaml",
        "steerlab/conf/search/cmaes_ensemble.yaml",
        "steerlab/conf/hydra/help/steerlab.yaml",
        "steerlab/traits/evil/natural.jsonl",
        "steerlab/traits/evil/calibration.jsonl",
        "steerlab/traits/FORMAT.md",
        "hydra_plugins/steerlab_sweeper/steerlab_sweeper.py",
    ):
        assert want in names, want
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", venv, cwd=tmp)
    python = venv / "bin" / "python"
    sh(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]  # the dependencies, nothing else
    return python, env


def test_python_m_steerlab_runs_from_outside_the_repo(installed, tmp_path):
    python, env = installed
    where = sh(python, "-c", "import steerlab; print(steerlab.__file__)", cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(python.parents[1])  # the venv, not the source
    job = sh(python, "-m", "steerlab", "--cfg", "job", cwd=tmp_path, env=env)
    assert "dir: traits/evil" in job and "sampler: tpe" in job
    # a trait of the user's own next to the shipped ones
    shutil.copytree(REPO / "traits" / "evil", tmp_path / "traits" / "mine")
    (tmp_path / "myconf" / "trait").mkdir(parents=True)
    (tmp_path / "myconf" / "trait" / "mine.yaml").write_text("name: mine\ndir: traits/mine\n")
    job = sh(python, "-m", "steerlab", "--config-dir", "myconf", "trait=mine", "--cfg", "job",
             cwd=tmp_path, env=env)  # fmt: skip
    assert "name: mine" in job
    code = (
        "from steerlab.data import load_trait\n"
        "print(load_trait('traits/mine').root)\nprint(load_trait('traits/evil').root)"
    )
    mine, shipped = sh(python, "-c", code, cwd=tmp_path, env=env).split()
    assert Path(mine) == Path("traits/mine") and Path(shipped).is_relative_to(python.parents[1])


def test_a_search_and_the_readme_api_example_run_installed(installed, tmp_path):
    python, env = installed
    model = tmp_path / "tiny16"
    m = tiny_model("llama", layers=16)
    m.model.save_pretrained(model)
    m.tokenizer.save_pretrained(model)
    shipped = "judge.options.calibration_dirs=[traits/evil]"  # the package's own trait folder
    for extra in (
        ["search.n_trials=4"],
        ["search=cmaes_ensemble", "steering=attn_ensemble", "search.n_trials=4"],
    ):
        args = [a if "calibration_dirs" not in a else shipped for a in user_args(tmp_path, model)]
        sh(python, "-m", "steerlab", *args, *extra, cwd=tmp_path, env=env)
    assert (tmp_path / SWEEP / "trials.json").is_file()
    assert (tmp_path / "ensembles" / f"{ENSEMBLE}.json").is_file()
    done = run_example(str(python), tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    check_output(done.stdout)
