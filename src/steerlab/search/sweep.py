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
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from sqlalchemy.exc import SQLAlchemyError

from steerlab import confine, provenance, records, timing, tracking
from steerlab import runner as rn
from steerlab.checks import check
from steerlab.combinations import place
from steerlab.config import redact, root_of, steering_of
from steerlab.errors import ConfigError, InfraError, first_line
from steerlab.models import shape_of
from steerlab.search import batches, finish, liveness, points, pruning, recovery, runs
from steerlab.search import storage as sto
from steerlab.search import study as st
from steerlab.search.finish import Summary
from steerlab.search.strategies import Strategy, make_sampler, make_strategy
from steerlab.search.summary import Progress, numbers
from steerlab.stop import Stopped, held, stopped_in

log = logging.getLogger("steerlab.sweeper")
# failures of the world around a study (judge, disk, database): never the trial's own fault
INFRA = (InfraError, OSError, optuna.exceptions.StorageInternalError, SQLAlchemyError)
OWN_STATE = ("adaptive", "cmaes_ensemble")  # samplers that keep their own (single) objective
POLL = 2.0  # seconds between looks at other workers' trials in flight
MAX_REPEATS = 20  # asks in a row of only known points before the space counts as exhausted


def run_study(runner: rn.Runner, cfg: DictConfig, label: str) -> Summary:
    """Place, join or resume the study `cfg` describes, and evaluate batches of its trials
    until `search.n_trials` count (with every other worker on the same study)."""
    search = cfg.search
    try:  # the storage and the study's settings first: a refusal costs no model load
        check(cfg)
        pruning.check(search)
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
        if search.prune.enabled:
            study.pruner = pruning.QuestionPruner(float(search.coherence_min), search.prune.p)
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
    n_q, prune = len(setup.questions), search.prune
    first = pruning.n_first(n_q, prune.first) if prune.enabled else 0
    progress = Progress(total, int(search.batch_size), n_q, first)
    steer_of = lambda t: strategy.steering(t, base)  # noqa: E731 - a trial's steering
    not_logged = recovery.log_missing(cfg, study, parent, sweep_dir, setup, params, steer_of)
    pending: list[Any] = []
    down: str | None = None  # why the tracking store failed: MLflow waits for the next run
    try:
        while True:
            recovery.adopt(study, strategy, base, sweep_dir, float(search.coherence_min), multi)
            liveness.close_dead(study)
            done, flying = liveness.counted(study), len(liveness.running(study))
            if done >= total:
                break
            left = total - done - flying
            t_ask = time.perf_counter()
            with held():  # a stop waits until what was asked carries this worker's name
                trials = strategy.propose(study, min(search.batch_size, left)) if left > 0 else []
                for t in trials:
                    t.set_user_attr(sto.WORKER, sto.worker_id())
                pending = list(trials)  # asked, not yet told: what a stop gives back
            fresh = points.drop_repeats(study, trials)  # a point another trial has: asked again
            repeated = repeated + 1 if trials and not fresh else 0
            trials = liveness.release_surplus(study, fresh, total)
            if not trials:
                if 0 < repeated <= MAX_REPEATS:
                    continue
                if len(liveness.running(study)) == 0 and left > 0:
                    break  # the strategy has nothing left to propose
                time.sleep(POLL)  # other workers' trials in flight: finish them if they die
                continue
            steers = [strategy.steering(t, base) for t in trials]
            pending = list(trials)
            progress.start([t.number for t in trials], done)
            with liveness.heartbeats(handle, trials), timing.stage("search", since=t_ask):
                if search.prune.enabled:
                    outcomes = batches.staged(
                        runner, setup, steers, root_of(cfg), INFRA, trials, search
                    )
                else:
                    outcomes = batches.evaluate(runner, setup, steers, root_of(cfg), INFRA)
                span = progress.evaluated()
                for t, steer, outcome in zip(trials, steers, outcomes, strict=True):
                    if isinstance(outcome, Exception):  # the configuration's own failure
                        log.warning("trial %d failed: %s", t.number, secret_free(outcome, cfg))
                        liveness.fail(study, t, secret_free(outcome, cfg))
                        pending.remove(t)
                        continue
                    job = sweep_dir / str(t.number)
                    cut = isinstance(outcome, batches.Pruned)  # its first questions only
                    with timing.stage("record"):
                        scores, error = rn.record(
                            cfg, setup, steer, outcome.result if cut else outcome, job,
                            t.number, parent, span, params, down, pruned=cut,
                        )  # fmt: skip
                        down = down or error  # the store failed: the rest of the run waits
                        if error:
                            t.set_user_attr("tracking_error", error)
                            not_logged.append(t.number)
                        if cut:
                            pruning.tell(study, t, scores, outcome.why, search.coherence_min)
                        else:
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
    if down:  # the store failed in this run: the end goes to the folder, MLflow waits
        parent = None
    try:
        with timing.stage("confirm"):
            confirmed = finish.confirm(runner, cfg, study, strategy, trials, setup, sweep_dir)
        if not down:
            not_logged = recovery.log_missing(
                cfg, study, parent, sweep_dir, setup, params, steer_of, not_logged
            )
        with timing.stage("finish"):
            summary = finish.finish(
                cfg, handle, trials, parent, sweep_dir, setup, searched, confirmed
            )
    except Exception as e:  # the tracking store or the disk failed at the end: trials kept
        if stop := stopped_in(e):
            raise stop from None
        if not _infra(e):
            raise
        why, missing = secret_free(e, cfg), recovery.unlogged(cfg, study, parent, not_logged)
        return Summary(  # the error line says it all: nothing printed twice
            "",
            error=InfraError(
                f"{why}; the study's trials are kept"
                + (f", {len(missing)} not in MLflow yet ({numbers(missing)})" if missing else "")
                + "; run the same command again to finish and log them"
            ),
        )
    if not_logged:  # the mirror is incomplete: say so once, and exit 2 so scripts notice
        cause = f": {down}" if down else ""
        summary.error = InfraError(
            f"study done; {len(not_logged)} trial(s) not in MLflow yet ({numbers(not_logged)})"
            f"{cause}; the same command again logs them from {sweep_dir.name}/<trial>/"
        )
    return summary


def _give_back(
    cfg: DictConfig, study: optuna.Study, asked: list[Any], parent: str | None, why: str
) -> int:
    """Close the trials this worker asked and has not told as interrupted (queued again at once,
    not counted) and the MLflow child runs a half-recorded one left RUNNING (KILLED, tagged
    interrupted); how many went back."""
    try:
        running = liveness.running(study)
        back = [t for t in asked if t.number in running]
        for t in back:
            liveness.give_back(study, t, why)
        others = liveness.running(study)
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
    back = f"{given_back} trial(s) in flight given back (not counted); " if given_back else ""
    return Summary(  # the error line says it all: nothing printed twice
        "", error=InfraError(f"{why}; {back}the same command again resumes the study")
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
        return sto.masked(sto.storage_url(cfg, Path(str(cfg.hydra.sweep.dir)).resolve()))
    except Exception:  # noqa: BLE001 - a message's detail: the setting as given
        return redact(str(cfg.search.storage))


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
            finish.close_orphans(store, str(run_id), study)
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


def _log_setup(cfg: DictConfig, parent: str, setup: rn.Setup) -> None:
    """What every trial shares, on the parent run: elicited responses, vector, baseline, and
    what it takes to repeat the study (`provenance`)."""
    models = {"steering": cfg.model.steering, "extraction": cfg.model.extraction}
    facts = provenance.collect(cfg, models, setup.trait, setup.judge.identity, setup.model.device)
    with tracking.run(tracking.store_of(cfg), "", "", run_id=parent) as mlflow:
        mlflow.set_tags(provenance.as_tags(facts))
        mlflow.log_dict(facts, "provenance.json")
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
