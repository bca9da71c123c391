"""Markdown report of the sweeps in an MLflow store: `python -m steerlab.report`.

Reads sweep parent runs (tag `steerlab.kind=sweep`) and their trial child runs, and writes
`<out>/report.md` plus PNG figures next to it, then logs that folder as an artifact of a new run
(tag `steerlab.kind=report`) in the main experiment. Every table row names the run (first 8
characters of its id) its numbers came from, and the report names the tracking URI.

The steps are kept apart so each can be tested on its own:
    collect(client, experiment) -> list[Key]     one Key per source x position x method x component
    gather(client, keys, extra) -> Extras        vectors' cosines, steered answers, extraction rows
    render(report) -> str                        the Markdown, no I/O

A trial counts ("valid") only when its mean coherence is at least its sweep's
`search.coherence_min`; every "best" below is the best valid trial by delta over the baseline.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlab.combinations import STRATEGIES

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

KIND = "steerlab.kind"
STRATEGY = "steerlab.strategy"
SOURCES = ("instruction", "natural")
METHODS = ("mean_diff", "probe")
WINDOW = 5.0  # operating range: valid trials whose trait is within this many points of the best
HIGH_COHERENCE = 85  # the Pareto note's threshold (metric best_delta_at_coherence_85)
N_QUESTIONS = 3  # steered answers shown per trait
N_EXTRACTION = 3  # extraction responses shown per trait and source
DEFAULT_COHERENCE_MIN = 70.0
FIGURES = ("cross_trait.png", "positions.png", "cosine.png")


# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Trial:
    """One evaluated steering configuration of a sweep."""

    number: int | None
    layer: int | None
    coef: float | None
    weights: tuple[tuple[int, float], ...]  # (layer, weight) of an ensemble; () for one layer
    trait: float
    coherence: float
    delta: float
    valid: bool
    run_id: str | None = None  # the trial's child run, when it was found
    artifact_uri: str | None = None
    vector: str | None = None  # tag steerlab.vector of the child run

    def where(self) -> str:
        """`L14, c6.6`, or `L11=3.2, L13=12.1` for an ensemble."""
        if self.weights:
            return ", ".join(f"L{la}={fmt_coef(w)}" for la, w in self.weights)
        if self.coef is None:
            return layer_label(self.layer)
        return f"{layer_label(self.layer)}, c{fmt_coef(self.coef)}"


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

    @property
    def trait(self) -> str:
        return self.params.get("trait.name", "?")

    @property
    def model(self) -> str:
        return self.params.get("model.name", "?")

    @property
    def source(self) -> str:
        return self.params.get("resolved.source") or self.params.get("extraction.source", "?")

    @property
    def position(self) -> str:
        return self.params.get("resolved.position") or self.params.get("extraction.position", "?")

    @property
    def method(self) -> str:
        return self.params.get("resolved.method") or self.params.get("extraction.method", "?")

    @property
    def component(self) -> str:
        return self.params.get("resolved.component") or self.params.get(
            "steering.component", "residual"
        )

    @property
    def sampler(self) -> str:
        return self.params.get("search.sampler", "")

    @property
    def strategy(self) -> str | None:
        return self.tags.get(STRATEGY)

    @property
    def coherence_min(self) -> float:
        return _float(self.params.get("search.coherence_min"), DEFAULT_COHERENCE_MIN)

    @property
    def is_ensemble(self) -> bool:
        return self.sampler == "cmaes_ensemble"

    @property
    def baseline(self) -> float | None:
        return _finite(self.metrics.get("baseline_trait"))

    @property
    def delta85(self) -> float | None:
        got = _finite(self.metrics.get(f"best_delta_at_coherence_{HIGH_COHERENCE}"))
        if got is not None:
            return got
        high = [t for t in self.trials if t.coherence >= HIGH_COHERENCE]
        return max(high, key=lambda t: t.trait).delta if high else None

    def best(self) -> Trial | None:
        return _best(self.trials)

    def layers(self) -> list[int]:
        """The layers this sweep steers: steering.layers when set, else its best layer."""
        got = _literal(self.params.get("steering.layers"))
        if isinstance(got, list) and got:
            return [int(x) for x in got]
        mix = _literal(self.params.get("steering.mix"))
        if isinstance(mix, list) and mix:
            return [int(m["layer"]) for m in mix if isinstance(m, dict) and "layer" in m]
        best = self.best()
        if best is not None and best.weights:
            return [la for la, _ in best.weights]
        if best is not None and best.layer is not None:
            return [best.layer]
        fixed = _literal(self.params.get("search.layers"))
        if isinstance(fixed, list) and len(fixed) == 2 and fixed[0] == fixed[1]:
            return [int(fixed[0])]
        if self.trials:  # searched, and nothing valid: no layer to name
            return []
        layer = _finite(self.metrics.get("best_layer"))
        if layer is None:
            layer = _finite(_float(self.params.get("steering.layer"), math.nan))
        return [] if layer is None else [int(layer)]


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
        if not cands:
            return None
        return max(cands, key=lambda ts: _rank(ts[0]))

    @property
    def n_valid(self) -> int:
        return sum(t.valid for s in self.sweeps for t in s.trials)

    @property
    def n_trials(self) -> int:
        return sum(len(s.trials) for s in self.sweeps)

    def sort_key(self) -> tuple:
        return (
            _order(self.source, SOURCES),
            position_order(self.position),
            _order(self.method, METHODS),
            self.component != "residual",
            self.component,
        )


@dataclass
class Cosine:
    """Cosine of the best instruction and best natural vector files of one trait."""

    group: str
    instruction: str  # key names
    natural: str
    layers: tuple[int | None, int | None]  # each source's best layer
    best: float | None  # cosine of the rows at those layers
    per_layer: list[float]  # same-layer cosines, layer 0..
    runs: tuple[str, str]
    note: str | None = None


@dataclass
class Answers:
    """The first questions answered by the best instruction and the best natural trial."""

    group: str
    heads: dict[str, str]  # source -> "inst_md, L14, c6.6"
    runs: dict[str, str]
    rows: list[dict[str, Any]]  # question, then per source {"answer", "trait", "coherence"}
    note: str | None = None


@dataclass
class Extraction:
    """The most trait-rich kept positive extraction responses of one trait and source."""

    group: str
    source: str
    key: str
    run: str
    rows: list[dict[str, Any]]


@dataclass
class Extras:
    cosines: list[Cosine] = field(default_factory=list)
    answers: list[Answers] = field(default_factory=list)
    extraction: list[Extraction] = field(default_factory=list)


@dataclass
class Report:
    uri: str
    experiment: str
    experiments: list[tuple[str, int | None]]  # name, number of sweeps (None: no experiment)
    keys: list[Key]
    extra: list[Sweep]  # combination-strategy, ensemble and other comparison sweeps
    extras: Extras
    figures: dict[str, str] = field(default_factory=dict)  # figure name -> file name
    run_id: str | None = None


# ---------------------------------------------------------------------------------------------
# formatting helpers


def short(run_id: str | None) -> str:
    return f"`{run_id[:8]}`" if run_id else "—"


def fmt_delta(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1f}"


def fmt_score(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def fmt_coef(x: float | None) -> str:
    """Coefficients are relative units: 3 significant digits (6.6, 0.15, 13.2)."""
    return "—" if x is None else f"{x:.3g}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def layer_label(layer: int | None) -> str:
    return "—" if layer is None else f"L{layer}"


def layer_ranges(layers: Iterable[int]) -> str:
    """[12, 13, 14, 15, 17] -> 'L12-15, L17'."""
    xs = sorted(set(layers))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(f"L{xs[i]}" if i == j else f"L{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(parts) or "—"


def key_name(source: str, position: str, method: str, component: str) -> str:
    """`inst_md`, `nat10_pr`, `nat5_md_attn`: the seeds' short names of a vector key."""
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


def cell(text: Any, limit: int = 300) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, at most `limit` chars."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s.replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _order(value: str, known: Sequence[str]) -> tuple:
    return (known.index(value), "") if value in known else (len(known), value)


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _literal(text: str | None) -> Any:
    if text is None or text in ("None", "null", ""):
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:  # params are str() of Python values: lists of dicts come with single quotes
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _rank(t: Trial) -> tuple:
    return (t.delta, t.coherence, -(t.number if t.number is not None else 0))


def _best(trials: Iterable[Trial]) -> Trial | None:
    valid = [t for t in trials if t.valid]
    return max(valid, key=_rank) if valid else None


# ---------------------------------------------------------------------------------------------
# collect: MLflow -> dataclasses


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _local_dir(artifact_uri: str) -> Path | None:
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    if artifact_uri.startswith("file:"):
        return Path(url2pathname(urlparse(artifact_uri).path))
    if "://" not in artifact_uri:
        return Path(artifact_uri)
    return None


def read_artifact(client: Any, run_id: str, artifact_uri: str, path: str) -> Any | None:
    """A run's JSON artifact, parsed; None when it is absent or unreadable."""
    import tempfile

    try:
        local = _local_dir(artifact_uri)
        if local is not None:
            file = local / path
            return json.loads(file.read_text()) if file.is_file() else None
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
    except (OSError, ValueError):
        return None
    except Exception:  # noqa: BLE001 - a remote store's "not found" has no common type
        return None


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


def _weights(raw: Any) -> tuple[tuple[int, float], ...]:
    if isinstance(raw, str):
        raw = _literal(raw)
    if not isinstance(raw, dict):
        return ()
    out = []
    for k, v in raw.items():
        m = re.fullmatch(r"w(\d+)(?:#\d+)?", str(k))  # w16#2: a second term at L16
        if m and _finite(v) is not None:
            out.append((int(m.group(1)), float(v)))
    return tuple(sorted(out))


def _int(value: Any) -> int | None:
    x = _finite(value)
    return None if x is None else int(x)


def _trial(
    number: int | None,
    layer: int | None,
    coef: float | None,
    weights: tuple[tuple[int, float], ...],
    scores: tuple[float, float, float],
    cmin: float,
    kid: Any = None,
) -> Trial:
    """A Trial: valid iff coherence >= cmin; an ensemble has weights instead of layer/coef;
    its child run (when found) gives the run id, artifacts and vector file."""
    trait, coh, delta = scores
    return Trial(
        number=number,
        layer=None if weights else layer,
        coef=None if weights else coef,
        weights=weights,
        trait=trait,
        coherence=coh,
        delta=delta,
        valid=coh >= cmin,
        run_id=kid.info.run_id if kid else None,
        artifact_uri=kid.info.artifact_uri if kid else None,
        vector=kid.data.tags.get("steerlab.vector") if kid else None,
    )


def _trials_from_table(rows: list[dict], kids: dict[str, Any], cmin: float) -> list[Trial]:
    out = []
    for r in rows:
        trait, coh, delta = (_finite(r.get(k)) for k in ("trait", "coherence", "delta"))
        if trait is None or coh is None or delta is None:
            continue
        number = _int(r.get("trial"))
        out.append(
            _trial(
                number,
                _int(r.get("layer")),
                _finite(r.get("coef")),
                _weights(r.get("weights")),
                (trait, coh, delta),
                cmin,
                kids.get(str(number)),
            )
        )
    return out


def _trial_from_child(number: str, kid: Any, cmin: float) -> Trial | None:
    m, p = kid.data.metrics, kid.data.params
    trait, coh, delta = (_finite(m.get(k)) for k in ("trait", "coherence", "delta"))
    if trait is None or coh is None:
        return None
    if delta is None:
        base = _finite(m.get("baseline"))
        if base is None:
            return None
        delta = trait - base
    layers, ws = _literal(p.get("steering.layers")), _literal(p.get("steering.weights"))
    weights: tuple[tuple[int, float], ...] = ()
    if isinstance(layers, list) and layers:
        coef = _float(p.get("steering.coef"), math.nan)
        ws = ws if isinstance(ws, list) and len(ws) == len(layers) else [coef] * len(layers)
        weights = tuple(sorted((int(la), float(w)) for la, w in zip(layers, ws, strict=True)))
    return _trial(
        _int(number),
        _int(p.get("steering.layer")),
        _finite(p.get("steering.coef")),
        weights,
        (trait, coh, delta),
        cmin,
        kid,
    )


def _trial_from_metrics(metrics: dict[str, float], cmin: float) -> list[Trial]:
    """A sweep with neither trials.json nor child runs: its logged best_* metrics only."""
    trait, coh, delta = (_finite(metrics.get(f"best_{k}")) for k in ("trait", "coherence", "delta"))
    if trait is None or coh is None or delta is None:
        return []
    return [
        _trial(
            _int(metrics.get("best_trial")),
            _int(metrics.get("best_layer")),
            _finite(metrics.get("best_coef")),
            (),
            (trait, coh, delta),
            cmin,
        )
    ]


def collect_sweeps(client: Any, experiment: str) -> list[Sweep] | None:
    """Every sweep parent run of an experiment with its trials; None if there is no experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = _all_runs(client, exp.experiment_id)
    children: dict[str, dict[str, Any]] = {}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if r.data.tags.get(KIND) == "trial" and parent:
            children.setdefault(parent, {})[r.data.tags.get("steerlab.trial", r.info.run_id)] = r
    sweeps = []
    for r in runs:
        if r.data.tags.get(KIND) != "sweep":
            continue
        params, metrics = dict(r.data.params), dict(r.data.metrics)
        cmin = _float(params.get("search.coherence_min"), DEFAULT_COHERENCE_MIN)
        kids = children.get(r.info.run_id, {})
        raw = read_artifact(client, r.info.run_id, r.info.artifact_uri, "trials.json")
        trials = _trials_from_table(table_rows(raw), kids, cmin) if raw is not None else []
        if not trials:
            trials = [t for n, k in kids.items() if (t := _trial_from_child(n, k, cmin))]
        if not trials:
            trials = _trial_from_metrics(metrics, cmin)
        trials.sort(key=lambda t: (t.number is None, t.number or 0))
        sweeps.append(
            Sweep(
                run_id=r.info.run_id,
                experiment=experiment,
                name=r.info.run_name or "",
                artifact_uri=r.info.artifact_uri,
                params=params,
                metrics=metrics,
                tags=dict(r.data.tags),
                trials=trials,
            )
        )
    sweeps.sort(key=lambda s: s.run_id)
    return sweeps


def label_groups(sweeps: Iterable[Sweep]) -> None:
    """Group label per sweep: the trait, plus the model when several models are present."""
    sweeps = list(sweeps)
    several = len({s.model for s in sweeps}) > 1
    for s in sweeps:
        s.group = f"{s.trait} ({s.model})" if several else s.trait


def is_comparison(s: Sweep) -> bool:
    """Sweeps that belong to section 7 rather than to the per-key tables."""
    return bool(s.strategy) or s.is_ensemble


def group_keys(sweeps: Iterable[Sweep]) -> list[Key]:
    keys: dict[tuple, Key] = {}
    for s in sweeps:
        if is_comparison(s):
            continue
        k = (s.model, s.trait, s.source, s.position, s.method, s.component)
        if k not in keys:
            keys[k] = Key(*k, sweeps=[], group=s.group or s.trait)
        keys[k].sweeps.append(s)
    return sorted(keys.values(), key=lambda k: (k.group, k.sort_key()))


def collect(client: Any, experiment: str) -> list[Key]:
    """The per-key view of one experiment's sweeps (comparison sweeps left out)."""
    sweeps = collect_sweeps(client, experiment) or []
    label_groups(sweeps)
    return group_keys(sweeps)


# ---------------------------------------------------------------------------------------------
# analysis helpers (pure)


def groups(keys: Iterable[Key]) -> dict[str, list[Key]]:
    out: dict[str, list[Key]] = {}
    for k in keys:
        out.setdefault(k.group, []).append(k)
    return dict(sorted(out.items()))


def best_of(keys: Iterable[Key]) -> tuple[Key, Trial, Sweep] | None:
    cands = [(k, *b) for k in keys if (b := k.best())]
    return max(cands, key=lambda c: _rank(c[1])) if cands else None


def baseline(keys: Iterable[Key]) -> tuple[float | None, int]:
    vals = [b for k in keys for s in k.sweeps if (b := s.baseline) is not None]
    return (sum(vals) / len(vals) if vals else None), len(vals)


def operating_range(key: Key, window: float = WINDOW) -> list[Trial]:
    """Valid single-layer trials of the key's sweeps within `window` trait points of its best."""
    best = key.best()
    if best is None:
        return []
    top = best[0].trait
    return [
        t
        for s in key.sweeps
        for t in s.trials
        if t.valid and not t.weights and t.layer is not None and t.trait >= top - window
    ]


def _describe(key: Key, t: Trial) -> str:
    extra = "" if key.component == "residual" else f", {key.component}"
    return f"{fmt_delta(t.delta)} ({t.where()}, {key.method}, {key.position}{extra})"


def _cosine(a: Any, b: Any) -> float:
    import torch

    a, b = a.double(), b.double()
    den = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(torch.dot(a, b)) / den if den else math.nan


# ---------------------------------------------------------------------------------------------
# gather: the artifacts sections 6 and 8 need


def vector_path(client: Any, trial: Trial, sweep: Sweep) -> str | None:
    if trial.vector and trial.vector != "None":
        return trial.vector
    meta = read_artifact(client, sweep.run_id, sweep.artifact_uri, "vector.json")
    return meta.get("path") if isinstance(meta, dict) else None


def cosine_of(client: Any, group: str, inst: tuple, nat: tuple) -> Cosine:
    from steerlab.vectors import VectorFileError, load_vectors

    (ki, ti, si), (kn, tn, sn) = inst, nat
    base = Cosine(
        group,
        ki.name,
        kn.name,
        (ti.layer, tn.layer),
        None,
        [],
        (ti.run_id or si.run_id, tn.run_id or sn.run_id),
    )
    paths = [vector_path(client, ti, si), vector_path(client, tn, sn)]
    if not all(paths):
        base.note = "no vector path logged"
        return base
    try:
        va, vb = (load_vectors(Path(p)).vectors for p in paths)  # type: ignore[arg-type]
    except VectorFileError as e:
        base.note = str(e)
        return base
    if va.shape[-1] != vb.shape[-1]:
        base.note = f"hidden sizes differ ({va.shape[-1]} vs {vb.shape[-1]})"
        return base
    base.per_layer = [_cosine(va[i], vb[i]) for i in range(min(len(va), len(vb)))]
    if ti.layer is not None and tn.layer is not None and ti.layer < len(va) and tn.layer < len(vb):
        base.best = _cosine(va[ti.layer], vb[tn.layer])
    else:
        base.note = "best trials are ensembles (no single layer)"
    return base


def answers_of(client: Any, group: str, picks: dict[str, tuple]) -> Answers:
    heads, runs, tables = {}, {}, {}
    for src, (k, t, s) in picks.items():
        heads[src] = f"{k.name}, {t.where()}"
        runs[src] = t.run_id or s.run_id
        raw = (
            read_artifact(client, t.run_id, t.artifact_uri, "responses.json") if t.run_id else None
        )
        tables[src] = table_rows(raw) if raw is not None else []
    out = Answers(group, heads, runs, [])
    missing = [src for src in picks if not tables[src]]
    if missing:
        out.note = "no responses.json on the best trial run of: " + ", ".join(missing)
    order = next((tables[s] for s in picks if tables[s]), [])
    for q in order[:N_QUESTIONS]:
        row: dict[str, Any] = {"question": q.get("question", "")}
        for src in picks:
            match = next((r for r in tables[src] if r.get("question") == row["question"]), None)
            row[src] = match
        out.rows.append(row)
    return out


def extraction_of(client: Any, group: str, source: str, key: Key, sweep: Sweep) -> Extraction:
    raw = read_artifact(client, sweep.run_id, sweep.artifact_uri, "extraction.json")
    rows = [
        r
        for r in table_rows(raw)
        if r.get("label") == "positive"
        and _truthy(r.get("kept"))
        and _finite(r.get("trait")) is not None
    ]
    rows.sort(key=lambda r: -float(r["trait"]))
    return Extraction(group, source, key.name, sweep.run_id, rows[:N_EXTRACTION])


def _truthy(v: Any) -> bool:
    return v is True or v == 1 or str(v).lower() in ("true", "1")


def gather(client: Any, keys: list[Key]) -> Extras:
    out = Extras()
    for group, ks in groups(keys).items():
        picks = {src: b for src in SOURCES if (b := best_of(k for k in ks if k.source == src))}
        if len(picks) == 2:
            out.cosines.append(cosine_of(client, group, picks["instruction"], picks["natural"]))
        if picks:
            out.answers.append(answers_of(client, group, picks))
        for src, (k, _t, s) in picks.items():
            ex = extraction_of(client, group, src, k, s)
            if ex.rows:
                out.extraction.append(ex)
    return out


# ---------------------------------------------------------------------------------------------
# render: dataclasses -> Markdown (pure)


def _missing(text: str) -> list[str]:
    return [f"_{text}_", ""]


def section_cross(keys: list[Key]) -> list[str]:
    out = ["## 1. Cross-trait results", ""]
    gs = groups(keys)
    if not gs:
        return out + _missing("No sweep runs (tag steerlab.kind=sweep) to report.")
    out.append(
        "Best valid delta (trait over the unsteered baseline) per source. Baseline: mean "
        "`baseline_trait` of the trait's sweeps. Natural % = natural delta / instruction delta."
    )
    out.append("")
    rows = []
    for group, ks in gs.items():
        base, n = baseline(ks)
        bi = best_of(k for k in ks if k.source == "instruction")
        bn = best_of(k for k in ks if k.source == "natural")
        winner = pct = "—"
        if bi and bn:
            di, dn = bi[1].delta, bn[1].delta
            winner = "instruction" if di > dn else "natural" if dn > di else "tie"
            pct = f"{round(100 * dn / di)}%" if di > 0 else "—"
        runs = ", ".join(
            f"{lab} {short(b[1].run_id or b[2].run_id)}"
            for lab, b in (("inst", bi), ("nat", bn))
            if b
        )
        rows.append(
            [
                group,
                f"{fmt_score(base)}" if base is None else f"{base:.1f} (n={n})",
                _describe(bi[0], bi[1]) if bi else "—",
                _describe(bn[0], bn[1]) if bn else "—",
                winner,
                pct,
                runs or "—",
            ]
        )
    header = ["Trait", "Baseline", "Best Instruction", "Best Natural", "Winner", "Natural %"]
    return out + table([*header, "Runs"], rows) + [""]


def section_positions(keys: list[Key]) -> list[str]:
    out = ["## 2. Position effects (natural vectors)", ""]
    body: list[str] = []
    for group, ks in groups(keys).items():
        nat = [k for k in ks if k.source == "natural"]
        if not nat:
            continue
        rows = []
        for pos in sorted({k.position for k in nat}, key=position_order):
            b = best_of(k for k in nat if k.position == pos)
            if b is None:
                rows.append([pos, "—", "—", "—", "no valid trial"])
                continue
            k, t, s = b
            rows.append(
                [
                    pos,
                    fmt_delta(t.delta),
                    t.where().split(",")[0],
                    k.method,
                    short(t.run_id or s.run_id),
                ]
            )
        body += [f"### {group}", ""]
        body += table(["Position", "Best Δ", "Best Layer", "Method", "Run"], rows) + [""]
    return out + (body or _missing("No natural-source sweeps."))


def section_methods(keys: list[Key]) -> list[str]:
    out = ["## 3. Method comparison (mean_diff vs probe)", ""]
    rows = []
    for group, ks in groups(keys).items():
        cells: dict[tuple, dict[str, Key]] = {}
        for k in ks:
            cells.setdefault((k.source, k.position, k.component), {})[k.method] = k
        for (src, pos, comp), by in sorted(
            cells.items(),
            key=lambda kv: (_order(kv[0][0], SOURCES), position_order(kv[0][1]), kv[0][2]),
        ):
            md, pr = (by.get(m) and by[m].best() for m in METHODS)
            gap = fmt_delta(md[0].delta - pr[0].delta) if md and pr else "—"
            runs = ", ".join(
                f"{m} {short(b[0].run_id or b[1].run_id)}"
                for m, b in zip(("md", "pr"), (md, pr), strict=True)
                if b
            )
            label = pos if comp == "residual" else f"{pos} {comp}"
            rows.append(
                [
                    group,
                    src,
                    label,
                    fmt_delta(md[0].delta) if md else "—",
                    fmt_delta(pr[0].delta) if pr else "—",
                    gap,
                    runs or "no valid trial",
                ]
            )
    if not rows:
        return out + _missing("No sweeps.")
    header = ["Trait", "Source", "Position", "mean_diff Δ", "probe Δ", "Gap (md − pr)", "Runs"]
    return out + table(header, rows) + [""]


def section_layers(keys: list[Key]) -> list[str]:
    out = ["## 4. Best steering layers and operating range", ""]
    gs = groups(keys)
    if not gs:
        return out + _missing("No sweeps.")
    rows, ranges = [], []
    for group, ks in gs.items():
        best = {src: best_of(k for k in ks if k.source == src) for src in SOURCES}
        cells = []
        for src in SOURCES:
            b = best[src]
            cells.append(f"{b[1].where().split(',')[0]} ({b[0].name})" if b else "—")
            if b:
                trials = operating_range(b[0])
                coefs = [t.coef for t in trials if t.coef is not None]
                window = (
                    "—"
                    if not coefs
                    else f"c{fmt_coef(min(coefs))}"
                    if min(coefs) == max(coefs)
                    else f"c{fmt_coef(min(coefs))}-{fmt_coef(max(coefs))}"
                )
                ranges.append(
                    [
                        group,
                        src,
                        b[0].name,
                        fmt_score(b[1].trait),
                        layer_ranges(t.layer for t in trials if t.layer is not None),
                        window,
                        f"{len(trials)}/{b[0].n_valid}",
                        ", ".join(short(s.run_id) for s in b[0].sweeps),
                    ]
                )
        li, ln = (best[s][1].layer if best[s] else None for s in SOURCES)
        gap = "—" if li is None or ln is None else f"{abs(li - ln)} layers"
        rows.append([group, *cells, gap])
    out += table(["Trait", "Instruction best", "Natural best", "Gap"], rows) + [""]
    out += [
        f"Operating range: the valid trials of each source's best key whose trait is within "
        f"{WINDOW:g} points of that best (from the sweeps' trials.json).",
        "",
    ]
    header = ["Trait", "Source", "Key", "Best trait", "Layers", "Coef window", "Trials in range"]
    return out + table([*header, "Sweeps"], ranges) + [""]


def section_full(keys: list[Key]) -> list[str]:
    out = ["## 5. Full steering table per trait", ""]
    gs = groups(keys)
    if not gs:
        return out + _missing("No sweeps.")
    header = [
        "Key",
        "Source",
        "Position",
        "Method",
        "Component",
        "Best Layer",
        "Coef",
        "Trait",
        "Coh",
        "Δ",
        "Valid",
        "Sweep",
        "Trial",
    ]
    for group, ks in gs.items():
        base, n = baseline(ks)
        note = "" if base is None else f" (baseline trait {base:.1f}, mean of {plural(n, 'sweep')})"
        rows = []
        for k in ks:
            b = k.best()
            counts = f"{k.n_valid}/{k.n_trials}"
            key_cols = [k.name, k.source, k.position, k.method, k.component]
            if b is None:
                sweeps = ", ".join(short(s.run_id) for s in k.sweeps)
                none = ["—"] * 5
                rows.append([*key_cols, *none, counts, sweeps, "no valid trial"])
                continue
            t, s = b
            layer = t.where() if t.weights else layer_label(t.layer)
            rows.append(
                [
                    *key_cols,
                    layer,
                    "—" if t.weights else fmt_coef(t.coef),
                    fmt_score(t.trait),
                    fmt_score(t.coherence),
                    fmt_delta(t.delta),
                    counts,
                    short(s.run_id),
                    short(t.run_id),
                ]
            )
        out += [f"### {group}{note}", ""] + table(header, rows) + [""]
    return out


def section_cosine(report: Report) -> list[str]:
    out = ["## 6. Vector similarity (best instruction vs best natural)", ""]
    cos = report.extras.cosines
    if not cos:
        return out + _missing("Needs a valid best trial of both sources for a trait.")
    rows = []
    for c in cos:
        val = "—" if c.best is None else f"{c.best:.2f}"
        layers = f"{layer_label(c.layers[0])} vs {layer_label(c.layers[1])}"
        rows.append(
            [
                c.group,
                val,
                layers,
                f"{c.instruction} vs {c.natural}",
                f"{short(c.runs[0])}, {short(c.runs[1])}",
                c.note or "",
            ]
        )
    out += table(["Trait", "Cosine", "Layers", "Vectors", "Runs", "Note"], rows) + [""]
    with_layers = [c for c in cos if c.per_layer]
    if with_layers:
        n = max(len(c.per_layer) for c in with_layers)
        out += ["Same-layer cosine of the two vector files:", ""]
        body = [
            [
                f"L{i}",
                *(f"{c.per_layer[i]:.2f}" if i < len(c.per_layer) else "—" for c in with_layers),
            ]
            for i in range(n)
        ]
        out += table(["Layer", *(c.group for c in with_layers)], body) + [""]
    if "cosine" in report.figures:
        out += [f"![same-layer cosine]({report.figures['cosine']})", ""]
    return out


def _strategy_label(s: Sweep) -> str:
    return s.strategy or "?"


def _layers_label(s: Sweep) -> str:
    return "+".join(f"L{la}" for la in s.layers()) or "—"


@dataclass(frozen=True)
class Row:
    """One line of a section-7 comparison table."""

    label: str
    layers: str
    component: str
    trial: Trial | None  # the sweep's best valid trial
    delta85: float | None  # best delta at coherence >= HIGH_COHERENCE
    run: str | None

    @classmethod
    def of(cls, label: str, s: Sweep) -> Row:
        return cls(label, _layers_label(s), s.component, s.best(), s.delta85, s.run_id)


def _comparison_table(rows: list[Row]) -> list[str]:
    header = [
        "Config",
        "Layer(s)",
        "Component",
        "Weights / coef",
        "Trait",
        "Coh",
        "Δ",
        f"Δ @ coh ≥ {HIGH_COHERENCE}",
        "Run",
    ]
    body = []
    for r in rows:
        t = r.trial
        scores = (
            ["—", "—", "—", "no valid trial"]
            if t is None
            else [t.where(), fmt_score(t.trait), fmt_score(t.coherence), fmt_delta(t.delta)]
        )
        body.append([r.label, r.layers, r.component, *scores, fmt_delta(r.delta85), short(r.run)])
    return table(header, body)


def _pareto_note(rows: list[Row], ref_label: str) -> str:
    """Best delta at coherence >= 85: the best single vs the best of the other rows."""
    ref = next((r for r in rows if r.label == ref_label), None)
    others = [r for r in rows if r.label != ref_label and r.delta85 is not None]
    top = max(others, key=lambda r: r.delta85 or 0.0) if others else None
    parts = []
    if ref is not None:
        parts.append(
            f"the best single reaches {fmt_delta(ref.delta85)}"
            if ref.delta85 is not None
            else "the best single has no trial at that coherence"
        )
    if top is not None and top.delta85 is not None:
        verdict = ""
        if ref is not None and ref.delta85 is not None:
            verdict = (
                " — better on the high-coherence frontier"
                if top.delta85 > ref.delta85
                else " — not better than the best single there"
            )
        parts.append(f"`{top.label}` reaches {fmt_delta(top.delta85)} ({short(top.run)}){verdict}")
    if not parts:
        return f"**Pareto note:** no run reached coherence ≥ {HIGH_COHERENCE}."
    return f"**Pareto note:** at coherence ≥ {HIGH_COHERENCE}, " + "; ".join(parts) + "."


def _combined_from(sweeps: list[Sweep]) -> list[str]:
    """Which runs the combined vectors came from, and which vector `best_single` is."""
    out = []
    for s in sweeps:
        p = s.params
        inst, nat = p.get("combine.instruction_run"), p.get("combine.natural_run")
        if inst and nat and inst != "None":
            src = p.get("combine.experiment", "?")
            out.append(
                f"Best vectors from experiment `{src}`: instruction trial {short(inst)}, "
                f"natural trial {short(nat)}."
            )
            break
    single = next((s for s in sweeps if s.strategy == "best_single"), None)
    if single is not None and single.source in SOURCES:
        name = key_name(single.source, single.position, single.method, single.component)
        out.append(f"`best_single` is `{name}` ({single.source}).")
    return [" ".join(out), ""] if out else []


def section_combinations(report: Report) -> list[str]:
    out = ["## 7. Combination strategies and ensembles vs best single", ""]
    combos = [s for s in report.extra if s.strategy]
    others = [s for s in report.extra if not s.strategy]
    if not combos and not others:
        names = ", ".join(n for n, _ in report.experiments[1:]) or "none given"
        return out + _missing(f"No combination or ensemble sweeps (experiments: {names}).")
    by_group: dict[str, list[Sweep]] = {}
    for s in combos:
        by_group.setdefault(s.group, []).append(s)
    for group, ss in sorted(by_group.items()):
        ss.sort(key=lambda s: (_order(_strategy_label(s), STRATEGIES), s.run_id))
        rows = [Row.of(_strategy_label(s), s) for s in ss]
        out += [f"### Combination strategies — {group}", ""]
        out += _combined_from(ss)
        out += _comparison_table(rows) + ["", _pareto_note(rows, "best_single"), ""]
    by_group = {}
    for s in others:
        by_group.setdefault(s.group, []).append(s)
    for group, ss in sorted(by_group.items()):
        rows = []
        for s in sorted(ss, key=lambda s: (not s.is_ensemble, s.layers(), s.method, s.run_id)):
            label = (
                f"{_layers_label(s)} {s.method}"
                if s.is_ensemble
                else f"{_layers_label(s)} alone ({s.method})"
            )
            rows.append(Row.of(label, s))
        ref = "Best single residual"
        b = best_of(k for k in report.keys if k.group == group and k.component == "residual")
        if b:
            k, t, s = b
            rows.append(
                Row(ref, layer_label(t.layer), k.component, t, s.delta85, t.run_id or s.run_id)
            )
        out += [f"### Ensembles — {group}", ""]
        out += _comparison_table(rows) + ["", _pareto_note(rows, ref), ""]
    return out


def section_answers(report: Report) -> list[str]:
    out = ["## 8. Steered answers and extraction responses", ""]
    ans, ext = report.extras.answers, report.extras.extraction
    if not ans and not ext:
        return out + _missing("No valid best trial to show answers for.")
    for a in ans:
        out += [f"### {a.group}: best steered answers (first {N_QUESTIONS} questions)", ""]
        if a.note:
            out += [f"_{a.note}_", ""]
        if not a.rows:
            continue
        srcs = list(a.heads)
        header = ["Question"] + [
            f"{src.capitalize()} ({a.heads[src]}) {short(a.runs[src])}" for src in srcs
        ]
        body = []
        for r in a.rows:
            cells = [cell(r["question"], 200)]
            for src in srcs:
                got = r.get(src)
                if not got:
                    cells.append("—")
                    continue
                scores = (
                    f"trait {fmt_score(_finite(got.get('trait')))}, coh "
                    f"{fmt_score(_finite(got.get('coherence')))}"
                )
                cells.append(f"{cell(got.get('answer', ''))} ({scores})")
            body.append(cells)
        out += table(header, body) + [""]
    if ext:
        out += [f"### Most trait-rich kept extraction responses (top {N_EXTRACTION} positives)", ""]
        body = [
            [
                e.group,
                e.source,
                e.key,
                fmt_score(_finite(r.get("trait"))),
                cell(r.get("context", ""), 160),
                cell(r.get("response", "")),
                short(e.run),
            ]
            for e in ext
            for r in e.rows
        ]
        out += table(
            ["Trait", "Source", "Key", "Trait score", "Context", "Response", "Sweep"], body
        ) + [""]
    return out


def render(report: Report) -> str:
    """The whole report as Markdown."""
    exps = ", ".join(
        f"`{n}` ({'missing' if c is None else plural(c, 'sweep')})" for n, c in report.experiments
    )
    mins = sorted(
        {s.coherence_min for k in report.keys for s in k.sweeps}
        | {s.coherence_min for s in report.extra}
    )
    lines = [
        f"# steerlab report: {report.experiment}",
        "",
        f"- Tracking URI: `{report.uri}`",
        f"- Experiments: {exps}",
    ]
    if report.run_id:
        lines.append(f"- Report run: {short(report.run_id)} (tag `steerlab.kind=report`)")
    lines += [
        "- Valid trial: mean coherence ≥ the sweep's `search.coherence_min` ("
        + (", ".join(f"{m:g}" for m in mins) or "—")
        + "); invalid trials never count as best.",
        "- Run ids: first 8 characters of the MLflow run id (Sweep = parent run, "
        "Trial = child run). Coefficients are relative units (3 significant digits).",
        "",
    ]
    for part in (
        section_cross(report.keys),
        section_positions(report.keys),
        section_methods(report.keys),
        section_layers(report.keys),
        section_full(report.keys),
        section_cosine(report),
        section_combinations(report),
        section_answers(report),
    ):
        lines += part
    if "cross_trait" in report.figures or "positions" in report.figures:
        lines += ["## Figures", ""]
        for name, title in (
            ("cross_trait", "best delta per source"),
            ("positions", "natural best delta per position"),
        ):
            if name in report.figures:
                lines += [f"![{title}]({report.figures[name]})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# figures


def draw(report: Report, out: Path) -> dict[str, str]:
    """PNG figures next to the report; returns figure name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    gs = groups(report.keys)
    bars = {g: [best_of(k for k in ks if k.source == s) for s in SOURCES] for g, ks in gs.items()}
    if any(b for bs in bars.values() for b in bs):
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(bars), 3.2))
        for j, src in enumerate(SOURCES):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(bars))]
            ys = [bs[j][1].delta if bs[j] else 0.0 for bs in bars.values()]
            ax.bar(xs, ys, width=0.38, label=src)
        ax.set_xticks(range(len(bars)), list(bars))
        ax.set_ylabel("best valid Δ")
        ax.legend(fontsize=7)
        made["cross_trait"] = _save(fig, out / "cross_trait.png")
    nat = {g: [k for k in ks if k.source == "natural"] for g, ks in gs.items()}
    nat = {g: ks for g, ks in nat.items() if ks}
    if nat:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        axis = sorted({k.position for ks in nat.values() for k in ks}, key=position_order)
        for g, ks in nat.items():
            pts = [
                (i, b[1].delta)
                for i, p in enumerate(axis)
                if (b := best_of(k for k in ks if k.position == p))
            ]
            if pts:
                ax.plot([i for i, _ in pts], [d for _, d in pts], "o-", label=g)
        ax.set_xticks(range(len(axis)), axis)
        ax.set_ylabel("best valid Δ")
        ax.legend(fontsize=7)
        made["positions"] = _save(fig, out / "positions.png")
    cos = [c for c in report.extras.cosines if c.per_layer]
    if cos:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for c in cos:
            ax.plot(range(len(c.per_layer)), c.per_layer, ".-", label=c.group)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine (instruction vs natural)")
        ax.legend(fontsize=7)
        made["cosine"] = _save(fig, out / "cosine.png")
    return made


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------------------------------------
# command line


def build(root: Path, experiment: str, extra_experiments: Sequence[str]) -> Report:
    """Read the store into a Report (no figures, no report run yet)."""
    from steerlab import tracking

    client = tracking.client(root)
    names = [n.strip() for n in experiment.split(",") if n.strip()]
    extra_names = [n for n in (e.strip() for e in extra_experiments) if n and n not in names]
    found: dict[str, list[Sweep] | None] = {
        n: collect_sweeps(client, n) for n in [*names, *extra_names]
    }
    everything = [s for ss in found.values() for s in ss or []]
    label_groups(everything)
    main_sweeps = [s for n in names for s in found[n] or []]
    keys = group_keys(main_sweeps)
    extra = [s for s in main_sweeps if is_comparison(s)]
    extra += [s for n in extra_names for s in found[n] or []]
    return Report(
        uri=tracking.tracking_uri(root),
        experiment=", ".join(names),
        experiments=[(n, None if found[n] is None else len(found[n] or [])) for n in found],
        keys=keys,
        extra=extra,
        extras=gather(client, keys),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m steerlab.report",
        description="Write a Markdown report (tables + figures) of the sweeps in an MLflow store.",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="paths.root of the runs: the store is <root>/mlruns/mlflow.db (default .)",
    )
    p.add_argument(
        "--experiment",
        default="model_diff",
        help="experiment(s) with the per-key sweeps, comma-separated "
        "(default model_diff; or a per-run one, <model>/<trait>)",
    )
    p.add_argument(
        "--experiments",
        default="ensembles,combinations",
        help="comma-separated experiments with ensemble and combination-strategy "
        "sweeps (default ensembles,combinations)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("docs/report"),
        help="output folder for report.md and figures (default docs/report)",
    )
    p.add_argument("--no-log", action="store_true", help="do not log the report as an MLflow run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.root.expanduser().resolve()
    if not (root / "mlruns" / "mlflow.db").is_file():
        print(f"no MLflow store at {root / 'mlruns' / 'mlflow.db'}", file=sys.stderr)
        return 2
    if not args.experiment.replace(",", "").strip():
        print("--experiment must name at least one experiment", file=sys.stderr)
        return 2
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in FIGURES:
        (out / stale).unlink(missing_ok=True)
    report = build(root, args.experiment, args.experiments.split(","))
    report.figures = draw(report, out)
    path = out / "report.md"
    experiment = args.experiment.split(",")[0].strip()
    if args.no_log or report.experiments[0][1] is None:
        path.write_text(render(report))
        why = "" if args.no_log else f" (not logged: no experiment {experiment!r})"
        print(f"report: {path}{why}")
        return 0
    from steerlab import tracking

    with tracking.run(root, experiment, "report", tags={KIND: "report"}) as mlflow:
        report.run_id = mlflow.active_run().info.run_id
        path.write_text(render(report))
        mlflow.log_params(
            {
                "report.experiment": args.experiment,
                "report.experiments": args.experiments,
                "report.out": str(out),
            }
        )
        mlflow.log_metrics({"report.keys": len(report.keys), "report.extra": len(report.extra)})
        mlflow.log_artifacts(str(out), "report")
    print(f"report: {path}  (MLflow run {report.run_id[:8]} in experiment {experiment!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
