"""Where studies live (`search.storage`: sqlite, journal or a database URL), opened once per
process with bounded, pre-pinged pools, and named so that secrets never reach a message."""

from __future__ import annotations

import copy
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from steerlab.config import redact, root_of
from steerlab.errors import ConfigError

WORKER = "worker"  # trial user attr: "<host>:<pid>" of the process evaluating it
DIED_WITH = (WORKER, "interrupted")  # a closed trial's attrs its retry must not inherit


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
                    heartbeat_stale_trial_callback=Retry(),
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


class Retry:
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
