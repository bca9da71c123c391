"""One Optuna study per sweep key: opened (created or resumed), told, and read back as records.

A study lives in `<sweep dir>/optuna.db`; `settings.json` beside it holds what its scores depend
on, so resuming under other settings is refused instead of mixing incomparable trials. Only
Optuna's public API is used: trials interrupted by a kill are closed as FAIL and their numbers
kept in the study's user attribute `interrupted`, so they do not count toward `search.n_trials`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from steerlab.config import SteeringConfig, position_of
from steerlab.records import Trial
from steerlab.runner import weights
from steerlab.tracking import flatten

if TYPE_CHECKING:
    from steerlab.search.strategies import Strategy

SETTINGS = "settings.json"  # what a study's trials were evaluated under
INTERRUPTED = "interrupted"  # study user attr: numbers of trials a kill left unfinished
ENQUEUED = "enqueued"  # study user attr: search.enqueue was added once
PARENT_RUN = "mlflow_parent_run_id"  # study user attr: the sweep's MLflow parent run
SPEED = ("batch_size", "concurrency", "max_retries", "backoff", "timeout")
# settings saved by earlier versions under other names; keys they saved that no longer exist
# (e.g. the offline judge's unused `judge.model`) cannot differ now and are not compared
RENAMED = {"search.coef": "search.coef_range", "search.layers": "search.layer_range"}


def study_settings(cfg: DictConfig) -> dict[str, str]:
    """What a study's scores depend on, less what its search varies and how fast it runs."""

    def part(name: str, drop: Sequence[str]) -> dict[str, Any]:
        d = OmegaConf.to_container(cfg[name], resolve=True)
        return {k: v for k, v in d.items() if k not in drop}  # type: ignore[union-attr]

    return flatten(
        {
            "model": part("model", ()),
            "trait": part("trait", ()),
            "extraction": part("extraction", SPEED),
            "position": position_of(cfg),
            "steering": part("steering", ("layer", "coef", "weights", *SPEED)),
            "judge": part("judge", SPEED),
            "search": part("search", ("n_trials", "enqueue", "options", *SPEED)),
            "combine": part("combine", ()),
        }
    )


def check_settings(sweep_dir: Path, now: dict[str, str]) -> None:
    """Refuse to resume a study under other evaluation settings: its trials would not compare."""
    path = sweep_dir / SETTINGS
    if not path.is_file():
        return
    then = {RENAMED.get(k, k): v for k, v in json.loads(path.read_text()).items()}
    then = {k: v for k, v in then.items() if k in now}
    diff = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {then.get(k)} -> {now.get(k)}" for k in diff[:4])
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise ValueError(
            f"the study in {sweep_dir} was run with other settings ({shown}{more}); run it "
            f"with its settings ({path}), or move the folder away to start a new study"
        )


def open_study(
    cfg: DictConfig, sweep_dir: Path, sampler: optuna.samplers.BaseSampler, multi: bool
) -> optuna.Study:
    """Create or resume the study of `sweep_dir`; trials a kill left RUNNING become FAIL."""
    settings = study_settings(cfg)
    check_settings(sweep_dir, settings)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="steerlab",
        storage=storage_url(sweep_dir),
        load_if_exists=True,
        sampler=sampler,
        directions=["maximize", "maximize"] if multi else ["maximize"],
    )
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if stale:
        study.set_user_attr(INTERRUPTED, sorted({*study.user_attrs.get(INTERRUPTED, []), *stale}))
        for n in stale:
            study.tell(n, state=TrialState.FAIL)
    path = sweep_dir / SETTINGS
    if not path.is_file():
        path.write_text(json.dumps(settings, indent=1))
    if not study.user_attrs.get(ENQUEUED):
        for params in cfg.search.enqueue:
            study.enqueue_trial(dict(params))
        study.set_user_attr(ENQUEUED, True)
    return study


def storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{sweep_dir / 'optuna.db'}"


def counted(study: optuna.Study) -> int:
    """Trials that use up `search.n_trials`: completed, or failed for a reason of their own."""
    interrupted = set(study.user_attrs.get(INTERRUPTED, []))
    return sum(
        t.state == TrialState.COMPLETE
        or (t.state == TrialState.FAIL and t.number not in interrupted)
        for t in study.get_trials(deepcopy=False)
    )


def n_failed(study: optuna.Study) -> tuple[int, int]:
    """(failed, interrupted) trial counts."""
    interrupted = set(study.user_attrs.get(INTERRUPTED, []))
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    return sum(n not in interrupted for n in failed), sum(n in interrupted for n in failed)


def fail(study: optuna.Study, trial: optuna.trial.Trial, error: str) -> None:
    trial.set_user_attr("error", error[:2000])
    study.tell(trial, state=TrialState.FAIL)


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
    return Trial.of(t.number, steer.layer, steer.coef, terms, scores, coherence_min)
