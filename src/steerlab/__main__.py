"""`python -m steerlab trait=evil position=10` runs one job; add `-m` to search (see README).

Thin entry point: Hydra composes `conf/`, the job lives in `steerlab.app`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from steerlab.config import register

CONF = str(Path(__file__).resolve().parents[2] / "conf")
register()


@hydra.main(config_path=CONF, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float | None]:
    from steerlab import app

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    if hc.mode.name == "MULTIRUN":
        return app.run_job(cfg, job_dir)  # the sweeper records failures and carries on
    try:
        if cfg.combine.strategy:  # a strategy places a whole study, not one configuration
            app.validate(cfg)  # an unknown strategy name is reported as such
            raise app.ConfigError(
                f"combine.strategy={cfg.combine.strategy} places a study: run it with -m "
                "(or steer a saved file with steering.vector=...)"
            )
        metrics = app.run_job(cfg, job_dir)
    except (ValueError, FileNotFoundError) as e:  # user-facing errors: one line, no traceback
        print(f"steerlab: error: {e}", file=sys.stderr)
        sys.exit(2)
    app.print_summary(cfg, metrics, job_dir)
    return metrics


if __name__ == "__main__":
    main()
