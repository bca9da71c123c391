"""What a person sees of a sweep: optuna-dashboard's best trial, the MLflow runs (parent params
and tags, the best child, batch times, rounded metrics, the runs-table view), the figures, the
terminal (batch lines, the closing table) and `python -m steerlab --help` / `--cfg job`.

The end-to-end checks share one tiny-model sweep whose coherence threshold makes some trials
invalid, with invalid trials scoring a higher trait than the best valid one: the case a
dashboard that ranks by trait alone gets wrong."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest

from conftest import run_steerlab, search_config, tiny_args
from steerlab import records, tracking
from steerlab.records import Trial
from steerlab.search import pareto, runs
from steerlab.search.strategies import Strategy, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
CMIN = 5.0  # the tiny model's answers score coherence ~1-10: some trials pass, some do not


# ---------------------------------------------------------------------------------------------
# units


def test_an_invalid_trial_ranks_below_every_valid_one_in_the_storage():
    """`storage.get_best_trial` (what optuna-dashboard shows as best) ranks by value alone."""
    s = Strategy(search_config(), [0, 1, 2])
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, direction="maximize", sampler=make_sampler("tpe", 0, {})
    )
    told = {}
    for t, (trait, coherence) in zip(
        s.propose(study, 3), [(95.0, 20.0), (10.0, 71.0), (0.0, 69.9)], strict=True
    ):
        s.tell(study, t, {"trait": trait, "coherence": coherence}, 70.0)
        told[t.number] = (trait, coherence)
    best = storage.get_best_trial(storage.get_study_id_from_name(study.study_name))
    assert told[best.number] == (10.0, 71.0)
    for t in study.trials:  # the constraint in the list optuna-dashboard reads, the trait kept
        trait, coherence = told[t.number]
        assert t.system_attrs["constraints"] == [pytest.approx(70.0 - coherence)]
        assert t.user_attrs["trait"] == trait
        assert (t.value == trait) == (coherence >= 70.0)
    assert study.best_trial.number == best.number  # Optuna's own, constraint-aware, agrees


def test_gp_is_told_the_trait_itself():
    """GP models the value as a smooth function; the constraint has a model of its own."""
    s = Strategy(search_config(sampler="gp"), [0, 1, 2])
    study = optuna.create_study(direction="maximize")
    [t] = s.propose(study, 1)
    s.tell(study, t, {"trait": 95.0, "coherence": 20.0}, 70.0)
    [done] = study.trials
    assert done.value == 95.0 and done.system_attrs["constraints"] == [50.0]


def test_rounded_metrics():
    got = tracking.rounded({"trait": 43.97000000001, "best_coef": 0.048812345, "n": 3, "x": None})
    assert got == {"trait": 43.97, "best_coef": 0.04881, "n": 3.0}


def _trials() -> list[Trial]:
    rows = [  # (layer, coef, trait, coherence): trial 3 is the best valid; 0 and 4 score more
        (4, 0.1, 30.0, 90.0),
        (8, 0.3, 80.0, 40.0),
        (6, 0.2, 45.0, 75.0),
        (6, 0.25, 55.0, 72.0),
        (10, 0.5, 90.0, 20.0),
    ]
    return [
        Trial.of(i, la, c, (), (t, coh, t - 20.0), 70.0) for i, (la, c, t, coh) in enumerate(rows)
    ]


def test_pareto_figure_marks_the_best_valid_and_the_invalid_trials():
    trials = _trials()
    best = records.best(trials)
    assert best.number == 3
    front = pareto.frontier([(t.trait, t.coherence) for t in trials])
    fig = pareto.frontier_figure(trials, front, 70.0, best)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(x.startswith("best valid: trial 3 ") for x in labels), labels
    assert "invalid: coherence < 70 (2)" in labels and "valid (3)" in labels
    star = next(c for c in ax.collections if c.get_label().startswith("best valid"))
    assert star.get_offsets().tolist() == [[72.0, 55.0]]  # (coherence, trait)
    crosses = next(c for c in ax.collections if c.get_label().startswith("invalid"))
    assert sorted(map(tuple, crosses.get_offsets().tolist())) == [(20.0, 90.0), (40.0, 80.0)]


def test_layer_coef_map_marks_the_best_valid_and_the_invalid_trials():
    trials = _trials()
    fig = pareto.layer_coef_figure(trials, 70.0, records.best(trials))
    assert "layer x coef map" in fig._suptitle.get_text()
    for ax in fig.axes[:2]:
        offsets = [(c.get_offsets().tolist(), c.get_paths()) for c in ax.collections]
        points = {tuple(p) for pts, _ in offsets for p in pts}
        assert {(4.0, 0.1), (8.0, 0.3), (6.0, 0.2), (6.0, 0.25), (10.0, 0.5)} <= points
        assert len(ax.collections) == 3  # valid dots, invalid crosses, the best's star
        assert ax.collections[2].get_offsets().tolist() == [[6.0, 0.25]]
        assert sorted(map(tuple, ax.collections[1].get_offsets().tolist())) == [
            (8.0, 0.3),
            (10.0, 0.5),
        ]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["valid", "invalid: coherence < 70"] and "trial 3" in labels[2]
    assert pareto.layer_coef_figure([], 70.0, None) is None


def test_the_best_child_run_flag_moves_with_the_best_trial(tmp_path):
    with tracking.run(tmp_path, "m/evil", "sweep") as mlflow:
        parent = mlflow.active_run().info.run_id
    kids = {}
    for n in range(3):
        tags = {records.TRIAL_TAG: str(n), records.KIND: "trial"}
        with tracking.run(tmp_path, "m/evil", f"trial-{n}", parent_run_id=parent, tags=tags) as m:
            kids[n] = m.active_run().info.run_id
    client = tracking.client(tmp_path)

    def flagged() -> set[int]:
        return {n for n, rid in kids.items() if client.get_run(rid).data.tags.get("steerlab.best")}

    assert runs.mark_best(tmp_path, parent, 1) == kids[1] and flagged() == {1}
    assert runs.mark_best(tmp_path, parent, 2) == kids[2] and flagged() == {2}  # resumed
    assert runs.mark_best(tmp_path, parent, None) is None and flagged() == set()


def test_a_run_span_sets_its_start_and_end_times(tmp_path):
    with tracking.run(tmp_path, "m/evil", "trial-0", span=(1_700_000_000.0, 1_700_000_015.5)) as m:
        run_id = m.active_run().info.run_id
    info = tracking.client(tmp_path).get_run(run_id).info
    assert (info.start_time, info.end_time, info.status) == (
        1_700_000_000_000,
        1_700_000_015_500,
        "FINISHED",
    )


def _steerlab(*args: str) -> str:
    proc = run_steerlab(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_help_says_what_steerlab_does_and_how_to_run_it():
    out = _steerlab("--help")
    assert "Powered by Hydra" not in out
    for needle in ("steerlab: find the direction", "search.coherence_min", "Examples", "-m"):
        assert needle in out
    assert "python -m steerlab -m trait=evil position=10" in out
    assert "search: adaptive, cmaes, cmaes_ensemble, gp, grid, nsga2, tpe" in out


def test_cfg_job_shows_the_effective_extraction_position():
    def position(*overrides: str) -> str:
        import yaml

        return yaml.safe_load(_steerlab("--cfg", "job", *overrides))["extraction"]["position"]

    assert position("position=5") == "response[:5]"
    assert position() == "response[:10]"
    assert position("extraction=instruction") == "response[:]"
    assert position("extraction=instruction", "position=all") == "response[:]"
    assert position('position="response[2:8]"') == "response[2:8]"


# ---------------------------------------------------------------------------------------------
# one tiny-model sweep with invalid trials, end to end


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("views")
    args = tiny_args(root, tiny_dir, "search.n_trials=8", f"search.coherence_min={CMIN:g}")
    proc = run_steerlab(*args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sweep_dir] = (root / "multirun" / "tiny" / "evil").glob("*/*")
    rows = json.loads((sweep_dir / "trials.json").read_text())
    trials = records.trials_from_rows(rows, CMIN)
    best = records.best(trials)
    assert best is not None, "no valid trial: the threshold no longer splits this sweep"
    assert any(not t.valid and t.trait > best.trait for t in trials), (
        "no invalid trial outscores the best valid one: the case under test is gone",
        [(t.number, t.trait, t.coherence) for t in trials],
    )
    return root, sweep_dir, trials, best, proc.stdout + proc.stderr


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_optuna_dashboard_shows_the_best_valid_trial_and_names_the_objective(swept):
    import optuna_dashboard

    _, sweep_dir, trials, best, _ = swept

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    app = optuna_dashboard.wsgi(f"sqlite:///{sweep_dir / 'optuna.db'}")
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/api/studies"
        [study] = _get(base)["study_summaries"]
        detail = _get(f"{base}/{study['study_id']}")
    finally:
        server.shutdown()
    assert detail["objective_names"] == ["trait"]
    assert [t["number"] for t in detail["best_trials"]] == [best.number]
    valid = {t.number: t.valid for t in trials}
    for t in detail["trials"]:  # the dashboard's feasible / infeasible split is steerlab's
        [c] = t["constraints"]
        assert (c <= 0) == valid[t["number"]]


def test_mlflow_parent_run_holds_the_best_trial_not_config_defaults(swept):
    root, _, trials, best, _ = swept
    client = tracking.client(root)
    exp = client.get_experiment_by_name("tiny/evil")
    assert exp.tags[tracking.EXPERIMENT_KIND] == tracking.RUNS_VIEW_KIND
    [parent] = client.search_runs([exp.experiment_id], "tags.`steerlab.kind` = 'sweep'")
    p = parent.data
    assert "steering.layer" not in p.params and "steering.coef" not in p.params
    assert p.tags["steerlab.searched"] == "steering.layer, steering.coef"
    assert p.tags["best.trial"] == str(best.number)
    assert p.tags["best.layer"] == str(best.layer)
    assert float(p.tags["best.coef"]) == pytest.approx(best.coef, rel=1e-3)
    assert p.metrics["best_trait"] == round(best.trait, 2)
    from steerlab.search.summary import convergence

    hint = convergence([(t.valid, t.trait) for t in sorted(trials, key=lambda t: t.number)], 2)
    assert p.tags["convergence"] == hint.text  # the one the summary printed
    assert p.tags["convergence.more"] == str(hint.more).lower()
    assert f"convergence: {hint.text}" in swept[4]
    view = json.loads(exp.tags[runs.VIEW_TAG])
    assert view["orderByKey"] == "metrics.`objective`"
    assert view["runsExpanded"] == {parent.info.run_id: True}
    assert "params.`steering.coef`" in view["selectedColumns"]


def test_mlflow_children_flag_the_best_share_their_batch_times_and_round(swept):
    root, _, trials, best, _ = swept
    client = tracking.client(root)
    exp = client.get_experiment_by_name("tiny/evil")
    kids = client.search_runs([exp.experiment_id], "tags.`steerlab.kind` = 'trial'")
    by_number = {int(k.data.tags[records.TRIAL_TAG]): k for k in kids}
    assert sorted(by_number) == [t.number for t in trials]
    assert [n for n, k in by_number.items() if k.data.tags.get("steerlab.best")] == [best.number]
    top = max(k.data.metrics["objective"] for k in kids)  # the view's sort: the best first
    assert by_number[best.number].data.metrics["objective"] == top
    for k in kids:
        assert all(round(v, 2) == v for v in k.data.metrics.values()), k.data.metrics
    for n in range(0, len(trials), 2):  # batches of 2: one generate, one time span
        a, b = by_number[n].info, by_number[n + 1].info
        assert (a.start_time, a.end_time) == (b.start_time, b.end_time)
        assert a.end_time > a.start_time
        if n:
            assert a.start_time >= by_number[n - 1].info.end_time
    arts = {a.path for a in client.list_artifacts(kids[0].data.tags["mlflow.parentRunId"])}
    assert {"pareto.png", "layer_coef_map.png"} <= arts


def test_terminal_counts_batches_and_shows_strong_invalid_trials(swept):
    _, _, trials, best, out = swept
    for k, first in enumerate(range(0, 8, 2), start=1):
        assert f"batch {k}/4 (trials {first}-{first + 1})" in out
    assert "8/8 trials" in out and "eta " in out
    assert "offline judge: fitting the coherence model on" in out
    table = out[out.index("trials done") :]
    best_row = next(line for line in table.splitlines() if line.endswith("<- best valid"))
    assert best_row.split()[0] == str(best.number)
    strong = max((t for t in trials if not t.valid), key=lambda t: t.trait)
    row = next(line for line in table.splitlines() if line.split()[:1] == [str(strong.number)])
    assert row.endswith(f"x invalid (coherence {strong.coherence:.1f} < {CMIN:g})")
    assert "viewStateShareKey=steerlab" in table and "workflowType=machine_learning" in table


def test_elicitation_shows_one_bar_over_every_prompt(tmp_path, llama, capsys):
    """Generation persisted in chunks used to draw one bar per chunk, each from 0."""
    from steerlab.generation import GenConfig, cached_generate

    prompts = [[5, 6, 7 + i] for i in range(40)]
    gen = GenConfig(max_new_tokens=2, batch_size=4)  # chunks of 16: 16 + 16 + 8
    cached_generate(llama, prompts, gen, tmp_path, desc="elicit natural")
    err = capsys.readouterr().err
    totals = {int(m) for m in re.findall(r"elicit natural:.*?\d+/(\d+) ", err)}
    assert totals == {40}, err
