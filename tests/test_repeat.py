"""Same command, same results: the three experiments (`model_diff`, then `combinations` on its
best vectors, then `ensembles`) run twice from empty roots give the same studies trial by trial,
and again on warm caches (a second root that reuses the first one's `cache/`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_steerlab, tiny_model

pytestmark = pytest.mark.slow

SMALL = [  # one trait and method, few pairs and answers: every experiment's studies in seconds
    "trait=evil",
    "extraction.method=mean_diff",
    "extraction.max_pairs=8",
    "extraction.max_new_tokens=4",
    "extraction.vet.enabled=false",
    "steering.n_questions=3",
    "steering.max_new_tokens=6",
    "confirm.n_questions=2",
    "search.coherence_min=0",
    "judge.options.calibration_dirs=[traits/evil]",
]
EXPERIMENTS = (
    ["experiment=model_diff", "search.n_trials=4", "search.batch_size=2"],
    ["experiment=combinations", "search.n_trials=4", "search.batch_size=2"],
    ["experiment=ensembles"],
)


@pytest.fixture(scope="module")
def model16(tmp_path_factory) -> Path:
    """A random 16-layer Llama on disk: the ensembles' layers 11-15 exist."""
    out = tmp_path_factory.mktemp("tiny16")
    m = tiny_model("llama", layers=16)
    m.model.save_pretrained(out)
    m.tokenizer.save_pretrained(out)
    return out


def experiments(root: Path, model: Path, *extra: str) -> None:
    for exp in EXPERIMENTS:
        args = ["-m", *exp, *SMALL, "model.name=tiny16", f"model.extraction={model}",
                f"model.steering={model}", f"paths.root={root}", *extra]  # fmt: skip
        done = run_steerlab(*args, timeout=900)
        assert done.returncode == 0, (exp, done.stderr[-3000:])


def studies(root: Path) -> dict[str, list[dict]]:
    """Every study's trial table (`trials.json`), by its folder under the root."""
    found = {
        str(p.parent.relative_to(root)): json.loads(p.read_text())
        for p in root.glob("multirun/**/trials.json")
    }
    assert len(found) == 4 + 5 + 2, sorted(found)  # model_diff's arms, strategies, ensembles
    return found


def test_the_same_commands_from_empty_roots_give_the_same_studies(tmp_path, model16):
    a, b = tmp_path / "a", tmp_path / "b"
    experiments(a, model16)
    experiments(b, model16)
    first, second = studies(a), studies(b)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    # warm caches: responses, scores, activations and vectors reused, the studies unchanged
    warm = tmp_path / "warm"
    experiments(warm, model16, f"paths.cache={a / 'cache'}")
    third = studies(warm)
    for name in first:
        assert first[name] == third[name], name


def test_a_configuration_scores_the_same_whatever_shares_its_batch(tmp_path, model16):
    """bench/batch_invariance.py on the 16-layer random model: 4 configurations alone, together
    and mixed into 12 give the same greedy answers, and the judge the same scores."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    args = [f"model.extraction={model16}", f"model.steering={model16}", "model.name=tiny16",
            f"paths.root={tmp_path}", "extraction.max_pairs=8", "extraction.max_new_tokens=4",
            "steering.max_new_tokens=8", SMALL[-1]]  # fmt: skip
    done = subprocess.run([sys.executable, str(REPO / "bench" / "batch_invariance.py"), *args],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    differing = re.findall(r"differing from alone: (\d+)/(\d+)", done.stdout)
    assert len(differing) == 3 and all(d == "0" and n == "16" for d, n in differing), done.stdout
    gaps = re.findall(r"difference ([\d.e+-]+), per-configuration mean ([\d.e+-]+)", done.stdout)
    assert len(gaps) == 3 and all(float(a) == float(b) == 0 for a, b in gaps), done.stdout
