"""`python -m steerlab trait=evil position=10` runs one job; add `-m` to search (see README).

Thin entry point: Hydra composes the package's `conf/` (`src/steerlab/conf`, so an installed
steerlab finds it too); a single job runs in `steerlab.runner.run_single`, a search in the
steerlab sweeper (`hydra_plugins.steerlab_sweeper`), which owns its own runner.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from steerlab.config import register
from steerlab.data import CONF_DIR

CONF = str(CONF_DIR)  # package data: works from a checkout and from a plain `pip install`
register()


@hydra.main(config_path=CONF, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    from steerlab.config import redact
    from steerlab.errors import InfraError
    from steerlab.runner import run_single

    try:
        return run_single(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ValueError, InfraError, OSError) as e:  # input, service, disk: one line, exit 2
        print(f"steerlab: error: {redact(str(e))}", file=sys.stderr)
        sys.exit(2)


def resolved_cfg_job(argv: list[str]) -> list[str]:
    """`--cfg job` prints the values a run uses (`position=5` shows as `extraction.position:
    response[:5]`), as with `--resolve`; Hydra alone would print the interpolations."""
    if "--resolve" in argv:
        return argv
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    if any(a in ("--cfg=job", "-cjob") or (a in ("--cfg", "-c") and b == "job") for a, b in pairs):
        return [*argv, "--resolve"]
    return argv


def cli() -> None:
    """The `steerlab` command, as `python -m steerlab`: an unknown key is refused before Hydra
    (whose message names no valid key), and `--cfg job` shows resolved values."""
    from steerlab.config import unknown_key

    if why := unknown_key(sys.argv[1:]):
        print(f"steerlab: error: {why}", file=sys.stderr)
        sys.exit(2)
    sys.argv = resolved_cfg_job(sys.argv)
    main()


if __name__ == "__main__":
    cli()
