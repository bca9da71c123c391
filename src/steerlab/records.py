"""The results model: what a trial and a sweep are, and how they are written and read back.

One module owns the trial table's columns, the ensemble weight keys (`w<layer>`, `w<layer>#2` for
a second term at the same layer), the validity and best-trial rules, the Pareto note's coherence,
the short names of vector keys and the params a report groups by. The sweeper writes with it;
the report, the combination strategies and the tests read with it.

A trial counts ("valid") only when its mean coherence is at least its sweep's
`search.coherence_min`; the best trial is the valid one with the largest delta over the baseline.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steerlab import stats
from steerlab.stats import SCORES, Confirmation, Interval, ci_columns, finite, intervals_of

KIND = "steerlab.kind"  # tag: sweep | trial | report
STRATEGY = "steerlab.strategy"  # tag of a combination-strategy sweep
TRIAL_TAG = "steerlab.trial"
VECTOR_TAG = "steerlab.vector"
PRUNED = "pruned"  # trial metric (1.0) and user attr (why): stopped after part of its questions
PRUNED_TAG = "steerlab.pruned"  # tag of a pruned trial's run: partial, never a result
SOURCES = ("instruction", "natural")
METHODS = ("mean_diff", "probe")
HIGH_COHERENCE = 85.0  # the Pareto note's threshold (metric best_delta_at_coherence_85)
HIGH_COHERENCE_METRIC = f"best_delta_at_coherence_{HIGH_COHERENCE:g}"
DEFAULT_COHERENCE_MIN = 70.0
CI_COLUMNS = tuple(f"{k}_{end}" for k in SCORES for end in ("lo", "hi"))  # 95% CI bounds
COLUMNS = ("trial", "layer", "coef", "weights", *SCORES, "valid", *CI_COLUMNS)
ENSEMBLE_SAMPLER = "cmaes_ensemble"


# ---------------------------------------------------------------------------------------------
# rules


def is_valid(coherence: float, coherence_min: float) -> bool:
    return coherence >= coherence_min


INVALID_OFFSET = 100.0  # trait scores are 0-100: an invalid trial's objective is below any valid


def objective(trait: float, coherence: float, coherence_min: float) -> float:
    """One number that ranks trials as the best-trial rule does: the trait score of a valid
    trial; for an invalid one trait - 100 - its coherence shortfall, below every valid trial.
    Optuna's single objective value, and the `objective` metric of a trial's MLflow run."""
    if is_valid(coherence, coherence_min):
        return trait
    return trait - INVALID_OFFSET - (coherence_min - coherence)


def coherence_min(params: Mapping[str, Any]) -> float:
    """A sweep's `search.coherence_min` param (0 counts); the default when absent or unreadable."""
    try:
        return float(params.get("search.coherence_min"))
    except (TypeError, ValueError):
        return DEFAULT_COHERENCE_MIN


def weight_keys(layers: Sequence[int]) -> list[str]:
    """Table keys of per-layer weights: `w14`, and `w14#2` for a second term at layer 14."""
    seen: Counter[int] = Counter()
    keys = []
    for la in layers:
        seen[la] += 1
        keys.append(f"w{la}" + (f"#{seen[la]}" if seen[la] > 1 else ""))
    return keys


def parse_weights(raw: Any) -> tuple[tuple[int, float], ...]:
    """`{"w11": 3.2, "w13": 12.1}` (or its JSON text) -> ((11, 3.2), (13, 12.1))."""
    if isinstance(raw, str):
        raw = literal(raw)
    if not isinstance(raw, dict):
        return ()
    out = []
    for k, v in raw.items():
        m = re.fullmatch(r"w(\d+)(?:#\d+)?", str(k))
        if m and finite(v) is not None:
            out.append((int(m.group(1)), float(v)))
    return tuple(sorted(out))


def fmt_coef(x: float | None) -> str:
    """Coefficients are relative units: 3 significant digits (6.6, 0.15, 13.2)."""
    return "—" if x is None else f"{x:.3g}"


def layer_label(layer: int | None) -> str:
    return "—" if layer is None else f"L{layer}"


def key_name(source: str, position: str, method: str, component: str) -> str:
    """`inst_md`, `nat10_pr`, `nat5_md_attn`: the short names of a vector key."""
    src = {"instruction": "inst", "natural": "nat"}.get(source, source[:4])
    m = re.fullmatch(r"response\[:(\d*)\]", position)
    pos = m.group(1) if m else re.sub(r"\W+", "", position)
    meth = {"mean_diff": "md", "probe": "pr"}.get(method, method)
    comp = {"residual": "", "attn_contribution": "_attn", "mlp_contribution": "_mlp"}.get(
        component, f"_{component}"
    )
    return f"{src}{pos}_{meth}{comp}"


def position_order(position: str) -> tuple:
    m = re.fullmatch(r"response\[:(\d*)\]", position)
    if m:
        return (0, int(m.group(1))) if m.group(1) else (1, 0)
    return (2, position)


def order(value: str, known: Sequence[str]) -> tuple:
    return (known.index(value), "") if value in known else (len(known), value)


def as_int(value: Any) -> int | None:
    x = finite(value)
    return None if x is None else int(x)


def literal(text: str | None) -> Any:
    """A param value back as data: MLflow params are `str()` of Python values."""
    if text is None or text in ("None", "null", ""):
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


# ---------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class Trial:
    """One evaluated steering configuration of a sweep."""

    number: int | None
    layer: int | None
    coef: float | None
    weights: tuple[tuple[int, float], ...]  # (layer, coef) of each term of an ensemble; ()
    trait: float
    coherence: float
    delta: float
    valid: bool
    run_id: str | None = None  # the trial's child run, when it was found
    artifact_uri: str | None = None
    vector: str | None = None  # the vector file it steered with
    cis: tuple[Interval | None, ...] = (None, None, None)  # trait, coherence, delta: 95% CIs
    borderline: bool = False  # the coherence CI reaches both sides of coherence_min

    @property
    def trait_ci(self) -> Interval | None:
        return self.cis[0]

    @property
    def coherence_ci(self) -> Interval | None:
        return self.cis[1]

    @property
    def delta_ci(self) -> Interval | None:
        return self.cis[2]

    @classmethod
    def of(
        cls,
        number: int | None,
        layer: int | None,
        coef: float | None,
        weights: Iterable[tuple[int, float]],
        scores: tuple[float, float, float],
        coherence_min: float,
        cis: Mapping[str, Any] | None = None,
        **run: Any,
    ) -> Trial:
        """Valid iff coherence >= coherence_min; an ensemble has weights instead of layer/coef.
        `cis`: `trait_lo`, `trait_hi`, ... (`CI_COLUMNS`), when the per-question scores gave
        them; borderline when the coherence interval straddles coherence_min."""
        weights = tuple(weights)
        trait, coh, delta = scores
        intervals = intervals_of(cis or {})
        return cls(
            number,
            None if weights else layer,
            None if weights else coef,
            weights,
            trait,
            coh,
            delta,
            is_valid(coh, coherence_min),
            **run,
            cis=intervals,
            borderline=stats.straddles(intervals[1], coherence_min),
        )

    def where(self) -> str:
        """`L14, c6.6`, or `L11=3.2, L13=12.1` for an ensemble."""
        if self.weights:
            return ", ".join(f"L{la}={fmt_coef(w)}" for la, w in self.weights)
        if self.coef is None:
            return layer_label(self.layer)
        return f"{layer_label(self.layer)}, c{fmt_coef(self.coef)}"

    def row(self) -> dict[str, Any]:
        """This trial as a row of the trial table (`trials.json`)."""
        keys = weight_keys([la for la, _ in self.weights])
        ws = {k: round(w, 6) for k, (_, w) in zip(keys, self.weights, strict=True)}
        return {
            "trial": self.number,
            "layer": self.layer,
            "coef": self.coef,
            "weights": json.dumps(ws),
            "trait": self.trait,
            "coherence": self.coherence,
            "delta": self.delta,
            "valid": self.valid,
            **ci_columns(self.cis),
        }

    def validity(self) -> str:
        """`yes`, `no`, or `borderline` (valid or not, its coherence CI straddles the line)."""
        if self.borderline:
            return "borderline" + (" (yes)" if self.valid else " (no)")
        return "yes" if self.valid else "no"


def rank(t: Trial) -> tuple:
    return (t.delta, t.coherence, -(t.number if t.number is not None else 0))


def best(trials: Iterable[Trial]) -> Trial | None:
    """The valid trial with the largest delta (ties: higher coherence, then earlier)."""
    valid = [t for t in trials if t.valid]
    return max(valid, key=rank) if valid else None


def best_at(trials: Iterable[Trial], coherence: float = HIGH_COHERENCE) -> Trial | None:
    """The best trial among those whose coherence reaches `coherence` (the Pareto note)."""
    high = [t for t in trials if t.coherence >= coherence]
    return max(high, key=rank) if high else None


def table(trials: Sequence[Trial]) -> dict[str, list[Any]]:
    """Trials as the column dict `mlflow.log_table` stores (and trials.json holds as rows)."""
    rows = [t.row() for t in trials]
    return {c: [r[c] for r in rows] for c in COLUMNS}


def table_rows(data: Any) -> list[dict[str, Any]]:
    """mlflow.log_table JSON ({"columns", "data"}), a dict of columns or a list of records."""
    if isinstance(data, dict) and "columns" in data and "data" in data:
        return [dict(zip(data["columns"], row, strict=False)) for row in data["data"]]
    if isinstance(data, dict):
        cols = list(data)
        n = max((len(v) for v in data.values() if isinstance(v, list)), default=0)
        return [{c: data[c][i] for c in cols} for i in range(n)]
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    return []


def trials_from_rows(
    rows: Iterable[Mapping[str, Any]], coherence_min: float, runs: Mapping[str, Any] | None = None
) -> list[Trial]:
    """Trial-table rows back as Trials; `runs` maps a trial number to its MLflow child run."""
    out = []
    for r in rows:
        trait, coh, delta = (finite(r.get(k)) for k in ("trait", "coherence", "delta"))
        if trait is None or coh is None or delta is None:
            continue
        number = as_int(r.get("trial"))
        kid = (runs or {}).get(str(number))
        out.append(
            Trial.of(
                number,
                as_int(r.get("layer")),
                finite(r.get("coef")),
                parse_weights(r.get("weights")),
                (trait, coh, delta),
                coherence_min,
                r,
                **child_info(kid),
            )
        )
    return out


def child_info(kid: Any) -> dict[str, Any]:
    """Run id, artifact location and vector file of a trial's MLflow child run."""
    if kid is None:
        return {}
    return {
        "run_id": kid.info.run_id,
        "artifact_uri": kid.info.artifact_uri,
        "vector": kid.data.tags.get(VECTOR_TAG),
    }


CONFIRMATION = "confirmation.json"  # a sweep's held-out answers of its best trial
CONFIRMATION_BASELINE = "confirmation_baseline.json"  # the unsteered answers to them


@dataclass
class Sweep:
    """A sweep parent run with its trials (from trials.json, else its child runs)."""

    run_id: str
    experiment: str
    name: str
    artifact_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    trials: list[Trial]
    group: str = ""  # the trait label the report groups by
    confirmation: Confirmation | None = None  # its best trial on held-out answers

    def param(self, resolved: str, fallback: str, default: str = "?") -> str:
        return self.params.get(f"resolved.{resolved}") or self.params.get(fallback, default)

    @property
    def trait(self) -> str:
        return self.params.get("trait.name", "?")

    @property
    def model(self) -> str:
        return self.params.get("model.name", "?")

    @property
    def source(self) -> str:
        return self.param("source", "extraction.source")

    @property
    def position(self) -> str:
        return self.param("position", "extraction.position")

    @property
    def method(self) -> str:
        return self.param("method", "extraction.method")

    @property
    def component(self) -> str:
        return self.param("component", "steering.component", "residual")

    @property
    def sampler(self) -> str:
        return self.params.get("search.sampler", "")

    @property
    def strategy(self) -> str | None:
        return self.tags.get(STRATEGY)

    @property
    def coherence_min(self) -> float:
        return coherence_min(self.params)

    @property
    def is_ensemble(self) -> bool:
        return self.sampler == ENSEMBLE_SAMPLER

    @property
    def is_comparison(self) -> bool:
        """Combination-strategy and ensemble sweeps: compared with, not grouped into, keys."""
        return bool(self.strategy) or self.is_ensemble

    @property
    def baseline(self) -> float | None:
        return finite(self.metrics.get("baseline_trait"))

    @property
    def delta85(self) -> float | None:
        got = finite(self.metrics.get(HIGH_COHERENCE_METRIC))
        if got is not None:
            return got
        t = best_at(self.trials)
        return t.delta if t else None

    def best(self) -> Trial | None:
        return best(self.trials)

    def confirmed(self, trial: Trial | None = None) -> Confirmation | None:
        """The confirmation of `trial` (default: the best), when this sweep has one for it."""
        t = trial or self.best()
        c = self.confirmation
        return c if c is not None and t is not None and c.trial == t.number else None

    def layers(self) -> list[int]:
        """The layers this sweep steers: steering.layers when set, else its best layer."""
        got = literal(self.params.get("steering.layers"))
        if isinstance(got, list) and got:
            return [int(x) for x in got]
        mix = literal(self.params.get("steering.mix"))
        if isinstance(mix, list) and mix:
            return [int(m["layer"]) for m in mix if isinstance(m, dict) and "layer" in m]
        top = self.best()
        if top is not None and top.weights:
            return [la for la, _ in top.weights]
        if top is not None and top.layer is not None:
            return [top.layer]
        fixed = literal(self.params.get("search.layer_range", self.params.get("search.layers")))
        if isinstance(fixed, list) and len(fixed) == 2 and fixed[0] == fixed[1]:
            return [int(fixed[0])]
        if self.trials:  # searched, and nothing valid: no layer to name
            return []
        layer = as_int(self.metrics.get("best_layer"))
        if layer is None:
            layer = as_int(self.params.get("steering.layer"))
        return [] if layer is None else [layer]


@dataclass
class Key:
    """All sweeps of one model x trait x source x position x method x component."""

    model: str
    trait: str
    source: str
    position: str
    method: str
    component: str
    sweeps: list[Sweep]
    group: str = ""

    @property
    def name(self) -> str:
        return key_name(self.source, self.position, self.method, self.component)

    def best(self) -> tuple[Trial, Sweep] | None:
        """The best valid trial over this key's sweeps, with its sweep."""
        cands = [(t, s) for s in self.sweeps for t in s.trials if t.valid]
        return max(cands, key=lambda ts: rank(ts[0])) if cands else None

    @property
    def n_valid(self) -> int:
        return sum(t.valid for s in self.sweeps for t in s.trials)

    @property
    def n_evaluated(self) -> int:
        return sum(len(s.trials) for s in self.sweeps)

    def sort_key(self) -> tuple:
        return (
            order(self.source, SOURCES),
            position_order(self.position),
            order(self.method, METHODS),
            self.component != "residual",
            self.component,
        )


def best_of(keys: Iterable[Key]) -> tuple[Key, Trial, Sweep] | None:
    """The best valid trial over several keys, with its key and sweep."""
    cands = [(k, *b) for k in keys if (b := k.best())]
    return max(cands, key=lambda c: rank(c[1])) if cands else None


def label_groups(sweeps: Iterable[Sweep]) -> None:
    """Group label per sweep: the trait, plus the model when several models are present."""
    sweeps = list(sweeps)
    several = len({s.model for s in sweeps}) > 1
    for s in sweeps:
        s.group = f"{s.trait} ({s.model})" if several else s.trait


def group_keys(sweeps: Iterable[Sweep]) -> list[Key]:
    """Per-key view of sweeps (comparison sweeps left out), sorted by group and key."""
    keys: dict[tuple, Key] = {}
    for s in sweeps:
        if s.is_comparison:
            continue
        k = (s.model, s.trait, s.source, s.position, s.method, s.component)
        if k not in keys:
            keys[k] = Key(*k, sweeps=[], group=s.group or s.trait)
        keys[k].sweeps.append(s)
    return sorted(keys.values(), key=lambda k: (k.group, k.sort_key()))
