"""One study of a sweep, from placing it to its summary: what the Hydra sweeper runs per study.

The caller owns a `Runner` (models, vectors, judge, baseline), shared by all its studies. Per
batch, `search.batch_size` trials are asked, turned into typed steering configs by the strategy,
evaluated in one batched generate and recorded one by one (folder `<sweep dir>/<trial number>/`
and an MLflow child run of the study's parent run, which records the best valid trial and the
Pareto frontier at the end). The best valid trial is then confirmed on the held-out questions
(`confirm.*`); `search.summary` writes what the study says.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from steerlab import confine, records, stats, timing, tracking
from steerlab import runner as rn
from steerlab.checks import check
from steerlab.combinations import place
from steerlab.config import SteeringConfig, position_of, redact, root_of, steering_of
from steerlab.ensembles import Ensemble, save_ensemble
from steerlab.errors import ConfigError, InfraError, first_line
from steerlab.models import shape_of
from steerlab.records import Trial
from steerlab.search import points, recovery, runs
from steerlab.search import study as st
from steerlab.search.pareto import frontier, plot_frontier, plot_layer_coef_map
from steerlab.search.stop import Stopped, held, stopped_in
from steerlab.search.strategies import Strategy, make_sampler, make_strategy
from steerlab.search.summary import Progress, summary_text

log = logging.getLogger("steerlab.sweeper")
# failures of the world around a study (judge, disk, database): never the trial's own fault
INFRA = (InfraError, OSError, optuna.exceptions.StorageInternalError, SQLAlchemyError)
OWN_STATE = ("adaptive", "cmaes_ensemble")  # samplers that keep their own (single) objective
POLL = 2.0  # seconds between looks at other workers' trials in flight
MAX_REPEATS = 20  # asks in a row of only known points before the space counts as exhausted


@dataclass
class Summary:
    """What one study printed and found."""

    text: str
    best: Trial | None = None
    pareto: list[Trial] = field(default_factory=list)
    error: Exception | None = None
    confirmation: stats.Confirmation | None = None


def run_study(runner: rn.Runner, cfg: DictConfig, label: str) -> Summary:
    """Place, join or resume the study `cfg` describes, and evaluate batches of its trials
    until `search.n_trials` count (with every other worker on the same study)."""
    search = cfg.search
    try:  # the storage and the study's settings first: a refusal costs no model load
        check(cfg)
        sweep_dir = confine.sweep_dir(cfg)  # names were checked: a sweep stays under paths.root
        if cfg.tracking.enabled:
            tracking.check_store(tracking.store_of(cfg))
        if cfg.combine.strategy and not cfg.combine.instruction_run:
            place(cfg)  # the strategy's vectors, layers and first tries, as typed values
            check(cfg)
        strategy = _strategy(cfg)
        multi = bool(search.multi_objective) and search.sampler not in OWN_STATE
        handle = st.open_study(cfg, sweep_dir, ["maximize"] * (2 if multi else 1))
        study = handle.study
        study.sampler = make_sampler(
            search.sampler,
            points.sampler_seed(search.seed, study, handle.created),
            strategy.grid_space(),
        )
        searched = strategy.searched()
        with timing.stage("mlflow"):
            parent = _parent_run(cfg, handle, sweep_dir, searched)
        setup = runner.setup(cfg)  # extraction, vetting and baseline once per process
    except (ValueError, FileNotFoundError) as e:  # the summary (or, alone, the error) says it
        return Summary(f"\n== skipped ({redact(label)}): {e}", error=e)
    except Exception as e:  # judge, disk, database or tracking down while setting up
        if stop := stopped_in(e):
            raise stop from None
        if not _infra(e):
            raise
        return _stopped(label, secret_free(e, cfg), 0)
    if handle.created and parent:
        with timing.stage("mlflow"):
            _log_setup(cfg, parent, setup)
    base = steering_of(cfg)
    params = tracking.run_params(cfg)  # every trial's, with its own steering
    total = _total(cfg, strategy)
    repeated = 0  # asks in a row that found only points the study already has
    progress = Progress(total, int(search.batch_size), len(setup.questions))
    not_logged = recovery.log_missing(cfg, study, parent, sweep_dir, setup, params)  # earlier runs'
    pending: list[Any] = []
    try:
        while True:
            recovery.adopt(study, strategy, base, sweep_dir, float(search.coherence_min), multi)
            st.close_dead(study)
            done, flying = st.counted(study), len(st.running(study))
            if done >= total:
                break
            left = total - done - flying
            t_ask = time.perf_counter()
            with held():  # a stop waits until what was asked carries this worker's name
                trials = strategy.propose(study, min(search.batch_size, left)) if left > 0 else []
                for t in trials:
                    t.set_user_attr(st.WORKER, st.worker_id())
                pending = list(trials)  # asked, not yet told: what a stop gives back
            fresh = points.drop_repeats(study, trials)  # a point another trial has: asked again
            repeated = repeated + 1 if trials and not fresh else 0
            trials = st.release_surplus(study, fresh, total)
            if not trials:
                if 0 < repeated <= MAX_REPEATS:
                    continue
                if len(st.running(study)) == 0 and left > 0:
                    break  # the strategy has nothing left to propose
                time.sleep(POLL)  # other workers' trials in flight: finish them if they die
                continue
            steers = [strategy.steering(t, base) for t in trials]
            pending, down = list(trials), None
            progress.start([t.number for t in trials], done)
            with st.heartbeats(handle, trials), timing.stage("search", since=t_ask):
                outcomes = _evaluate(runner, setup, steers, root_of(cfg))
                span = progress.evaluated()
                for t, steer, outcome in zip(trials, steers, outcomes, strict=True):
                    if isinstance(outcome, Exception):  # the configuration's own failure
                        log.warning("trial %d failed: %s", t.number, secret_free(outcome, cfg))
                        st.fail(study, t, secret_free(outcome, cfg))
                        pending.remove(t)
                        continue
                    job = sweep_dir / str(t.number)
                    with timing.stage("record"):
                        scores, error = rn.record(
                            cfg, setup, steer, outcome, job, t.number, parent, span, params,
                            down,
                        )  # fmt: skip
                        down = down or error  # the store failed: the rest of the batch waits
                        if error:
                            t.set_user_attr("tracking_error", error)
                            not_logged.append(t.number)
                        strategy.tell(study, t, scores, search.coherence_min, multi)
                    pending.remove(t)
                    timing.mark("first_trial")
            progress.end(study, search.coherence_min)
    except (Stopped, *INFRA) as e:  # told to stop, or judge, disk or database down
        stop = stopped_in(e)  # a stop inside a database call arrives wrapped as its error
        why = str(stop) if stop else secret_free(e, cfg)
        n = _give_back(cfg, study, pending, parent, why)  # the others re-try them now
        log.error("%s; %d trial(s) given back to the study", why if stop else f"stopped: {why}", n)
        if stop:
            stop.given_back = n
            raise stop from None
        return _stopped(label, why, n)
    trials = st.records(study, strategy, base, search.coherence_min)
    try:
        with timing.stage("confirm"):
            confirmed = _confirm(runner, cfg, study, strategy, trials, setup, sweep_dir)
        not_logged = recovery.log_missing(cfg, study, parent, sweep_dir, setup, params)
        with timing.stage("finish"):
            summary = _finish(cfg, handle, trials, parent, sweep_dir, setup, searched, confirmed)
    except Exception as e:  # the tracking store or the disk failed at the end: trials kept
        if stop := stopped_in(e):
            raise stop from None
        if not _infra(e):
            raise
        why, missing = secret_free(e, cfg), recovery.unlogged(cfg, study, parent)
        return Summary(
            f"\n== {redact(label)}: {why}",
            error=InfraError(
                f"{why}; the study's trials are kept"
                + (f", {len(missing)} not in MLflow yet ({missing})" if missing else "")
                + "; run the same command again to finish and log them"
            ),
        )
    if not_logged:  # the mirror is incomplete: say so, and exit 2 so scripts notice
        summary.text += (
            f"\n{len(not_logged)} trial(s) not logged to MLflow ({not_logged}); their answers "
            f"and metrics are in {sweep_dir}/<trial>/"
        )
        summary.error = InfraError(
            f"the study finished, but {len(not_logged)} trial(s) are not in MLflow yet "
            f"({not_logged}); run the same command again to log them from their folders"
        )
    return summary


def _give_back(
    cfg: DictConfig, study: optuna.Study, asked: list[Any], parent: str | None, why: str
) -> int:
    """Close the trials this worker asked and has not told as interrupted (queued again at once,
    not counted) and the MLflow child runs a half-recorded one left RUNNING (KILLED, tagged
    interrupted); how many went back."""
    try:
        running = st.running(study)
        back = [t for t in asked if t.number in running]
        for t in back:
            st.give_back(study, t, why)
        others = st.running(study)
    except INFRA:  # the database is down: the others' close_dead re-tries them
        return 0
    if parent and cfg.tracking.enabled:
        with contextlib.suppress(Exception):  # the store is down: the next run closes them
            runs.close_orphans(tracking.store_of(cfg), parent, others)
    return len(back)


def _infra(e: BaseException) -> bool:
    """The world around the study failed (INFRA, or the MLflow client: its module is not
    imported here, it is heavy), never the configuration."""
    return isinstance(e, INFRA) or type(e).__module__.split(".")[0] == "mlflow"


def _stopped(label: str, why: str, given_back: int) -> Summary:
    back = (
        f"{given_back} trial(s) in flight were given back to the study (not counted); "
        if given_back
        else ""
    )
    return Summary(
        f"\n== stopped ({redact(label)}): {why}\n{back}run the same command again to resume",
        error=InfraError(f"{why} (the study resumes where it stopped)"),
    )


def _strategy(cfg: DictConfig) -> Strategy:
    n_layers, _ = shape_of(cfg.model.steering)
    lo, hi = cfg.search.layer_range if cfg.search.layer_range else (0, n_layers - 1)
    layers = list(range(lo, hi + 1))
    return make_strategy(cfg.search, layers, cfg.steering.layers, bool(cfg.steering.mix))


def _total(cfg: DictConfig, strategy: Strategy) -> int:
    """`search.n_trials`, or fewer when a grid has fewer points."""
    if cfg.search.sampler != "grid":
        return int(cfg.search.n_trials)
    return min(cfg.search.n_trials, math.prod(len(v) for v in strategy.grid_space().values()))


def secret_free(e: BaseException | str, cfg: DictConfig) -> str:
    """An error as text fit to store: URL passwords and the judge's API key redacted first,
    then cut (a key cut in half would no longer be found)."""
    if isinstance(e, BaseException):
        causes = [e]
        while (c := causes[-1].__cause__ or causes[-1].__context__) and len(causes) < 4:
            if "no running event loop" in str(c):
                break  # asyncio's bookkeeping while a client shut down, not what failed
            causes.append(c)  # the root cause says what happened ("disk is full")
        text = str(causes[-1]).strip().strip("()").strip()  # an empty cause says "()"
        root = text.splitlines()[0] if text else type(causes[-1]).__name__
        first = first_line(e, "")  # one line: no SQL, no parameters
        e = f"{type(e).__name__}: {first}" + (f" (cause: {root})" if len(causes) > 1 else "")
        if isinstance(causes[0], optuna.exceptions.StorageInternalError | SQLAlchemyError):
            e = f"study storage {_storage_of(cfg)}: {e}"
    text = redact(e)
    key_env = cfg.judge.get("api_key_env")
    if key_env and (key := os.environ.get(key_env, "").strip()):
        text = text.replace(key, "***")
    return text[:2000]


def _storage_of(cfg: DictConfig) -> str:
    """The study storage's URL, password masked, for messages."""
    try:
        return st.masked(st.storage_url(cfg, Path(str(cfg.hydra.sweep.dir)).resolve()))
    except Exception:  # noqa: BLE001 - a message's detail: the setting as given
        return redact(str(cfg.search.storage))


def _evaluate(
    runner: rn.Runner, setup: rn.Setup, steers: list[SteeringConfig], root: Path
) -> list[Any]:
    """One batched generate for all K; if it fails, each alone, so one bad trial fails alone
    (its exception is returned in its place)."""
    try:
        return runner.evaluate(setup, steers, root)
    except INFRA:
        raise  # not the configurations' fault: the caller gives the trials back
    except Exception as e:  # noqa: BLE001 - retried one by one, which reports
        log.warning("batched evaluation failed (%s); running trials one by one", e)
    out: list[Any] = []
    for s in steers:
        try:
            out += runner.evaluate(setup, [s], root)
        except INFRA:
            raise
        except Exception as e:  # noqa: BLE001 - recorded as the trial's failure
            out.append(e)
    return out


def _parent_run(
    cfg: DictConfig, handle: st.Handle, sweep_dir: Path, searched: list[str]
) -> str | None:
    """The study's one MLflow parent run: made by the worker that created the study (its id
    kept in the study); the others wait for it. Child runs a killed worker left RUNNING are
    closed as KILLED.

    The `steering.*` fields a search sets per trial (`searched`) are not logged as its params:
    their config defaults would read as the search's result. The children have them, and the
    parent gets the best trial's as `best.*` tags when the study ends."""
    if not cfg.tracking.enabled:
        return None
    study, store = handle.study, tracking.store_of(cfg)
    if not handle.created:
        run_id = st.wait_for(study, st.PARENT_RUN, timeout=float(cfg.search.grace_period))
        if run_id is None:
            raise ConfigError(
                f"the study {handle.name!r} in {handle.url} has no MLflow parent run after "
                f"{cfg.search.grace_period} s: its creator died while placing it; start again"
            )
        if runs.run_exists(store, str(run_id)):
            _close_orphans(store, str(run_id), study)
            return str(run_id)
        log.warning(
            "the study's MLflow parent run %s is not in %s (a moved or new store): a new one "
            "is made", run_id, tracking.tracking_uri(store),
        )  # fmt: skip
    tags = {
        records.KIND: "sweep",
        "steerlab.sweep_dir": str(sweep_dir),
        "steerlab.searched": ", ".join(f"steering.{k}" for k in searched),
        "optuna.storage": handle.url,
        "optuna.study": handle.name,
    }
    if cfg.combine.strategy:
        tags[records.STRATEGY] = cfg.combine.strategy
    name = f"sweep-{cfg.trait.name}-{sweep_dir.parent.name}-{sweep_dir.name}"
    exp = tracking.experiment_name(cfg)
    params = tracking.run_params(cfg)
    params["steering"] = {k: v for k, v in params["steering"].items() if k not in searched}
    with tracking.run(store, exp, name, params, tags=tags) as mlflow:
        run_id = mlflow.active_run().info.run_id
    study.set_user_attr(st.PARENT_RUN, run_id)
    return run_id


def _close_orphans(store: tracking.Store, parent: str, study: optuna.Study) -> None:
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if n := runs.close_orphans(store, parent, running):
        log.warning("closed %d MLflow child run(s) a killed worker left running", n)


def _log_setup(cfg: DictConfig, parent: str, setup: rn.Setup) -> None:
    """What every trial shares, on the parent run: elicited responses, vector, baseline."""
    with tracking.run(tracking.store_of(cfg), "", "", run_id=parent) as mlflow:
        if ex := setup.extraction_rows:  # none when steering a given vector file
            mlflow.log_table({k: [r[k] for r in ex] for k in ex[0]}, "extraction.json")
        mlflow.log_dict(setup.vector_meta(), "vector.json")
        rows = setup.base.rows
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "baseline.json")
        mlflow.log_metrics(
            tracking.rounded(
                {"baseline_trait": setup.base.trait, "baseline_coherence": setup.base.coherence}
            )
        )


@dataclass(frozen=True)
class Confirmed:
    """The best trial's held-out evaluation: its answers' rows and the unsteered ones."""

    rows: list[dict[str, Any]]
    base_rows: list[dict[str, Any]]
    record: stats.Confirmation


CONFIRM_FILE = "confirmation.json"  # in the sweep folder: a finished study re-run reuses it


def _confirm(
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


def _finish(
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
    failed, interrupted = st.n_failed(handle.study)
    front = frontier([(t.trait, t.coherence) for t in trials])
    best = records.best(trials)
    (sweep_dir / "trials.json").write_text(json.dumps([t.row() for t in trials], indent=1))
    if best and cfg.search.sampler == "cmaes_ensemble":
        _save_ensemble(cfg, best, setup)
    if parent:
        store, cmin = tracking.store_of(cfg), cfg.search.coherence_min
        _close_orphans(store, parent, handle.study)
        with tracking.run(store, "", "", run_id=parent) as mlflow:
            tracking.log_sweep(mlflow, trials, front, cmin)
            mlflow.log_metrics(
                {"n_complete": len(trials), "n_failed": failed, "pareto_size": len(front)}
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
    text = summary_text(cfg, trials, best, failed, interrupted, where, ui, conf)
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
