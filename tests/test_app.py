"""The Hydra app end to end on the embedded model: single runs, `-m` sweeps with a real Optuna
sqlite study and MLflow store, resuming, CMA-ES ensembles, and early one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SMALL, WORK, run_steerlab


@pytest.fixture(scope="module")
def cache():
    """The content-addressed cache the offline-judge tests use: the judge is fitted once."""
    return WORK / "offline-judge"  # fitted once per session, shared by the modules


def steerlab(root: Path, cache: Path, *args: str, check: bool = True):
    cmd = [*args, f"paths.root={root}", f"paths.cache={cache}"]
    proc = run_steerlab(*cmd, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def runs(root: Path, kind: str):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps, f"tags.`steerlab.kind` = '{kind}'", max_results=500)


@pytest.mark.slow
def test_sweep_logs_trials_and_resumes(tmp_path, cache):
    out = steerlab(tmp_path, cache, "-m", *SMALL, "search.n_trials=4", "search.batch_size=2")
    assert "4 trials done" in out.stdout
    client, trials = runs(tmp_path, "trial")
    _, sweeps = runs(tmp_path, "sweep")
    assert len(trials) == 4 and len(sweeps) == 1
    parent = sweeps[0]
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.json", "trials.json", "pareto.png", "layer_coef_map.png"} <= arts
    sweep_dir = Path(parent.data.tags["steerlab.sweep_dir"])
    rows = json.loads((sweep_dir / "trials.json").read_text())
    assert sorted(r["trial"] for r in rows) == [0, 1, 2, 3]
    assert all((sweep_dir / str(r["trial"]) / "responses.jsonl").is_file() for r in rows)
    feasible = [r for r in rows if r["coherence"] >= 50]
    if feasible:  # the best valid trial obeys the constraint and beats every other valid one
        best = parent.data.metrics["best_trait"]
        assert parent.data.metrics["best_coherence"] >= 50
        assert best == pytest.approx(max(r["trait"] for r in feasible))

    written = {r["trial"]: (sweep_dir / str(r["trial"]) / "metrics.json").stat().st_mtime_ns
               for r in rows}  # fmt: skip
    again = steerlab(tmp_path, cache, "-m", *SMALL, "search.n_trials=4", "search.batch_size=2")
    assert "4 trials done" in again.stdout
    for n, mtime in written.items():  # nothing re-evaluated or re-recorded
        assert (sweep_dir / str(n) / "metrics.json").stat().st_mtime_ns == mtime
    assert len(runs(tmp_path, "trial")[1]) == 4 and len(runs(tmp_path, "sweep")[1]) == 1

    steerlab(tmp_path, cache, "-m", *SMALL, "search.n_trials=6", "search.batch_size=2")
    assert len(runs(tmp_path, "trial")[1]) == 6
    assert len(json.loads((sweep_dir / "trials.json").read_text())) == 6

    # resuming under other evaluation settings would mix incomparable trials: refused, nothing lost
    other = steerlab(tmp_path, cache, "-m", *SMALL, "steering.max_new_tokens=12",
                     "search.n_trials=8", check=False)  # fmt: skip
    assert other.returncode != 0
    assert "steering.max_new_tokens: 16 -> 12" in other.stdout + other.stderr
    assert len(runs(tmp_path, "trial")[1]) == 6


@pytest.mark.slow
def test_single_run_prints_summary(tmp_path, cache):
    out = steerlab(tmp_path, cache, *SMALL, "steering.layer=12", "steering.coef=0.2")
    assert "delta" in out.stdout and "valid=" in out.stdout
    _, trials = runs(tmp_path, "trial")
    assert len(trials) == 1 and {"trait", "coherence", "delta"} <= set(trials[0].data.metrics)


@pytest.mark.slow
def test_cmaes_ensemble_saves_a_reusable_ensemble(tmp_path, cache):
    args = [
        *SMALL[:-1],
        "search.coherence_min=0",
        "steering=attn_ensemble",
        "steering.layers=[10,14]",
    ]
    out = steerlab(
        tmp_path,
        cache,
        "-m",
        *args,
        "search=cmaes_ensemble",
        "search.n_trials=4",
        "search.batch_size=2",
    )
    assert "4 trials done" in out.stdout
    saved = list((tmp_path / "ensembles").glob("*.json"))
    assert len(saved) == 1
    ens = json.loads(saved[0].read_text())
    assert ens["layers"] == [10, 14] and len(ens["weights"]) == 2
    reuse = steerlab(tmp_path, cache, *args, f"steering.ensemble={saved[0].stem}")
    assert "coherence" in reuse.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steering.layer=99", "outside model"),
        ("search.coef_range=[0,1]", "0 < lo <= hi"),
        ('position="resp[:3]"', "invalid position"),
        ("trait.dir=/nonexistent/trait", "file not found"),
        ("extraction.source=telepathy", "extraction.source='telepathy' is not valid"),
        ("steering.vector=/nonexistent/v.safetensors", "no such vector file"),
        ("combine.strategy=blend", "combine.strategy='blend' is not valid"),
        ("combine.strategy=best_single", "run it with -m"),
    ],
)
def test_bad_input_fails_fast_with_one_line(tmp_path, cache, override, message):
    proc = steerlab(tmp_path, cache, override, check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("steerlab: error:")]
    assert len(err) == 1 and message in err[0], proc.stderr[-2000:]
    assert not (tmp_path / "mlruns").exists()  # failed before any work


@pytest.mark.slow
def test_combinations_place_the_best_vectors_of_model_diff(tmp_path, cache):
    import torch

    from steerlab.combinations import STRATEGIES, combine, find_best
    from steerlab.vectors import load_vectors

    common = [
        "extraction.max_pairs=40",
        "extraction.vet.enabled=false",
        "steering.n_questions=2",
        "steering.max_new_tokens=16",
        "search.coherence_min=0",
        "search.n_trials=2",
        "search.batch_size=2",
        "search.layer_range=[10,14]",
    ]
    # a small model_diff of one trait and method: instruction [:] and natural [:5] [:10] [:15]
    steerlab(tmp_path, cache, "-m", "experiment=model_diff", "trait=evil",
             "extraction.method=mean_diff", *common)  # fmt: skip
    found = find_best(tmp_path, "model_diff", "smollm2-135m", "evil")
    inst, nat = found["instruction"], found["natural"]
    single = max((inst, nat), key=lambda b: b.trait)

    # no model_diff results for this trait, or other judging settings: one clear error, no study
    missing = steerlab(tmp_path, cache, "-m", "experiment=combinations", "trait=sycophancy",
                       *common, check=False)  # fmt: skip
    assert missing.returncode != 0
    assert "run `python -m steerlab -m experiment=model_diff trait=sycophancy" in missing.stderr
    other = steerlab(tmp_path, cache, "-m", "experiment=combinations", "trait=evil", *common,
                     "steering.n_questions=3", check=False)  # fmt: skip
    assert other.returncode != 0 and "steering.n_questions=3 here but 2" in other.stderr

    steerlab(tmp_path, cache, "-m", "experiment=combinations", "trait=evil", *common)
    client, sweeps = runs(tmp_path, "sweep")
    by = {s.data.tags.get("steerlab.strategy"): s for s in sweeps}
    assert set(STRATEGIES) <= set(by)

    def trials(strategy):
        rows = json.loads((Path(by[strategy].data.tags["steerlab.sweep_dir"]) / "trials.json")
                          .read_text())  # fmt: skip
        return sorted(rows, key=lambda r: r["trial"])

    # the combined vector is the renormalised sum of the two best files' unit rows
    combined = load_vectors(Path(by["combined@natural_layer"].data.params["steering.vector"]))
    want = combine(load_vectors(Path(inst.vector)), load_vectors(Path(nat.vector)))
    assert torch.allclose(combined.vectors, want.vectors, atol=1e-6)
    assert {r["layer"] for r in trials("combined@natural_layer")} == {nat.layer}
    assert {r["layer"] for r in trials("combined@instruction_layer")} == {inst.layer}
    # half strength first: each source at half its best coef, at its best layer
    half = json.loads(trials("ensemble_half")[0]["weights"])
    assert sorted(half.values()) == pytest.approx(sorted([inst.coef / 2, nat.coef / 2]), abs=1e-4)
    # best_single's first trial is model_diff's best configuration, and scores the same
    first = trials("best_single")[0]
    assert (first["layer"], first["coef"]) == (single.layer, pytest.approx(single.coef, rel=1e-5))
    assert first["trait"] == pytest.approx(single.trait, abs=1e-6)

    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "steerlab.report", "--root", str(tmp_path), "--out",
                    str(out), "--no-log"], cwd=REPO, check=True, timeout=600)  # fmt: skip
    text = (out / "report.md").read_text()
    section = text[text.index("### Combination strategies — evil") :]
    for strategy in STRATEGIES:
        assert f"| {strategy} |" in section
    assert f"`best_single` is `{single.key}`" in section
