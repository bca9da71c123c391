"""A sweep's best valid trial, or one trial, as steering terms, read back from MLflow.

What a search leaves is a sweep folder (`multirun/<model>/<trait>/<source-method-pos>/
<component-sampler>/`, one `<n>/` folder per trial) and MLflow runs: a parent run per sweep
(tag `steerlab.sweep_dir`, artifact `vector.json`) and a child run per trial (tag
`steerlab.vector`, the file it steered with). A folder is found in MLflow by that tag; the store
is the one the sweep's trial configs recorded (`tracking.uri`, else `paths.root`, a relative root
found from the folder's place under `multirun/`, never the current directory) unless given. The
best trial is `records.best`: the valid trial (coherence >= the sweep's `search.coherence_min`)
with the largest delta over the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import records

if TYPE_CHECKING:
    from steerlab.records import Sweep, Trial
    from steerlab.tracking import Store


class LoadError(ValueError):
    """A reference that names no vector, or a steering that cannot apply to this model."""


@dataclass
class Found:
    """Steering terms (vector file, layer, coef in `units`) and where they came from."""

    terms: list[tuple[str, int, float]]
    units: str
    provenance: dict[str, Any] = field(default_factory=dict)


def as_store(store: str | Path) -> Store:
    """A tracking server or database URL stays a string; anything else is a root folder."""
    text = str(store)
    return text if "://" in text or text.startswith("sqlite:") else Path(text).expanduser()


def _open(store: Store) -> Any:
    """A client on an existing store (a missing local store is an error, never created)."""
    from steerlab import tracking

    if isinstance(store, Path) and not (store / "mlruns" / "mlflow.db").is_file():
        raise LoadError(f"no MLflow store at {store} (expected {store / 'mlruns' / 'mlflow.db'})")
    return tracking.client(store)


def from_folder(folder: Path, store: str | Path | None = None) -> Found:
    """A sweep folder's best valid trial, or a trial folder's (`<sweep>/<n>/`) own trial."""
    folder, number = folder.resolve(), None
    if folder.name.isdigit() and (folder / "config.yaml").is_file():
        folder, number = folder.parent, int(folder.name)
    configs = sorted(folder.glob("*/config.yaml"))
    if not configs and not (folder / "settings.json").is_file():
        raise LoadError(
            f"{folder}: not a sweep folder (no trial folders <n>/config.yaml, no settings.json)"
        )
    stores = [as_store(store)] if store is not None else _stores_of(folder, configs)
    if not stores:
        raise LoadError(
            f"{folder}: no MLflow store found for this sweep; pass store= (its paths.root or "
            "tracking.uri)"
        )
    for s in stores:
        client = _open(s)
        run = _parent_of(client, folder)
        if run is not None:
            return _from_sweep_run(client, run, s, number)
    raise LoadError(
        f"{folder}: no sweep run tagged steerlab.sweep_dir={folder} in "
        f"{', '.join(map(str, stores))} (a sweep run with tracking off records no vector: "
        "load its vector file with layer= and coef=)"
    )


def _stores_of(folder: Path, configs: list[Path]) -> list[Store]:
    """Where this sweep logged, existing stores only: its configs' tracking.uri, an absolute
    paths.root, or the root above its `multirun/<model>/<trait>/<tag>/` folder. Never the
    current directory: a store that happens to be there belongs to other sweeps."""
    from omegaconf import OmegaConf

    out: list[Store] = []
    if configs:
        cfg = OmegaConf.load(configs[0])
        uri = OmegaConf.select(cfg, "tracking.uri")
        if uri and "***" not in str(uri):  # a redacted password cannot be used
            out.append(str(uri))
        root = Path(str(OmegaConf.select(cfg, "paths.root", default="."))).expanduser()
        out += [root] if root.is_absolute() else []
    if len(folder.parents) > 4 and folder.parents[3].name == "multirun":
        out.append(folder.parents[4])
    seen: list[Store] = []
    for s in out:
        if isinstance(s, Path):
            s = s.resolve()
            if not (s / "mlruns" / "mlflow.db").is_file():
                continue
        if s not in seen:
            seen.append(s)
    return seen


def _parent_of(client: Any, folder: Path) -> Any | None:
    ids = [e.experiment_id for e in client.search_experiments()]
    quote = '"' if "'" in str(folder) else "'"
    query = f"tags.`steerlab.sweep_dir` = {quote}{folder}{quote}"
    runs = [
        r
        for r in client.search_runs(ids, query, max_results=50, order_by=["start_time ASC"])
        if r.data.tags.get(records.KIND) == "sweep"
    ]
    return runs[0] if runs else None


def from_run(run_id: str, store: str | Path) -> Found:
    """A sweep parent run's best valid trial, or a trial child run's own trial."""
    from steerlab import tracking

    s = as_store(store)
    client = _open(s)
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow's "not found" has no narrower common type
        raise LoadError(f"no MLflow run {run_id} in {tracking.tracking_uri(s)}") from None
    kind = run.data.tags.get(records.KIND)
    if kind == "sweep":
        return _from_sweep_run(client, run, s, None)
    if kind == "trial":
        parent = run.data.tags.get("mlflow.parentRunId")
        number = records.as_int(run.data.tags.get(records.TRIAL_TAG))
        if parent and number is not None:
            return _from_sweep_run(client, client.get_run(parent), s, number)
        return _from_trial_run(run, s)
    raise LoadError(f"run {run_id} is a {kind or 'non-steerlab'} run, not a sweep or a trial")


def _from_sweep_run(client: Any, run: Any, store: Store, number: int | None) -> Found:
    from steerlab import tracking

    exp = client.get_experiment(run.info.experiment_id).name
    sweeps = tracking.read_sweeps(client, exp) or []
    sweep = next(s for s in sweeps if s.run_id == run.info.run_id)
    if number is None:
        trial = sweep.best()
        if trial is None:
            top = max((t.coherence for t in sweep.trials), default=float("nan"))
            raise LoadError(
                f"sweep {sweep.name} ({sweep.run_id}) has no valid trial: {len(sweep.trials)} "
                f"trial(s), none with coherence >= {sweep.coherence_min:g} (best {top:.1f})"
            )
    else:
        trial = next((t for t in sweep.trials if t.number == number), None)
        if trial is None:
            raise LoadError(f"sweep {sweep.name} ({sweep.run_id}) has no finished trial {number}")
    trial = _exact(trial, sweep)
    vector = tracking.vector_path(client, trial, sweep)
    if not vector:
        raise LoadError(f"sweep {sweep.name} ({sweep.run_id}) records no vector file")
    units = sweep.params.get("steering.coef_units", "relative")
    prov = _provenance(sweep, trial, store, "sweep" if number is None else "trial")
    return Found(_terms(trial, sweep.params, vector), units, prov)


def _exact(trial: Trial, sweep: Sweep) -> Trial:
    """The trial's layer and coef from the sweep folder's own trials.json when it is there:
    MLflow's copy of the table keeps 10 significant digits. (Both keep an ensemble's weights to
    6 decimals; its saved ensemble file has them in full.)"""
    import json
    from dataclasses import replace

    path = Path(sweep.tags.get("steerlab.sweep_dir", "")) / "trials.json"
    try:
        rows = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        return trial
    row = next((r for r in rows if isinstance(r, dict) and r.get("trial") == trial.number), None)
    if row is None:
        return trial
    return replace(
        trial,
        layer=records.as_int(row.get("layer")),
        coef=records.finite(row.get("coef")),
        weights=records.parse_weights(row.get("weights")),
    )


def _terms(trial: Trial, params: dict[str, str], vector: str) -> list[tuple[str, int, float]]:
    """(file, layer, coef) of a trial: one layer, an ensemble's weights, or a mix's terms."""
    mix = records.literal(params.get("steering.mix"))
    if isinstance(mix, list) and mix and trial.weights:
        # a mix searches one multiplier k of every term's weight; the trial stores weight x k
        first = mix[0]
        got = next(w for la, w in trial.weights if la == int(first["layer"]))
        k = got / float(first["weight"])
        return [(str(m["vector"]), int(m["layer"]), float(m["weight"]) * k) for m in mix]
    if trial.weights:
        return [(vector, la, w) for la, w in trial.weights]
    if trial.layer is None or trial.coef is None:
        raise LoadError(f"trial {trial.number} records no layer and coefficient")
    return [(vector, trial.layer, trial.coef)]


def _provenance(sweep: Sweep, trial: Trial, store: Store, kind: str) -> dict[str, Any]:
    from steerlab import tracking
    from steerlab.config import redact

    p = sweep.params
    return {
        "kind": kind,
        "rule": "best valid trial: the largest delta over the baseline among trials with mean "
        "coherence >= coherence_min"
        if kind == "sweep"
        else "one trial",
        "store": redact(tracking.tracking_uri(store)),
        "experiment": sweep.experiment,
        "sweep_run_id": sweep.run_id,
        "sweep_name": sweep.name,
        "sweep_dir": sweep.tags.get("steerlab.sweep_dir"),
        "trial": trial.number,
        "trial_run_id": trial.run_id,
        "scores": {"trait": trial.trait, "coherence": trial.coherence, "delta": trial.delta},
        "ci95": dict(zip(records.SCORES, trial.cis, strict=True)),  # over the questions
        "held_out": None
        if (c := sweep.confirmed(trial)) is None
        else {
            "n_questions": c.n,
            "delta": c.delta,
            "delta_ci95": c.delta_ci,
            "coherence": c.coherence_mean,
            "coherence_ci95": c.coherence_ci,
        },
        "coherence_min": sweep.coherence_min,
        "baseline_trait": sweep.baseline,
        "trait": sweep.trait,
        "model": sweep.model,
        "model_ref": p.get("model.steering"),
        "judge": p.get("judge.backend"),
        "n_trials": len(sweep.trials),
    }


def _from_trial_run(run: Any, store: Store) -> Found:
    """A single run (`python -m steerlab` without -m): its typed steering params."""
    from steerlab import tracking
    from steerlab.config import redact
    from steerlab.ensembles import load_ensemble

    p, m = run.data.params, run.data.metrics
    units = p.get("steering.coef_units", "relative")
    prov = {
        "kind": "trial",
        "store": redact(tracking.tracking_uri(store)),
        "trial_run_id": run.info.run_id,
        "scores": {k: m[k] for k in ("trait", "coherence", "delta") if k in m},
        "trait": p.get("trait.name"),
        "model": p.get("model.name"),
        "model_ref": p.get("model.steering"),
    }
    name = records.literal(p.get("steering.ensemble"))
    if name:
        ens = load_ensemble(str(name), Path(p.get("paths.root", ".")))
        terms = [(ens.vector_file, la, w) for la, w in zip(ens.layers, ens.weights, strict=True)]
        return Found(terms, ens.coef_units, prov)
    vector = run.data.tags.get(records.VECTOR_TAG)
    coef = records.finite(p.get("steering.coef"))
    mix, layers = records.literal(p.get("steering.mix")), records.literal(p.get("steering.layers"))
    if isinstance(mix, list) and mix and coef is not None:
        terms = [(str(x["vector"]), int(x["layer"]), float(x["weight"]) * coef) for x in mix]
    elif isinstance(layers, list) and layers and vector:
        ws = records.literal(p.get("steering.weights")) or [coef] * len(layers)
        terms = [(vector, int(la), float(w)) for la, w in zip(layers, ws, strict=True)]
    elif (
        vector
        and coef is not None
        and (layer := records.as_int(p.get("steering.layer"))) is not None
    ):
        terms = [(vector, layer, coef)]
    else:
        raise LoadError(f"run {run.info.run_id} records no vector file, layer and coefficient")
    return Found(terms, units, prov)
