"""What a study's scores depend on, stored in the study: a worker started with other settings
is refused, naming the difference (trials evaluated under other settings would not compare)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from steerlab.config import position_of
from steerlab.errors import ConfigError
from steerlab.tracking import flatten

SETTINGS = "settings.json"  # a readable copy of the settings, beside the study's trial folders
SETTINGS_ATTR = "settings"  # study user attr: what the study's scores depend on
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
# what a search varies, or how it spends its budget (pruning changes which trials finish,
# never a finished trial's scores): a study resumed with other values still compares
NOT_SETTINGS = (
    "n_trials", "enqueue", "options", "storage", "heartbeat_interval", "grace_period", "prune",
)  # fmt: skip
# settings saved by earlier versions under other names; keys they saved that no longer exist
# (e.g. the offline judge's unused `judge.model`) cannot differ now and are not compared
RENAMED = {"search.coef": "search.coef_range", "search.layers": "search.layer_range"}


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
