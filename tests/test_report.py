"""The Markdown report on a small synthetic MLflow store with known numbers, written the way the
sweeper writes it (records.Trial rows logged by tracking.log_sweep)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import steerlab
from steerlab import records, tracking
from steerlab.markdown import cell
from steerlab.records import Trial, fmt_coef, key_name
from steerlab.report.cli import main
from steerlab.report.format import fmt_delta, layer_ranges
from steerlab.search.pareto import frontier

MIN = 70


def _params(trait, source, position, method, component="residual", sampler="tpe", **steering):
    return {
        "trait": {"name": trait},
        "model": {"name": "tiny"},
        "extraction": {"source": source, "method": method},
        "resolved": {
            "position": position,
            "source": source,
            "method": method,
            "component": component,
        },
        "search": {"sampler": sampler, "coherence_min": MIN},
        "steering": {
            "component": component,
            "layer": 5,
            "coef": 0.1,
            "layers": None,
            "weights": None,
            **steering,
        },
    }


def _sweep(
    root,
    exp,
    params,
    trials,
    *,
    baseline,
    d85=None,
    tags=None,
    vector=None,
    extraction=None,
    children=True,
    responses=None,
    log_trials=True,
):
    """A sweep parent run shaped like the sweeper's, with one child run per trial.

    `trials` are dicts of layer, coef (or weights: (layer, weight) pairs), trait, coherence and
    delta; the trial table, Pareto frontier and best_* metrics are logged by `tracking.log_sweep`.
    `d85` stands in for high-coherence trials this small table leaves out: a
    best_delta_at_coherence_85 metric, only for a sweep none of whose trials reach coherence 85.
    """
    cmin = params["search"]["coherence_min"]
    recs = [
        Trial.of(
            i,
            t.get("layer"),
            t.get("coef"),
            t.get("weights", ()),
            (t["trait"], t["coherence"], t["delta"]),
            cmin,
        )
        for i, t in enumerate(trials)
    ]
    with tracking.run(
        root, exp, "sweep", params, tags={records.KIND: "sweep", **(tags or {})}
    ) as mlflow:
        pid = mlflow.active_run().info.run_id
        mlflow.log_metrics({"baseline_trait": baseline, "baseline_coherence": 90.0})
        if log_trials:
            tracking.log_sweep(mlflow, recs, frontier([(t.trait, t.coherence) for t in recs]))
        mlflow.log_metric("n_complete", len(recs))
        if d85 is not None:
            assert records.best_at(recs) is None, "log_sweep already logged this sweep's d85"
            mlflow.log_metric(records.HIGH_COHERENCE_METRIC, d85)
        if vector:
            mlflow.log_dict({"path": str(vector), "component": "residual"}, "vector.json")
        if extraction:
            mlflow.log_table(
                {k: [r[k] for r in extraction] for k in extraction[0]}, "extraction.json"
            )
    kids = {}
    for t in recs if children else []:
        p = {**params, "steering": {**params["steering"], "layer": t.layer, "coef": t.coef}}
        with tracking.run(
            root,
            exp,
            f"trial-{t.number}",
            p,
            parent_run_id=pid,
            tags={
                records.KIND: "trial",
                records.TRIAL_TAG: str(t.number),
                records.VECTOR_TAG: str(vector),
            },
        ) as mlflow:
            kids[t.number] = mlflow.active_run().info.run_id
            mlflow.log_metrics(
                {
                    "trait": t.trait,
                    "coherence": t.coherence,
                    "delta": t.delta,
                    "valid": float(t.valid),
                    "baseline_trait": baseline,
                }
            )
            if responses and t.number in responses:
                mlflow.log_table(responses[t.number], "responses.json")
    return pid, kids


def _answers(tag):
    qs = [f"Question {i}?" for i in range(4)]
    return {
        "question": qs,
        "answer": [f"{tag} answer {i} | piped" for i in range(4)],
        "trait": [50.0 + i for i in range(4)],
        "coherence": [80.0] * 4,
        "note": [""] * 4,
    }


def _extraction(tag):
    rows = [
        ("positive", 90.0, True, "TOP"),
        ("positive", 99.0, False, "NOTKEPT"),
        ("negative", 95.0, True, "NEG"),
        ("positive", 80.0, True, "SECOND"),
        ("positive", 70.0, True, "THIRD"),
        ("positive", 60.0, True, "FOURTH"),
    ]
    return [
        {
            "label": lab,
            "context": f"ctx {tag} {name}",
            "response": f"{tag}-{name}",
            "trait": t,
            "coherence": 80.0,
            "kept": k,
        }
        for lab, t, k, name in rows
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import torch

    from steerlab.vectors import TraitVectors

    root = tmp_path_factory.mktemp("store")
    inst = torch.zeros(10, 4)
    inst[:, 0] = 1.0
    nat = torch.zeros(10, 4)
    nat[:, 0], nat[:, 1] = 0.6, 0.8  # cosine 0.6 with every instruction row ...
    nat[3] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # ... but 0 at layer 3
    vi = TraitVectors(inst, {"component": "residual"}).save(root / "vec" / "inst.safetensors")
    vn = TraitVectors(nat, {"component": "residual"}).save(root / "vec" / "nat.safetensors")

    ids = {}
    md = "model_diff"
    ids["inst_md"], kids = _sweep(
        root,
        md,
        _params("evil", "instruction", "response[:]", "mean_diff"),
        [
            dict(layer=5, coef=0.2, trait=15.3, coherence=80.0, delta=12.3),
            dict(layer=6, coef=0.3, trait=40.0, coherence=50.0, delta=37.0),  # invalid: ignored
            dict(layer=4, coef=0.25, trait=12.0, coherence=75.0, delta=9.0),
            dict(layer=9, coef=0.1, trait=5.0, coherence=90.0, delta=2.0),
        ],
        baseline=2.0,
        vector=vi,
        extraction=_extraction("inst"),
        responses={0: _answers("INST")},
    )
    ids["inst_md_trial"] = kids[0]
    ids["inst_pr"], _ = _sweep(
        root,
        md,
        _params("evil", "instruction", "response[:]", "probe"),
        [dict(layer=5, coef=0.2, trait=14.0, coherence=72.0, delta=11.0)],
        baseline=4.0,
        vector=vi,
    )
    ids["nat10_md"], kids = _sweep(
        root,
        md,
        _params("evil", "natural", "response[:10]", "mean_diff"),
        [
            dict(layer=7, coef=0.5, trait=18.0, coherence=71.0, delta=15.0),
            dict(layer=7, coef=0.9, trait=60.0, coherence=20.0, delta=57.0),
        ],  # invalid: ignored
        baseline=3.0,
        d85=1.0,
        vector=vn,
        extraction=_extraction("nat"),
        responses={0: _answers("NAT")},
    )
    ids["nat10_md_trial"] = kids[0]
    ids["nat5_md"], _ = _sweep(
        root,
        md,
        _params("evil", "natural", "response[:5]", "mean_diff"),
        [dict(layer=6, coef=0.4, trait=13.0, coherence=80.0, delta=10.0)],
        baseline=3.0,
        vector=vn,
    )
    # sycophancy: instruction only, and no trials.json (trials come from the child runs)
    ids["syc"], _ = _sweep(
        root,
        md,
        _params("sycophancy", "instruction", "response[:]", "mean_diff"),
        [
            dict(layer=3, coef=1.5, trait=80.0, coherence=69.9, delta=45.0),
            dict(layer=3, coef=1.25, trait=70.0, coherence=75.0, delta=35.0),
        ],
        baseline=35.0,
        vector=vi,
        log_trials=False,
    )

    ids["ens"], _ = _sweep(
        root,
        "ensembles",
        _params(
            "evil",
            "natural",
            "response[:10]",
            "mean_diff",
            "attn_contribution",
            "cmaes_ensemble",
            layers=[5, 7],
            weights=[0.1, 0.1],
        ),
        [
            dict(weights=[(5, 0.3), (7, 1.2)], trait=16.0, coherence=88.0, delta=13.0),
            dict(weights=[(5, 0.9), (7, 2.0)], trait=30.0, coherence=40.0, delta=27.0),
        ],
        baseline=3.0,
        children=False,
    )
    ids["combo"], _ = _sweep(
        root,
        "combinations",
        _params("evil", "instruction", "response[:]", "mean_diff"),
        [dict(layer=5, coef=0.3, trait=14.0, coherence=88.0, delta=11.0)],
        baseline=3.0,
        tags={records.STRATEGY: "combined@instruction_layer"},
        children=False,
    )
    ids["half"], _ = _sweep(  # two terms at one layer (both best vectors at L5)
        root,
        "combinations",
        _params(
            "evil",
            "mix",
            "mix",
            "mix",
            mix=[{"vector": "/v/a.safetensors", "layer": 5, "weight": 0.1}] * 2,
        ),
        [dict(weights=[(5, 0.1), (5, 0.25)], trait=9.0, coherence=90.0, delta=6.0)],
        baseline=3.0,
        tags={records.STRATEGY: "ensemble_half"},
        children=False,
    )
    ids["single"], _ = _sweep(
        root,
        "combinations",
        _params("evil", "instruction", "response[:]", "mean_diff"),
        [dict(layer=5, coef=0.2, trait=15.3, coherence=80.0, delta=12.3)],
        baseline=3.0,
        d85=2.0,
        tags={records.STRATEGY: "best_single"},
        children=False,
    )
    return root, ids


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    root, ids = store
    out = tmp_path_factory.mktemp("report")
    assert main(["--root", str(root), "--out", str(out)]) == 0
    return root, ids, out, (out / "report.md").read_text()


def _s(run_id):
    return f"`{run_id[:8]}`"


def test_cross_trait_rows(built):
    _, ids, _, md = built
    # without per-question scores or a confirmation (an older store): search numbers, marked,
    # no CI, no winner and no ratio
    assert (
        "| evil | 3.0 (n=4) | +12.3 [n/a] (search) (L5, c0.2, mean_diff, response[:]) "
        "| +15.0 [n/a] (search) (L7, c0.5, mean_diff, response[:10]) | — "
        "| untested (no held-out confirmation of both) | n/a: no CI for the instruction Δ "
        f"| inst {_s(ids['inst_md_trial'])}, nat {_s(ids['nat10_md_trial'])} |"
    ) in md
    # the invalid trial (coherence 69.9 < 70) is ignored; trials come from the child runs
    assert (
        "| sycophancy | 35.0 (n=1) | +35.0 [n/a] (search) (L3, c1.25, mean_diff, response[:]) "
        "| — | — | — | — |" in md
    )
    assert "+37.0" not in md and "+57.0" not in md and "+45.0" not in md


def test_header_traces_the_store(built):
    root, _, _, md = built
    assert f"Tracking URI: `sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}`" in md
    assert "`model_diff` (5 sweeps), `ensembles` (1 sweep), `combinations` (3 sweeps)" in md


def test_positions_methods_layers(built):
    _, ids, _, md = built
    assert "| response[:5] | +10.0 [n/a] (search) | +10.0 | L6 | mean_diff | untested" in md
    assert (
        "| response[:10] | +15.0 [n/a] (search) | +15.0 | L7 | mean_diff "
        f"| (the search's best position) | {_s(ids['nat10_md_trial'])} |"
    ) in md
    assert (
        "| evil | instruction | response[:] | +12.3 [n/a] (search) | +11.0 [n/a] (search) | — "
        "| untested" in md
    )
    assert "| evil | natural | response[:10] | +15.0 [n/a] (search) | — | — | — |" in md
    assert "| evil | L5 (inst_md) | L7 (nat10_md) | 2 layers |" in md
    # operating range: valid trials within 5 trait points of 15.3 (L5 and L4; not L9, not L6)
    assert (
        f"| evil | instruction | inst_md | 15.3 | L4-5 | c0.2-0.25 | 2/3 | {_s(ids['inst_md'])} |"
        in md
    )


def test_full_table(built):
    _, ids, _, md = built
    assert "### evil (baseline trait 3.0, mean of 4 sweeps)" in md
    assert (
        "| inst_md | instruction | response[:] | mean_diff | residual | L5 | 0.2 | 15.3 "
        f"| 80.0 [n/a] | +12.3 [n/a] | — | 3/4 | yes | {_s(ids['inst_md'])} "
        f"| {_s(ids['inst_md_trial'])} |"
    ) in md
    assert (
        "| nat10_md | natural | response[:10] | mean_diff | residual | L7 | 0.5 | 18.0 "
        "| 71.0 [n/a] | +15.0 [n/a] | — | 1/2 | yes |" in md
    )
    full = md[md.index("## 5.") : md.index("## 6.")]
    assert (
        full.index("| inst_md |")
        < full.index("| inst_pr |")
        < full.index("| nat5_md |")
        < full.index("| nat10_md |")
    )


def test_cosine(built):
    _, _, out, md = built
    assert "| evil | 0.60 | L5 vs L7 | inst_md vs nat10_md |" in md
    assert "| L3 | 0.00 |" in md and "| L9 | 0.60 |" in md
    assert (out / "cosine.png").stat().st_size > 0
    assert "![same-layer cosine](cosine.png)" in md


def test_combinations_and_ensembles(built):
    _, ids, _, md = built
    combo = md[md.index("### Combination strategies — evil") :]
    assert (
        "| combined@instruction_layer | L5 | residual | L5, c0.3 | 14.0 | 88.0 | +11.0 | — "
        f"| — | +11.0 | {_s(ids['combo'])} |"
    ) in combo
    assert combo.index("combined@instruction_layer |") < combo.index("| best_single |")
    assert "`best_single` is `inst_md` (instruction)." in combo
    assert (
        "| ensemble_half | L5+L5 | residual | L5=0.1, L5=0.25 | 9.0 | 90.0 | +6.0 | — | — "
        f"| +6.0 | {_s(ids['half'])} |"
    ) in combo
    assert (
        "**Pareto note:** at coherence ≥ 85, the best single reaches +2.0; "
        f"`combined@instruction_layer` reaches +11.0 ({_s(ids['combo'])}) — better on the "
        "high-coherence frontier."
    ) in combo
    ens = md[md.index("### Ensembles — evil") :]
    assert (
        "| L5+L7 mean_diff | L5+L7 | attn_contribution | L5=0.3, L7=1.2 | 16.0 | 88.0 | +13.0 "
        f"| — | — | +13.0 | {_s(ids['ens'])} |"
    ) in ens
    assert (
        "| Best single residual | L7 | residual | L7, c0.5 | 18.0 | 71.0 | +15.0 | — "
        f"| (reference) | +1.0 | {_s(ids['nat10_md_trial'])} |"
    ) in ens


def test_answers_and_extraction(built):
    _, ids, _, md = built
    assert (
        "| Question 0? | INST answer 0 \\| piped (trait 50.0, coh 80.0) "
        "| NAT answer 0 \\| piped (trait 50.0, coh 80.0) |" in md
    )
    assert "Question 2?" in md and "Question 3?" not in md
    assert (
        f"| evil | instruction | inst_md | 90.0 | ctx inst TOP | inst-TOP | {_s(ids['inst_md'])} |"
        in md
    )
    assert "inst-SECOND" in md and "nat-THIRD" in md
    for absent in ("NOTKEPT", "NEG", "FOURTH"):
        assert absent not in md


def test_report_run_logged(built):
    root, _, out, md = built
    client = tracking.client(root)
    exp = client.get_experiment_by_name("model_diff")
    runs = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("steerlab.kind") == "report"
    ]
    assert runs
    run = runs[0]
    assert f"Report run: {_s(run.info.run_id)}" in md
    names = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/cosine.png", "report/cross_trait.png"} <= names
    assert tracking.read_keys(client, "model_diff")[0].name == "inst_md"  # report run: no sweep


def test_missing_sections_degrade(store, tmp_path):
    root, _ = store
    argv = ["--root", str(root), "--experiment", "nothing_here", "--experiments", "none_such"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "`nothing_here` (missing)" in md
    assert "_No sweep runs (tag steerlab.kind=sweep) to report._" in md
    assert "_No combination or ensemble sweeps (experiments: none_such)._" in md
    assert "_Needs a valid best trial of both sources for a trait._" in md
    assert "## 8. Steered answers and extraction responses" in md
    assert not (tmp_path / "cosine.png").exists()
    assert tracking.client(root).get_experiment_by_name("nothing_here") is None  # not logged


def test_subprocess(store, tmp_path):
    root, ids = store
    env = {**os.environ, "PYTHONPATH": str(Path(steerlab.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "steerlab.report", "--root", str(root), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "report.md").read_text()
    assert "+15.0 [n/a] (search) (L7, c0.5" in md and _s(ids["nat10_md_trial"]) in md
    assert "report:" in done.stdout


def test_formatting_helpers():
    assert fmt_coef(6.6) == "6.6" and fmt_coef(0.123456) == "0.123"
    assert fmt_delta(56.24) == "+56.2" and fmt_delta(-1.0) == "-1.0"
    assert layer_ranges([15, 12, 13, 14, 17]) == "L12-15, L17"
    assert key_name("natural", "response[:10]", "probe", "attn_contribution") == "nat10_pr_attn"
    assert cell("a |\nb" + "x" * 400, 10) == "a \\| bxxxx…"


def test_coherence_min_zero_and_a_child_run_without_coef(tmp_path):
    """search.coherence_min=0 makes every trial valid (0 is not "unset"); a trial read from its
    child run alone, with steering.layers but no coef logged, gets nan weights instead of failing.
    """
    root = tmp_path / "store"
    params = _params("calm", "instruction", "response[:]", "mean_diff", layers=[3, 4])
    params["search"]["coherence_min"] = 0
    trial = dict(weights=[(3, 1.0), (4, 1.0)], trait=40.0, coherence=10.0, delta=37.0)
    sweep, _ = _sweep(root, "cmin0", params, [trial], baseline=3.0, log_trials=False)
    argv = ["--root", str(root), "--experiment", "cmin0", "--experiments", "", "--no-log"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "`search.coherence_min` (0)" in md
    assert (
        "| inst_md | instruction | response[:] | mean_diff | residual | L3=nan, L4=nan | — | 40.0 "
        f"| 10.0 [n/a] | +37.0 [n/a] | — | 1/1 | yes | {_s(sweep)} |"
    ) in md
