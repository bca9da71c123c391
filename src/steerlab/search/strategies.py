"""Trial proposal strategies. Each asks a batch of Optuna trials (so every strategy shares one
sqlite study: resumable, inspectable), turns a trial into a typed steering config, and tells the
study a trial's scores.

- Optuna samplers (tpe, gp, nsga2, cmaes, grid) over layer (int) x coef (float, log).
- `adaptive`: the reference's coefficient search, every layer in parallel.
- `cmaes_ensemble`: pycma over one weight per layer of `steering.layers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from steerlab import records
from steerlab.config import SteeringConfig

INFEASIBLE_PENALTY = records.INVALID_OFFSET
# the trial system attr Optuna's `constraints_func` path writes and `trial.constraints` reads; the
# per-name keys of `Trial.set_constraint` ("constraints:<name>") are invisible to optuna-dashboard
# 0.21, which reads only this list (feasible/infeasible colours of its plots and tables)
CONSTRAINTS_ATTR = "constraints"
METRICS = ("trait", "coherence")  # the study's objective names: [trait] or [trait, coherence]
# GP models the objective as a smooth function of layer x coef and the constraint with a model of
# its own: a cliff at the coherence threshold misleads it (bench/gp_penalty_bench.py, 6 seeds x
# 18 trials: the best valid trait found fell from 57.9 to 38.3 on average), so it is
# told the trait score itself, and optuna-dashboard, which ignores constraints, may call an
# invalid trial of a gp study its best
RAW_VALUE_SAMPLERS = ("gp",)


def objective_value(trait: float, coherence: float, threshold: float) -> float:
    """The single objective Optuna stores (`records.objective`; the trait score for
    `RAW_VALUE_SAMPLERS`): the trait score of a valid trial, and below every valid trial's
    value otherwise, so that whatever ranks trials by value alone (optuna-dashboard's best
    trial, `storage.get_best_trial`, CMA-ES) ranks every valid trial first. The trait score
    itself is the user attr `trait`."""
    return records.objective(trait, coherence, threshold)


def make_sampler(name: str, seed: int, space: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """TPE, GP and NSGA-II read each trial's coherence constraint (`min - coherence`)."""
    s = optuna.samplers
    if name == "tpe":
        return s.TPESampler(seed=seed, constant_liar=True)  # workers in flight: no repeats
    if name == "gp":
        return s.GPSampler(seed=seed)
    if name == "nsga2":
        return s.NSGAIISampler(seed=seed)
    if name == "cmaes":
        return s.CmaEsSampler(seed=seed)
    if name == "grid":
        return s.GridSampler(space, seed=seed)
    return s.RandomSampler(seed=seed)  # adaptive / cmaes_ensemble enqueue their own params


def middle(search: Any) -> float:
    """The geometric middle of `search.coef_range`: where searches without a layer norm start."""
    lo, hi = search.coef_range
    return math.sqrt(lo * hi)


class Strategy:
    """Optuna-sampled layer x coef; subclasses override `propose`, `steering` and `fitness`."""

    def __init__(
        self,
        search: Any,
        layers: list[int],
        ens_layers: list[int] | None = None,
        scale_only: bool = False,
    ):
        """`scale_only`: the layers are fixed (a `steering.mix`); search coef alone."""
        self.search = search
        self.layers = layers
        lo, hi = search.coef_range
        self.dists = {
            "layer": IntDistribution(min(layers), max(layers)),
            "coef": FloatDistribution(lo, hi, log=True),
        }
        if scale_only:
            del self.dists["layer"]

    def searched(self) -> list[str]:
        """The `steering.*` fields a trial sets: per trial, never one value for the study."""
        return [k for k in ("layer", "coef") if k in self.dists]

    def grid_space(self) -> dict[str, list[Any]]:
        lo, hi = self.search.coef_range
        k = int(self.search.options.get("coef_points", 4))
        coefs = [lo * (hi / lo) ** (i / max(k - 1, 1)) for i in range(k)]
        space = {"layer": list(self.layers), "coef": [round(c, 6) for c in coefs]}
        return {k: v for k, v in space.items() if k in self.dists}

    def propose(self, study: optuna.Study, n: int) -> list[optuna.trial.Trial]:
        return [study.ask(self.dists) for _ in range(n)]

    def steering(self, trial: optuna.trial.BaseTrial, base: SteeringConfig) -> SteeringConfig:
        """The configuration a trial evaluates: `base` with the trial's layer and coef."""
        p = trial.params
        return replace(base, layer=int(p.get("layer", base.layer)), coef=float(p["coef"]))

    def fitness(self, trait: float, coherence: float, threshold: float) -> float | None:
        """What a strategy that keeps its own state (pycma) ranks by; None: Optuna's value."""
        return None

    def tell(
        self,
        study: optuna.Study,
        trial: optuna.trial.Trial,
        scores: Mapping[str, float],
        threshold: float,
        multi: bool = False,
    ) -> None:
        """Record a trial's scores and the coherence constraint (`threshold - coherence <= 0`
        is feasible), then tell the study its objective value(s): [trait, coherence] when
        multi-objective, else `objective_value` (an invalid trial ranks below every valid one;
        the trait score itself for `RAW_VALUE_SAMPLERS`)."""
        trait, coherence = scores["trait"], scores["coherence"]
        feasible = coherence >= threshold
        set_constraint(trial, threshold - coherence)
        attrs = {"feasible": feasible, **scores}
        if (fit := self.fitness(trait, coherence, threshold)) is not None:
            attrs["fitness"] = fit
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if multi:
            values = [trait, coherence]
        elif self.search.sampler in RAW_VALUE_SAMPLERS:
            values = [trait]
        else:
            values = [objective_value(trait, coherence, threshold)]
        try:
            study.tell(trial, values)
        except RuntimeError as e:  # GridSampler's last point calls `study.stop()`, which only
            if "Study.stop" not in str(e):  # `optimize` allows; the trial is stored by then
                raise


def set_constraint(trial: optuna.trial.Trial, value: float) -> None:
    """Store the coherence constraint as Optuna's constraint list (one value), which both Optuna
    (`trial.constraints`: TPE, GP, NSGA-II, `study.best_trial`) and optuna-dashboard read."""
    storage = trial.storage
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_system_attr(trial_id, CONSTRAINTS_ATTR, [float(value)])


def _done(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def _taken(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials in flight or queued (by any worker): not to be proposed again."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


class Adaptive(Strategy):
    """Per layer: start at start x base; x up when coherence held, else x down; momentum; N steps.

    The state is replayed from the study's completed trials, so a resumed search continues.
    """

    def state(self, study: optuna.Study) -> dict[int, tuple[float, float, int]]:
        o = self.search.options
        base = middle(self.search)
        state = {la: (float(o.get("start", 0.7)) * base, 0.0, 0) for la in self.layers}
        for t in sorted(_done(study), key=lambda t: t.number):
            la = t.params["layer"]
            if la not in state:
                continue
            coef, vel, step = state[la]
            ok = t.user_attrs.get("feasible", False)
            factor = float(o.get("up", 1.3)) if ok else float(o.get("down", 0.85))
            vel = float(o.get("momentum", 0.1)) * vel + (factor - 1.0)
            state[la] = (coef * (1.0 + vel), vel, step + 1)
        return state

    def propose(self, study: optuna.Study, n: int) -> list[optuna.trial.Trial]:
        steps = int(self.search.options.get("steps", 5))
        lo, hi = self.search.coef_range
        state = self.state(study)
        busy = {t.params.get("layer") for t in _taken(study)}
        todo = [la for la in self.layers if state[la][2] < steps and la not in busy][:n]
        for la in todo:
            study.enqueue_trial({"layer": la, "coef": min(max(state[la][0], lo), hi)})
        return [study.ask(self.dists) for _ in todo]


class CmaEnsemble(Strategy):
    """pycma over per-layer weights; x0 = base coef, bounds [0, upper x base], sigma0 x base.

    Fitness (minimised) is -trait for coherent candidates and a penalty beyond every coherent
    value otherwise, growing with the coherence shortfall. Generations are replayed from the
    study on resume (the seed makes `ask` reproducible).
    """

    def __init__(self, search: Any, layers: list[int], ens_layers: list[int] | None = None):
        super().__init__(search, layers)
        if not ens_layers:
            raise ValueError("search=cmaes_ensemble needs steering.layers=[...] (two or more)")
        self.ens_layers = list(ens_layers)
        self.base = float(search.options.get("base", middle(search)))
        upper = float(search.options.get("upper", 4.0)) * self.base
        self.dists = {f"w{la}": FloatDistribution(0.0, upper) for la in self.ens_layers}

    def searched(self) -> list[str]:
        return ["weights"]

    def _es(self, study: optuna.Study) -> Any:
        import cma

        o = self.search.options
        es = cma.CMAEvolutionStrategy(
            [self.base] * len(self.ens_layers),
            float(o.get("sigma0", 0.3)) * self.base,
            {
                "bounds": [0.0, float(o.get("upper", 4.0)) * self.base],
                "popsize": self.search.batch_size,
                "seed": self.search.seed + 1,
                "verbose": -9,
            },
        )
        gens: dict[int, list[optuna.trial.FrozenTrial]] = {}
        for t in _done(study):
            gens.setdefault(t.user_attrs.get("generation", -1), []).append(t)
        g = 0
        while len(gens.get(g, [])) == es.popsize:
            es.ask()
            trials = sorted(gens[g], key=lambda t: t.user_attrs["member"])
            es.tell(
                [[t.params[f"w{la}"] for la in self.ens_layers] for t in trials],
                [t.user_attrs["fitness"] for t in trials],
            )
            g += 1
        self.generation = g
        return es

    def propose(self, study: optuna.Study, n: int) -> list[optuna.trial.Trial]:
        es = self._es(study)
        xs = es.ask()
        have = {
            t.user_attrs.get("member")
            for t in [*_done(study), *_taken(study)]
            if t.user_attrs.get("generation") == self.generation
        }
        out = []
        for m, x in enumerate(xs):
            if m in have:
                continue
            study.enqueue_trial(
                {f"w{la}": float(v) for la, v in zip(self.ens_layers, x, strict=True)},
                user_attrs={"generation": self.generation, "member": m},
            )
            out.append(study.ask(self.dists))
        return out

    def steering(self, trial: optuna.trial.BaseTrial, base: SteeringConfig) -> SteeringConfig:
        ws = [float(trial.params[f"w{la}"]) for la in self.ens_layers]
        return replace(base, layers=list(self.ens_layers), weights=ws)

    def fitness(self, trait: float, coherence: float, threshold: float) -> float:
        return -trait if coherence >= threshold else 1000.0 + (threshold - coherence)


def make_strategy(
    search: Any, layers: list[int], ens_layers: list[int] | None, scale_only: bool = False
) -> Strategy:
    if scale_only:
        if search.sampler in ("adaptive", "cmaes_ensemble"):
            raise ValueError(
                f"search.sampler={search.sampler} searches layers; a steering.mix fixes them "
                "(use tpe, gp, nsga2, cmaes or grid)"
            )
        return Strategy(search, layers, scale_only=True)
    cls = {"adaptive": Adaptive, "cmaes_ensemble": CmaEnsemble}.get(search.sampler, Strategy)
    return cls(search, layers, ens_layers)
