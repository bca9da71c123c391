"""Hydra sweeper driving an Optuna study by ask/tell, K trials per batched generate.

Each combination of the command's sweep overrides (e.g. `trait=evil,sycophancy`) gets its own
study in `<sweep dir>/optuna.db`; re-running the same command resumes it. Each trial is a real
Hydra job (its own `<sweep dir>/<trial number>/`) and an MLflow child run of the study's parent
run; the parent records the best valid trial and the Pareto frontier.
"""

import itertools
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger("steerlab.sweeper")


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


def _combos(arguments: list[str], params: dict[str, str], arms: list[str]) -> list[list[str]]:
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


SETTINGS = "settings.json"  # what a study's trials were evaluated under


def _check_settings(sweep_dir: Path, now: dict[str, str]) -> None:
    """Refuse to resume a study under other evaluation settings: its trials would not compare."""
    path = sweep_dir / SETTINGS
    if not path.is_file():
        return
    then = json.loads(path.read_text())
    diff = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {then.get(k)} -> {now.get(k)}" for k in diff[:4])
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise ValueError(
            f"the study in {sweep_dir} was run with other settings ({shown}{more}); run it "
            f"with its settings ({path}), or move the folder away to start a new study"
        )


class SteerlabSweeper(Sweeper):
    def __init__(self, params: dict[str, str] | None = None, arms: list[str] | None = None):
        self.params = dict(params or {})
        self.arms = list(arms or [])

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def sweep(self, arguments: list[str]) -> list[dict[str, Any]]:
        combos = _combos(arguments, self.params, self.arms)
        summaries = [self._study(combo) for combo in combos]
        for s in summaries:
            print(s["text"])
        errors = [s["error"] for s in summaries if s.get("error")]
        if errors and len(errors) == len(summaries):
            raise errors[0]  # nothing ran: fail with the reason
        return summaries

    def _compose(self, overrides: list[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def _study(self, combo: list[str]) -> dict[str, Any]:
        import optuna
        from optuna.trial import TrialState

        from steerlab import app
        from steerlab.models import shape_of
        from steerlab.search.strategies import make_sampler, make_strategy

        cfg = self._compose(combo)
        app.validate(cfg)
        try:  # extraction, vetting and baseline once, before any trial is asked
            if cfg.combine.strategy and not cfg.combine.instruction_run:
                from steerlab.combinations import resolve

                combo = [*combo, *resolve(cfg)]  # trials inherit the placed vectors
                cfg = self._compose(combo)
                app.validate(cfg)
            _check_settings(Path(str(cfg.hydra.sweep.dir)).resolve(), app.study_settings(cfg))
            app.prepare(cfg)
        except (ValueError, FileNotFoundError) as e:
            log.error("study %s skipped: %s", " ".join(combo), e)
            return {
                "best": None,
                "pareto": [],
                "error": e,
                "text": f"\n== skipped ({' '.join(combo)}): {e}",
            }
        search = cfg.search
        sweep_dir = Path(str(cfg.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # a launcher per study: built on the master config it would also create that config's
        # (unused) sweep folder
        self.launcher = Plugins.instance().instantiate_launcher(
            config=cfg, hydra_context=self.hydra_context, task_function=self.task_function
        )
        n_layers, _ = shape_of(cfg.model.steering)
        lo, hi = search.layers if search.layers else (0, n_layers - 1)
        strategy = make_strategy(
            search, list(range(lo, hi + 1)), cfg.steering.layers, scale_only=bool(cfg.steering.mix)
        )
        multi = bool(search.multi_objective) and search.sampler not in (
            "adaptive",
            "cmaes_ensemble",
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
        study = optuna.create_study(
            study_name="steerlab",
            storage=storage,
            load_if_exists=True,
            sampler=make_sampler(search.sampler, search.seed, strategy.grid_space()),
            directions=["maximize", "maximize"] if multi else ["maximize"],
        )
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # in flight when a run was killed: attributes first, a finished trial is read-only
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
        settings = sweep_dir / SETTINGS
        if not settings.is_file():
            settings.write_text(json.dumps(app.study_settings(cfg), indent=1))
        if not study.user_attrs.get("enqueued"):
            for params in search.enqueue:
                study.enqueue_trial(dict(params))
            study.set_user_attr("enqueued", True)
        parent = self._parent_run(cfg, study, sweep_dir, storage)
        grid_size = (
            math.prod(len(v) for v in strategy.grid_space().values())
            if search.sampler == "grid"
            else None
        )
        total = min(search.n_trials, grid_size or search.n_trials)
        while (left := total - self._counted(study)) > 0:
            trials = strategy.propose(study, min(search.batch_size, left))
            if not trials:
                break
            self._run_batch(cfg, combo, study, strategy, trials, parent, multi)
        return self._finish(cfg, study, strategy, parent, sweep_dir, storage, multi)

    @staticmethod
    def _counted(study: Any) -> int:
        from optuna.trial import TrialState

        return sum(
            t.state == TrialState.COMPLETE
            or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
            for t in study.get_trials(deepcopy=False)
        )

    def _parent_run(self, cfg: DictConfig, study: Any, sweep_dir: Path, storage: str) -> str | None:
        if not cfg.tracking.enabled:
            return None
        from steerlab import app, tracking

        if run_id := study.user_attrs.get("mlflow_parent_run_id"):
            return str(run_id)
        with tracking.run(
            app.root_of(cfg),
            app.experiment_name(cfg),
            f"sweep-{cfg.trait.name}-{sweep_dir.parent.name}-{sweep_dir.name}",
            app.run_params(cfg),
            tags={
                "steerlab.kind": "sweep",
                **({"steerlab.strategy": cfg.combine.strategy} if cfg.combine.strategy else {}),
                "steerlab.sweep_dir": str(sweep_dir),
                "optuna.storage": storage,
                "optuna.study": study.study_name,
            },
        ) as mlflow:
            run_id = mlflow.active_run().info.run_id
        study.set_user_attr("mlflow_parent_run_id", run_id)
        return run_id

    def _run_batch(
        self,
        cfg: DictConfig,
        combo: list[str],
        study: Any,
        strategy: Any,
        trials: list[Any],
        parent: str | None,
        multi: bool,
    ) -> None:
        from optuna.trial import TrialState

        from steerlab import app

        jobs = []
        for t in trials:
            ov = [*combo, *strategy.overrides(t), f"tracking.trial={t.number}"]
            if parent:
                ov.append(f"tracking.parent_run_id={parent}")
            jobs.append(ov)
        try:
            app.prefetch([self._compose(ov) for ov in jobs])  # one batched generate for all K
        except Exception as e:  # noqa: BLE001 - fall back to per-job evaluation, which reports
            log.warning("batched evaluation failed (%s); running trials one by one", e)
        for t, ov in zip(trials, jobs, strict=True):  # job dir N/ = trial number N
            ret = self.launcher.launch([ov], initial_job_idx=t.number)[0]
            if ret.status != JobStatus.COMPLETED:
                err = repr(ret._return_value)
                log.warning("trial %d failed: %s", t.number, err)
                t.set_user_attr("error", err[:2000])
                study.tell(t, state=TrialState.FAIL)
                continue
            m = ret.return_value
            feasible = m["coherence"] >= cfg.search.coherence_min
            t.set_constraint("coherence", cfg.search.coherence_min - m["coherence"])
            for k, v in {
                "feasible": feasible,
                "trait": m["trait"],
                "coherence": m["coherence"],
                "delta": m["delta"],
            }.items():
                t.set_user_attr(k, v)
            if hasattr(strategy, "fitness"):
                t.set_user_attr(
                    "fitness",
                    strategy.fitness(m["trait"], m["coherence"], cfg.search.coherence_min),
                )
            study.tell(t, strategy.values(m["trait"], m["coherence"], feasible, multi))

    def _finish(
        self,
        cfg: DictConfig,
        study: Any,
        strategy: Any,
        parent: str | None,
        sweep_dir: Path,
        storage: str,
        multi: bool,
    ) -> dict[str, Any]:
        from optuna.trial import TrialState

        from steerlab import app
        from steerlab.search.pareto import frontier, plot_frontier, plot_heatmap

        rows = []
        mix = cfg.steering.mix
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            weights = {k: round(v, 4) for k, v in t.params.items() if k.startswith("w")}
            if mix:  # each term's effective coef; a layer's second term is "w<layer>#2"
                seen: Counter[int] = Counter()
                weights = {}
                for m in mix:
                    seen[m.layer] += 1
                    n = seen[m.layer]
                    weights[f"w{m.layer}" + (f"#{n}" if n > 1 else "")] = round(
                        m.weight * t.params["coef"], 4
                    )
            rows.append(
                {
                    "trial": t.number,
                    "layer": t.params.get("layer", mix[0].layer if mix else cfg.steering.layer),
                    "coef": t.params.get("coef", float("nan")),
                    "weights": json.dumps(weights),
                    "trait": t.user_attrs["trait"],
                    "coherence": t.user_attrs["coherence"],
                    "delta": t.user_attrs["delta"],
                    "feasible": t.user_attrs["feasible"],
                }
            )
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        front = frontier([(r["trait"], r["coherence"]) for r in rows])
        valid = [r for r in rows if r["feasible"]]
        best = max(valid, key=lambda r: r["trait"]) if valid else None
        threshold = cfg.search.coherence_min
        hi85 = [r for r in rows if r["coherence"] >= 85]
        best85 = max(hi85, key=lambda r: r["trait"]) if hi85 else None
        (sweep_dir / "trials.json").write_text(json.dumps(rows, indent=1))
        if best and cfg.search.sampler == "cmaes_ensemble":
            self._save_ensemble(cfg, best)
        if parent:
            self._log_parent(
                cfg,
                parent,
                rows,
                front,
                best,
                best85,
                failed,
                sweep_dir,
                storage,
                plot_frontier,
                plot_heatmap,
            )
        ensemble = cfg.search.sampler == "cmaes_ensemble"
        study_of = cfg.combine.strategy or (
            f"{cfg.extraction.source} {app.position_of(cfg)} {cfg.extraction.method}"
        )
        lines = [
            f"\n== {cfg.trait.name} [{study_of} {cfg.steering.component}, {cfg.search.sampler}]: "
            f"{len(rows)} trials done, {failed} failed; study {storage}"
        ]
        lines.append(f"{'trial':>5} {'layer':>5} {'coef':>8} {'trait':>6} {'coh':>6} {'delta':>6}")
        for r in sorted(rows, key=lambda r: (not r["feasible"], -r["trait"]))[:8]:
            mark = "" if r["feasible"] else " x"
            lines.append(
                f"{r['trial']:>5} {r['layer']:>5} {r['coef']:>8.3g} {r['trait']:>6.1f} "
                f"{r['coherence']:>6.1f} {r['delta']:>+6.1f}{mark}"
            )
        if best:
            what = (
                f"weights {best['weights']}"
                if ensemble or cfg.steering.mix
                else f"layer {best['layer']} coef {best['coef']:.3g}"
            )
            lines.append(
                f"best valid: {what} -> delta {best['delta']:+.1f} (trait "
                f"{best['trait']:.1f}, coherence {best['coherence']:.1f})"
            )
        else:
            lines.append(f"no trial reached mean coherence >= {threshold:g}")
        lines.append(
            f"MLflow UI: make ui  (then open http://127.0.0.1:5000, experiment "
            f"{app.experiment_name(cfg)!r})"
        )
        return {"best": best, "pareto": [rows[i] for i in front], "text": "\n".join(lines)}

    @staticmethod
    def _save_ensemble(cfg: DictConfig, best: dict) -> None:
        from steerlab import app
        from steerlab.ensembles import Ensemble, save_ensemble
        from steerlab.report import key_name

        setup = app.prepare(cfg)
        ws = json.loads(best["weights"])
        layers = list(cfg.steering.layers)
        ens = Ensemble(
            str(setup.vector_path),
            cfg.steering.component,
            layers,
            [ws[f"w{la}"] for la in layers],
            cfg.steering.coef_units,
            best["trait"],
            best["coherence"],
        )
        vec = key_name(
            cfg.extraction.source, app.position_of(cfg), cfg.extraction.method, "residual"
        )  # e.g. evil-nat10_md-attn_contribution-L11-L13: methods and sources never collide
        name = f"{cfg.trait.name}-{vec}-{cfg.steering.component}-" + "-".join(
            f"L{la}" for la in layers
        )
        path = save_ensemble(ens, name, app.root_of(cfg))
        log.info("saved ensemble %s (use steering.ensemble=%s)", path, name)
        print(f"saved ensemble: {path}  ->  python -m steerlab steering.ensemble={name} ...")

    @staticmethod
    def _log_parent(
        cfg: DictConfig,
        parent: str,
        rows: list[dict],
        front: list[int],
        best: dict | None,
        best85: dict | None,
        failed: int,
        sweep_dir: Path,
        storage: str,
        plot_frontier: Any,
        plot_heatmap: Any,
    ) -> None:
        from steerlab import app, tracking

        root = app.root_of(cfg)
        with tracking.run(root, app.experiment_name(cfg), "", run_id=parent) as mlflow:
            cols = ["trial", "layer", "coef", "weights", "trait", "coherence", "delta", "feasible"]
            mlflow.log_table({c: [r[c] for r in rows] for c in cols}, "trials.json")
            mlflow.log_table({c: [rows[i][c] for i in front] for c in cols}, "pareto.json")
            mlflow.log_metrics(
                {"n_trials": len(rows), "n_failed": failed, "pareto_size": len(front)}
            )
            if best:
                mlflow.log_metrics(
                    {
                        f"best_{k}": float(best[k])
                        for k in ("trait", "coherence", "delta", "layer", "coef", "trial")
                    }
                )
            if best85:
                mlflow.log_metric("best_delta_at_coherence_85", float(best85["delta"]))
            mlflow.set_tags({"optuna.storage": storage, "steerlab.sweep_dir": str(sweep_dir)})
            setup = app.prepare(cfg)
            if ex := setup.extraction_rows:  # none when steering a given vector file
                mlflow.log_table({k: [r[k] for r in ex] for k in ex[0]}, "extraction.json")
            mlflow.log_dict(app.asdict_meta(setup), "vector.json")
            mlflow.log_table(
                {k: [r[k] for r in setup.base.rows] for k in setup.base.rows[0]}, "baseline.json"
            )
            mlflow.log_metrics(
                {"baseline_trait": setup.base.trait, "baseline_coherence": setup.base.coherence}
            )
            if rows:
                mlflow.log_artifact(
                    str(
                        plot_frontier(
                            rows, front, cfg.search.coherence_min, sweep_dir / "pareto.png"
                        )
                    )
                )
                mlflow.log_artifact(str(plot_heatmap(rows, sweep_dir / "heatmap.png")))
