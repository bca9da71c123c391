"""`python -m steerlab.landscape`: every configuration of a grid measured per question and kept
as a table with its provenance; an interrupted run resumes where it stopped."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

from conftest import TINY_SWEEP, WORK


def landscape(out, tiny_dir, root) -> subprocess.CompletedProcess:
    overrides = [a for a in TINY_SWEEP if not a.startswith("search.")]
    overrides += [f"model.extraction={tiny_dir}", f"model.steering={tiny_dir}",
                  f"paths.root={root}", "confirm.n_questions=2", "search.coherence_min=0",
                  "search.coef_range=[0.05,0.8]"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "steerlab.landscape", "--coefs", "3", "--dense", "1",
         "--batch", "2", "--out", str(out), *overrides],
        cwd=WORK, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def read(path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def test_a_landscape_keeps_every_configuration_per_question_and_resumes(tmp_path, tiny_dir):
    out = tmp_path / "land.json.gz"
    done = landscape(out, tiny_dir, tmp_path / "root")
    assert done.returncode == 0, done.stderr[-3000:]
    table = read(out)
    prov = table["provenance"]
    assert (
        prov["model"] == "tiny" and prov["trait"] == "evil" and prov["judge"].startswith("offline")
    )
    assert prov["sizes"]["search_questions"] == 2 and prov["sizes"]["held_out_questions"] == 2
    assert table["layers"] == [0, 1, 2] and len(table["coefs"]) == 3
    grid = {(c["layer"], c["coef"]) for c in table["configs"]}
    assert {(la, c) for la in table["layers"] for c in table["coefs"]} <= grid
    assert len(grid) > 9  # the denser slice around the best
    for c in table["configs"]:
        assert len(c["search"]["trait"]) == 2 and len(c["held_out"]["coherence"]) == 2
    # interrupted after two configurations: the next run measures only the rest
    partial = out.with_name(out.name + ".partial.jsonl")
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:2]) + "\n")
    out.unlink()
    again = landscape(out, tiny_dir, tmp_path / "root")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "landscape: 4 configurations measured" in again.stdout  # resumed from 2
    resumed = read(out)
    key = lambda c: (c["layer"], c["coef"])  # noqa: E731
    assert sorted(resumed["configs"], key=key) == sorted(table["configs"], key=key)
