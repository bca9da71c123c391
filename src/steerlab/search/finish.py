"""A study's end: its best trial confirmed on held-out questions, then `trials.json`, its MLflow
parent run (trial table, Pareto frontier, best trial, figures), a saved ensemble, and what the
study says (`Summary`)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from steerlab import records, stats, tracking
from steerlab import runner as rn
from steerlab.config import position_of, redact, root_of, steering_of
from steerlab.ensembles import Ensemble, save_ensemble
from steerlab.records import Trial
from steerlab.search import liveness, runs
from steerlab.search import study as st
from steerlab.search.pareto import frontier, plot_frontier, plot_layer_coef_map
from steerlab.search.strategies import Strategy
from steerlab.search.summary import convergence, summary_text

log = logging.getLogger("steerlab.sweeper")


@dataclass
class Summary:
    """What one study printed and found."""

    text: str
    best: Trial | None = None
    pareto: list[Trial] = field(default_factory=list)
    error: Exception | None = None
    confirmation: stats.Confirmation | None = None


@dataclass(frozen=True)
class Confirmed:
    """The best trial's held-out evaluation: its answers' rows and the unsteered ones."""

    rows: list[dict[str, Any]]
    base_rows: list[dict[str, Any]]
    record: stats.Confirmation


CONFIRM_FILE = "confirmation.json"  # in the sweep folder: a finished study re-run reuses it


def confirm(
    runner: rn.Runner,
    cfg: DictConfig,
    study: optuna.Study,
    strategy: Strategy,
    trials: list[Trial],
    setup: rn.Setup,
    sweep_dir: Path,
) -> Confirmed | None:
    """The best valid trial on the held-out questions (`confirm.*`), once per best trial: its
    search score was chosen as the best of many on the search questions (optimistic), this one
    was not."""
    best = records.best(trials)
    if best is None or not setup.held_out or setup.held_base is None:
        return None
    path = sweep_dir / CONFIRM_FILE
    key = {"trial": best.number, "questions": setup.held_out}
    try:  # a file a killed worker left half-written counts as absent
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and {k: cached.get(k) for k in key} == key:
        rows, base_rows = cached["rows"], cached["baseline"]
    else:
        [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == best.number]
        steer = strategy.steering(frozen, steering_of(cfg))
        log.info("confirming trial %d on %d held-out answer(s)", best.number, len(setup.held_out))
        result = runner.confirm(setup, steer, root_of(cfg))
        if result is None:
            return None
        rows, base_rows = result.rows, setup.held_base.rows
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # workers may finish together
        tmp.write_text(json.dumps({**key, "rows": rows, "baseline": base_rows}, indent=1))
        tmp.replace(path)
    conf = stats.Confirmation.of(best.number, rows, base_rows, setup.coherence_min)
    return Confirmed(rows, base_rows, conf)


def finish(
    cfg: DictConfig,
    handle: st.Handle,
    trials: list[Trial],
    parent: str | None,
    sweep_dir: Path,
    setup: rn.Setup,
    searched: list[str],
    confirmed: Confirmed | None = None,
) -> Summary:
    """The study's closing: trials.json, its parent run (trial table, Pareto frontier, best
    trial, its confirmation, figures), the best child flagged, the runs-table view, the summary
    text."""
    failed, interrupted = liveness.n_failed(handle.study)
    cut = liveness.n_pruned(handle.study)  # not results
    front = frontier([(t.trait, t.coherence) for t in trials])
    best = records.best(trials)
    (sweep_dir / "trials.json").write_text(json.dumps([t.row() for t in trials], indent=1))
    if best and cfg.search.sampler == "cmaes_ensemble":
        _save_ensemble(cfg, best, setup)
    ordered = sorted(trials, key=lambda t: t.number or 0)
    hint = convergence([(t.valid, t.trait) for t in ordered], int(cfg.search.batch_size))
    if parent:
        store, cmin = tracking.store_of(cfg), cfg.search.coherence_min
        close_orphans(store, parent, handle.study)
        with tracking.run(store, "", "", run_id=parent) as mlflow:
            tracking.log_sweep(mlflow, trials, front, cmin)
            said = {"convergence": hint.text, "convergence.more": str(hint.more).lower()}
            tracking.racing(mlflow.set_tags, said)
            mlflow.log_metrics(
                {
                    "n_complete": len(trials),
                    "n_failed": failed,
                    "n_pruned": cut,
                    "pareto_size": len(front),
                }
            )
            if confirmed:
                tracking.log_confirmation(
                    mlflow, confirmed.record, confirmed.rows, confirmed.base_rows
                )
            if trials:
                pareto = plot_frontier(trials, front, cmin, sweep_dir / "pareto.png", best)
                mlflow.log_artifact(str(pareto))
                grid = plot_layer_coef_map(trials, cmin, sweep_dir / "layer_coef_map.png", best)
                if grid is not None:
                    mlflow.log_artifact(str(grid))
        runs.mark_best(store, parent, best.number if best else None)
        view = runs.runs_view(store, tracking.experiment_name(cfg), parent, searched)
    where = f"{handle.name!r} in {handle.url}"
    ui = _ui_hint(cfg, parent, view) if parent else ""
    conf = confirmed.record if confirmed else None
    text = summary_text(cfg, trials, best, failed, interrupted, where, ui, conf, hint.text, cut)
    return Summary(text, best, [trials[i] for i in front], confirmation=conf)


def _ui_hint(cfg: DictConfig, parent: str, view: str) -> str:
    """Where to look: every trial in the MLflow runs table (steerlab's shared view) and this
    study's parent run, on a tracking server's own URL or `make ui` on the store."""
    store = tracking.store_of(cfg)
    exp = tracking.experiment_id(store, tracking.experiment_name(cfg))
    run = f"#/experiments/{exp}/runs/{parent}?workflowType=machine_learning"
    if isinstance(store, str) and store.startswith(("http://", "https://")):
        base, how = redact(store).rstrip("/"), "MLflow:"
    else:
        where = f" STORE={redact(store)}" if isinstance(store, str) else f" ROOT={store}"
        where = "" if store == Path.cwd().resolve() else where
        base, how = "http://127.0.0.1:5000", f"MLflow: make ui{where}, then open"
    return (
        f"{how}\n  {base}/{view}  (every trial: scores, valid, best)\n"
        f"  {base}/{run}  (this study: best trial, Pareto plot, layer x coef map)"
    )


def _save_ensemble(cfg: DictConfig, best: Trial, setup: rn.Setup) -> None:
    ens = Ensemble(
        str(setup.vector_path),
        cfg.steering.component,
        [la for la, _ in best.weights],
        [w for _, w in best.weights],
        cfg.steering.coef_units,
        best.trait,
        best.coherence,
    )
    ex = cfg.extraction
    vec = records.key_name(ex.source, position_of(cfg), ex.method, "residual")
    # e.g. evil-nat10_md-attn_contribution-L11-L13: methods and sources never collide
    layers = "-".join(f"L{la}" for la in ens.layers)
    name = f"{cfg.trait.name}-{vec}-{cfg.steering.component}-{layers}"
    path = save_ensemble(ens, name, root_of(cfg))
    log.info("saved ensemble %s (use steering.ensemble=%s)", path, name)
    print(f"saved ensemble: {path}  ->  python -m steerlab steering.ensemble={name} ...")


def close_orphans(store: tracking.Store, parent: str, study: optuna.Study) -> None:
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if n := runs.close_orphans(store, parent, running):
        log.warning("closed %d MLflow child run(s) a killed worker left running", n)
