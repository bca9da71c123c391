"""The README's API example runs as written, in a folder holding what it names: the sweep folder
and saved ensemble that `conftest.user_root` makes with real sweeps of a tiny stand-in model
(named smollm2, so the paths are the README's; the example loads the model the sweep steered)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import steerlab
from conftest import REPO

MARK = "<!-- readme-example: api -->"


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(re.escape(MARK) + r"\s*```python\n(.*?)```", text, re.S)
    assert block, f"README.md has no python block after {MARK}"
    return block.group(1)


def run_example(python: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-c", readme_example()],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_output(out: str) -> None:
    lines = out.splitlines()
    for label in ("unsteered:", "steered:", "weaker:", "half:", "opposite:", "ensemble:"):
        assert any(x.startswith(label) for x in lines), (label, out)
    assert re.search(r"^layer \d+ coef [\d.]+ \(relative\) residual evil natural", out, re.M)
    assert re.search(
        r"^L11=[\d.]+, L13=[\d.]+, L15=[\d.]+ \(relative\) attn_contribution", out, re.M
    )


def test_readme_api_example_runs_as_written(user_root):
    env = {**os.environ, "PYTHONPATH": str(Path(steerlab.__file__).parents[1])}
    done = run_example(sys.executable, user_root, env)
    assert done.returncode == 0, done.stderr[-3000:]
    check_output(done.stdout)
