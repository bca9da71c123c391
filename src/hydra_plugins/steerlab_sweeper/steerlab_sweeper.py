"""Hydra sweeper driving an Optuna study by ask/tell, K trials per batched generate.

Each combination of the command's sweep overrides (e.g. `trait=evil,sycophancy`) gets its own
study in `<sweep dir>/optuna.db`; re-running the same command resumes it. The sweeper composes
each study's config and owns one `Runner` for the whole sweep; `steerlab.search.sweep.run_study`
runs a study (this module only adapts it to Hydra, which loads it as a plugin).
"""

import itertools
import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SteerlabSweeperConf:
    _target_: str = "hydra_plugins.steerlab_sweeper.steerlab_sweeper.SteerlabSweeper"
    # extra sweep dimensions, e.g. {trait: "evil,sycophancy"}; combined with the command's own
    params: dict[str, str] = field(default_factory=dict)
    # alternative override sets, one study each (e.g. "extraction=natural position=5")
    arms: list[str] = field(default_factory=list)


ConfigStore.instance().store(
    group="hydra/sweeper", name="steerlab", node=SteerlabSweeperConf, provider="steerlab"
)


def combos(arguments: list[str], params: dict[str, str], arms: list[str]) -> list[list[str]]:
    """Studies to run: arms x the cartesian product of comma-separated sweep overrides."""
    given = {a.split("=", 1)[0] for a in arguments}
    extra = [f"{k}={v}" for k, v in params.items() if k not in given]
    parsed = OverridesParser.create().parse_overrides([*extra, *arguments])
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    grid = [list(c) for c in itertools.product(*choices)]
    return [arm.split() + c for arm in (arms or [""]) for c in grid]


class SteerlabSweeper(Sweeper):
    def __init__(self, params: dict[str, str] | None = None, arms: list[str] | None = None):
        self.params = dict(params or {})
        self.arms = list(arms or [])

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from steerlab.runner import Runner

        self.config = config
        self.hydra_context = hydra_context
        self.runner = Runner()  # models and setups shared by every study of this sweep

    def sweep(self, arguments: list[str]) -> list[Any]:
        from steerlab.search.sweep import run_study
        from steerlab.stop import Stopped, on_signals

        summaries = []
        try:
            with on_signals():  # SIGTERM / SIGINT: trials in flight go back to the study
                for combo in combos(arguments, self.params, self.arms):
                    cfg = self.hydra_context.config_loader.load_sweep_config(self.config, combo)
                    summaries.append(run_study(self.runner, cfg, " ".join(combo)))
        except Stopped as e:
            print(
                f"steerlab: {e}: {e.given_back} trial(s) in flight given back to the study; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            sys.exit(e.code)
        from steerlab.errors import InfraError

        errors = [s.error for s in summaries if s.error]
        infra = [e for e in errors if isinstance(e, InfraError)]
        refused = not infra and errors and len(errors) == len(summaries)
        for s in summaries if not refused else []:  # all refused: the one line below says it
            if s.text:  # a study that stopped has none: the error line below says it once
                print(s.text)
        if infra or (errors and len(errors) == len(summaries)):  # one line, exit 2
            print(f"steerlab: error: {(infra or errors)[0]}", file=sys.stderr)
            sys.exit(2)
        return summaries
