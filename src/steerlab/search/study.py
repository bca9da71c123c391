"""One Optuna study per sweep key, opened by one worker or many, and read back.

`search.storage` says where studies live (`storage.py`); one database holds many studies, each
named after its sweep key. The settings a study's scores depend on are stored in the study
itself (`settings.py`), so a worker started with others is refused, naming the difference.

Workers cooperate through Optuna alone (public API only): the worker whose `create_study` wins
places the study (settings, first tries, MLflow parent run); a worker's trials carry its host and
pid, and on RDB storages Optuna heartbeats (`liveness.py`: a dead worker's trials are re-tried).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import DictConfig
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from steerlab.config import SteeringConfig
from steerlab.records import Trial
from steerlab.runner import weights
from steerlab.search.settings import (
    SETTINGS,
    SETTINGS_ATTR,
    check_settings,
    compare_settings,
    study_settings,
)
from steerlab.search.storage import masked, open_storage, storage_url, study_name
from steerlab.search.strategies import INFEASIBLE_PENALTY, METRICS, RAW_VALUE_SAMPLERS

if TYPE_CHECKING:
    from steerlab.search.strategies import Strategy

PARENT_RUN = "mlflow_parent_run_id"  # study user attr: the sweep's MLflow parent run
OBJECTIVE = "objective"  # study user attr: what a single objective's value is
LEGACY_NAME = "steerlab"  # the study name sqlite files of earlier versions hold
# steerlab records heartbeats itself around its ask/tell batches (`liveness.heartbeats`)
warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)


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
