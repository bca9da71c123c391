"""One Optuna study per sweep key: where it is stored, opened by one worker or many, and read back.

`search.storage` says where studies live: `sqlite` (default: `<sweep dir>/optuna.db`, zero set-up),
`journal` (one `<paths.root>/multirun/optuna.journal` file for several processes on one host) or
any SQLAlchemy URL such as `postgresql+psycopg://user:pw@host/db` (many hosts). One database
holds many studies, each named after its sweep key. The settings a study's scores depend on are
stored in the study itself, so a worker started with others is refused, naming the difference.

Workers cooperate through Optuna alone (public API only): the worker whose `create_study` wins
places the study (settings, first tries, MLflow parent run); a worker's trials carry its host and
pid, and on RDB storages Optuna heartbeats. A trial whose worker died (its pid is gone on this
host, or its heartbeat is older than `search.grace_period` anywhere) is closed as FAIL and its
parameters are re-tried, so no budget is lost and a live worker's trials are never touched.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from steerlab.config import SteeringConfig, position_of, redact, root_of
from steerlab.errors import ConfigError
from steerlab.records import Trial
from steerlab.runner import weights
from steerlab.search.strategies import INFEASIBLE_PENALTY, METRICS, RAW_VALUE_SAMPLERS
from steerlab.tracking import flatten

if TYPE_CHECKING:
    from steerlab.search.strategies import Strategy

SETTINGS = "settings.json"  # a readable copy of the settings, beside the study's trial folders
SETTINGS_ATTR = "settings"  # study user attr: what the study's scores depend on
PARENT_RUN = "mlflow_parent_run_id"  # study user attr: the sweep's MLflow parent run
OBJECTIVE = "objective"  # study user attr: what a single objective's value is
WORKER = "worker"  # trial user attr: "<host>:<pid>" of the process evaluating it
ERROR = "error"  # trial user attr: why a trial failed by itself (it counts toward n_trials)
DIED_WITH = (WORKER, "interrupted")  # a closed trial's attrs its retry must not inherit
LEGACY_NAME = "steerlab"  # the study name sqlite files of earlier versions hold
SPEED = (
    "batch_size",
    "batch_tokens",
    "concurrency",
    "max_retries",
    "backoff",
    "timeout",
    "breaker",
    "deadline",
)
NOT_SETTINGS = ("n_trials", "enqueue", "options", "storage", "heartbeat_interval", "grace_period")
# settings saved by earlier versions under other names; keys they saved that no longer exist
# (e.g. the offline judge's unused `judge.model`) cannot differ now and are not compared
RENAMED = {"search.coef": "search.coef_range", "search.layers": "search.layer_range"}
# steerlab records heartbeats itself around its ask/tell batches (`heartbeats`)
warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)


def study_settings(cfg: DictConfig) -> dict[str, str]:
    """What a study's scores depend on, less what its search varies and how fast it runs."""

    def part(name: str, drop: Sequence[str]) -> dict[str, Any]:
        d = OmegaConf.to_container(cfg[name], resolve=True)
        return {k: v for k, v in d.items() if k not in drop}  # type: ignore[union-attr]

    # with every question asked (n_questions null) the held-out count decides which ones
    held = {"confirm": {"n_questions": cfg.confirm.n_questions}}
    return flatten(
        {
            **(held if cfg.steering.n_questions is None and cfg.confirm.n_questions else {}),
            "model": part("model", ("engine",)),  # how fast, not what: same tokens
            "trait": part("trait", ()),
            # extraction.position is `position` (the effective one) again: compared once
            "extraction": part("extraction", (*SPEED, "position")),
            "position": position_of(cfg),
            "steering": part("steering", ("layer", "coef", "weights", *SPEED)),
            "judge": part("judge", SPEED),
            "search": part("search", (*NOT_SETTINGS, *SPEED)),
            "combine": part("combine", ()),
        }
    )


def compare_settings(then: dict[str, str], now: dict[str, str], where: str, fix: str) -> None:
    """Refuse to join a study run under other evaluation settings: trials would not compare."""
    then = {RENAMED.get(k, k): v for k, v in then.items()}
    then = {k: v for k, v in then.items() if k in now}
    diff = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {then.get(k)} -> {now.get(k)}" for k in diff[:4])
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise ConfigError(
            f"the study {where} was run with other settings ({shown}{more}); run it with its "
            f"settings, or {fix}"
        )


def check_settings(sweep_dir: Path, now: dict[str, str]) -> None:
    """The settings.json check of a sweep folder (studies of earlier versions keep only it)."""
    path = sweep_dir / SETTINGS
    if path.is_file():
        where = f"in {sweep_dir}"
        fix = "move the folder away to start a new study"
        compare_settings(json.loads(path.read_text()), now, where, f"{fix} ({path})")


# ---------------------------------------------------------------------------------------------
# storage


def study_name(cfg: DictConfig, sweep_dir: Path) -> str:
    """The sweep key: the sweep folder relative to `<paths.root>/multirun`."""
    base = root_of(cfg) / "multirun"
    try:
        return sweep_dir.relative_to(base).as_posix()
    except ValueError:
        return sweep_dir.as_posix()


def storage_url(cfg: DictConfig, sweep_dir: Path) -> str:
    kind = cfg.search.storage or "sqlite"
    if kind == "sqlite":
        return f"sqlite:///{sweep_dir / 'optuna.db'}"
    if kind == "journal":
        return f"journal:{root_of(cfg) / 'multirun' / 'optuna.journal'}"
    if "://" not in kind:
        raise ConfigError(
            f"search.storage={kind!r} is not valid; choose sqlite, journal or a database URL "
            "such as postgresql+psycopg://user:password@host:5432/steerlab"
        )
    return str(kind)


def masked(url: str) -> str:
    """A storage URL with its password replaced by ***."""
    return redact(url)


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001 - unparsable URL: nothing to hide beyond masked()
        return None


POOL = {"pool_size": 2, "max_overflow": 2}  # a worker holds at most 4 server connections
_OPEN: dict[tuple[str, int, int], optuna.storages.BaseStorage] = {}  # one engine per process


def open_storage(cfg: DictConfig, url: str) -> optuna.storages.BaseStorage:
    """The storage behind `url`, reachable, or a one-line error naming it (password masked).

    A database is opened once per process (every study of a sweep shares its pooled engine):
    connections are checked before use (`pool_pre_ping`), so one the server dropped after a long
    idle period, or a server restart, is replaced instead of failing the next query, and the
    pool is bounded (`POOL`: at most 4 connections per worker, heartbeats included)."""
    if url.startswith(("sqlite", "journal:")):  # files: nothing to pool
        return _open_storage(cfg, url)
    key = (url, int(cfg.search.heartbeat_interval), int(cfg.search.grace_period))
    if key not in _OPEN:
        _OPEN[key] = _open_storage(cfg, url)
    return _OPEN[key]


def _engine_kwargs(url: str) -> dict[str, Any]:
    """Bounded and pre-pinged; on PostgreSQL each connection names its worker for the server's
    administrator (`pg_stat_activity.application_name`: `steerlab <host>:<pid>`)."""
    named = {"connect_args": {"application_name": f"steerlab {worker_id()}"[:63]}}
    return {"pool_pre_ping": True, "pool_recycle": 1800, **POOL} | (
        named if url.startswith("postgresql") else {}
    )


def _open_storage(cfg: DictConfig, url: str) -> optuna.storages.BaseStorage:
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=None if url.startswith("sqlite") else _engine_kwargs(url),
                    heartbeat_interval=int(cfg.search.heartbeat_interval),
                    grace_period=int(cfg.search.grace_period),
                    heartbeat_stale_trial_callback=_Retry(),
                )
        except (IntegrityError, ProgrammingError):  # workers creating a new database's tables
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)
        except Exception as e:  # noqa: BLE001 - any driver error: the URL is unusable
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            secret = _password(url)
            reason = reason.replace(secret, "***") if secret else reason
            raise ConfigError(f"search.storage {masked(url)} cannot be reached: {reason}") from None
    raise AssertionError("unreachable")


class _Retry:
    """Optuna's callback that enqueues a stale trial's parameters again, less the attrs of the
    run that died: it copies user attrs, and a retry still tagged with the dead worker would
    look dead to every other worker from the moment a live one pops it until it tags it."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.copy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in DIED_WITH}
        self._retry(study, clean)


# ---------------------------------------------------------------------------------------------
# opening a study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Handle:
    """An open study with what this worker knows of it."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    name: str
    url: str  # password masked
    created: bool  # this process created the study (and places it)


def open_study(cfg: DictConfig, sweep_dir: Path, directions: list[str]) -> Handle:
    """Create the sweep's study, or join it.

    The creator stores the settings and enqueues `search.enqueue` before anyone can ask; a
    joining worker waits until the creator has placed the study, then checks its settings.
    """
    url = storage_url(cfg, sweep_dir)
    storage = open_storage(cfg, url)
    name = study_name(cfg, sweep_dir)
    if url.startswith("sqlite:") and LEGACY_NAME in optuna.get_all_study_names(storage):
        name = LEGACY_NAME  # a study made by an earlier version: resume it
    settings = study_settings(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name)
        created = False
    if created:
        study.set_user_attr(SETTINGS_ATTR, settings)
        name_objectives(study, float(cfg.search.coherence_min), str(cfg.search.sampler))
        for params in cfg.search.enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)
    else:
        wait_for(study, SETTINGS_ATTR, timeout=float(cfg.search.grace_period))
        then = study.user_attrs.get(SETTINGS_ATTR)
        if then is None:  # an earlier version's study: its settings.json
            check_settings(sweep_dir, settings)
            study.set_user_attr(SETTINGS_ATTR, settings)
        else:
            where = f"{name!r} in {masked(url)}"
            compare_settings(then, settings, where, "give this sweep another search.storage")
        if study.metric_names is None:  # a study of an earlier version
            name_objectives(study, float(cfg.search.coherence_min), str(cfg.search.sampler))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / SETTINGS).is_file():
        (sweep_dir / SETTINGS).write_text(json.dumps(settings, indent=1))
    return Handle(study, storage, name, masked(url), created)


def name_objectives(study: optuna.Study, coherence_min: float, sampler: str) -> None:
    """Name the objectives (optuna-dashboard shows "trait", not "Objective 0") and say, in the
    study's user attrs, what a single objective's value is."""
    with warnings.catch_warnings():  # stable since Optuna 3.2, still flagged experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names(list(METRICS[: len(study.directions)]))
    if len(study.directions) > 1:
        return
    if sampler in RAW_VALUE_SAMPLERS:
        what = (
            f"the trait score; valid iff mean coherence >= {coherence_min:g} (the trials' "
            f"constraint). {sampler} is told raw trait scores, so a value-only ranking (this "
            "dashboard's best trial) may pick an invalid trial: steerlab's best is the best valid"
        )
    else:
        what = (
            f"trait when mean coherence >= {coherence_min:g} (valid); otherwise trait - "
            f"{INFEASIBLE_PENALTY:g} - (coherence shortfall), below every valid trial. The trait "
            "score itself is each trial's user attr `trait`"
        )
    study.set_user_attr(OBJECTIVE, what)


def wait_for(study: optuna.Study, attr: str, timeout: float) -> Any:
    """A study attribute its creator sets; None after `timeout` seconds without it."""
    deadline = time.monotonic() + timeout
    while (value := study.user_attrs.get(attr)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


# ---------------------------------------------------------------------------------------------
# trials in flight


def close_dead(study: optuna.Study) -> list[int]:
    """Close RUNNING trials whose worker is gone and enqueue their parameters again.

    Local workers (same host) are checked by pid at once; others by Optuna's heartbeat after
    the grace period (RDB storages). Returns the closed trial numbers.
    """
    with warnings.catch_warnings():  # stable for years, still flagged experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB heartbeats; retries enqueued by Optuna
    retry = _Retry()
    closed = []
    for t in dead(study):
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker closed it first
            continue
        retry(study, t)
        closed.append(t.number)
    for t in lost(study):  # closed, but its retry was never queued (e.g. the disk was full)
        retry(study, t)
    return closed


def lost(study: optuna.Study) -> list[FrozenTrial]:
    """Trials closed by the world around them (not by their own error) that no retry covers:
    every such point is evaluated again, however its run ended."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL and ERROR not in t.user_attrs and t.params
        and t.number not in retried
    ]  # fmt: skip


def dead(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials of a worker on this host that is gone (or that no worker tagged within
    a minute of asking)."""
    host, out = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(t.user_attrs.get(WORKER, ""))
        h, _, pid = who.rpartition(":")
        if who and (h != host or _alive(int(pid))):
            continue
        if not who and t.datetime_start and time.time() - t.datetime_start.timestamp() < 60:
            continue  # just asked by a worker that has not tagged it yet
        out.append(t)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def heartbeats(handle: Handle, trials: Sequence[Any]) -> Iterator[None]:
    """Record Optuna heartbeats of trials in flight (RDB storages) until the block ends, so
    another worker can tell a live worker's trials from a dead one's."""
    storage = handle.storage
    if not isinstance(storage, optuna.storages.RDBStorage) or not trials:
        yield
        return
    study_id = storage.get_study_id_from_name(handle.name)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
    stop = threading.Event()

    def beat() -> None:
        while True:
            for i in ids:  # a missed beat only shortens the grace period
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(i)
            if stop.wait(storage.get_heartbeat_interval() or 10):
                return

    thread = threading.Thread(target=beat, name="steerlab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def running(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def counted(study: optuna.Study) -> int:
    """Trials that use up `search.n_trials`: completed, or failed by themselves (an `error`).
    Trials closed because their worker died, and surplus ones given back, do not count."""
    return sum(
        t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and ERROR in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def n_failed(study: optuna.Study) -> tuple[int, int]:
    """(failed by themselves, interrupted: closed because their worker died) trial counts."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    own = sum(ERROR in t.user_attrs for t in failed)
    return own, len(failed) - own


def fail(study: optuna.Study, trial: optuna.trial.Trial, error: str) -> None:
    """A trial that failed by itself (its configuration): it counts toward `n_trials`."""
    trial.set_user_attr(ERROR, error[:2000])
    study.tell(trial, state=TrialState.FAIL)


def give_back(study: optuna.Study, trial: optuna.trial.Trial, why: str) -> None:
    """A trial stopped by the world around it (judge down, disk full): closed with the reason,
    not counted, and its parameters queued again for the next run."""
    trial.set_user_attr("interrupted", why[:2000])
    study.tell(trial, state=TrialState.FAIL)
    frozen = study.get_trials(deepcopy=False)[trial.number]
    _Retry()(study, frozen)


def release_surplus(study: optuna.Study, trials: list[Any], total: int) -> list[Any]:
    """Keep the asked trials that fit in `total` counting every worker's; give the rest back.

    Workers that asked at the same moment may together hold more than the budget: trials are
    kept by number (the lowest first, the same order every worker sees), the surplus is told
    PRUNED, which never counts."""
    running = sorted(
        t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    )
    room = total - counted(study)
    keep_numbers = set(running[: max(room, 0)])
    kept = []
    for t in trials:
        if t.number in keep_numbers:
            kept.append(t)
        else:
            t.set_user_attr("surplus", True)
            study.tell(t, state=TrialState.PRUNED)
    return kept


# ---------------------------------------------------------------------------------------------
# reading trials back


def records(
    study: optuna.Study, strategy: Strategy, base: SteeringConfig, coherence_min: float
) -> list[Trial]:
    """The study's completed trials as records, each with the steering it evaluated."""
    return [
        record(t, strategy.steering(t, base), coherence_min)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]


def record(t: FrozenTrial, steer: SteeringConfig, coherence_min: float) -> Trial:
    a = t.user_attrs
    terms = weights(steer) if steer.mix or steer.layers else ()
    scores = (float(a["trait"]), float(a["coherence"]), float(a["delta"]))
    return Trial.of(t.number, steer.layer, steer.coef, terms, scores, coherence_min, a)
