"""The import rules: the import-linter contracts in pyproject.toml (layers, forbidden imports, no
cycles) hold on src/, a broken contract does fail `lint-imports`, and no module is over 500 lines
(long modules hide tangled imports). And `python -m steerlab.imports` refuses a pickle that
would run code in one line, without running it or advising how to.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from conftest import RunsCommand

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 500


def lint_imports(*args: str, cwd: Path = ROOT, pythonpath: Path | None = None):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_src_keeps_the_import_contracts():
    run = lint_imports()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "high.py").write_text("from toypkg import low\n")
    (pkg / "low.py").write_text("def f():\n    from toypkg import high\n\n    return high\n")
    config = tmp_path / "contracts.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_packages = ["toypkg"]

            [[tool.importlinter.contracts]]
            name = "high above low"
            type = "layers"
            containers = ["toypkg"]
            layers = ["high", "low"]
            """
        )
    )
    run = lint_imports(str(config), cwd=tmp_path, pythonpath=tmp_path)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "high above low BROKEN" in run.stdout
    assert "toypkg.low -> toypkg.high (l.2)" in run.stdout


def test_no_module_is_over_500_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / "src").rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_a_pickle_holding_code_is_refused_in_one_line_without_running_it(tmp_path: Path) -> None:
    """torch's own refusal is eight lines that suggest turning the check off (which runs the
    attack); the user gets one line naming the file, and the command never runs."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save(RunsCommand(f"touch {shlex.quote(str(marker))}"), evil)
    done = subprocess.run(
        [sys.executable, "-m", "steerlab.imports", str(evil)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"steerlab.imports: error: {evil}: holds pickled code"), out
    assert f"{os.system.__module__}.system" in lines[0] and "never runs pickled code" in out, out
    assert "weights_only" not in out and "Traceback" not in out, out
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()
