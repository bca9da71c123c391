"""MLflow tracking, and the results records (`steerlab.records`) written to and read back from it.

A store is a folder (`paths.root`: a sqlite database and an artifact folder under `mlruns/`) or
the URL of an MLflow tracking server (`tracking.uri=http://host:5000`, for many workers and
hosts; transient HTTP errors are retried by MLflow's client). mlflow is imported lazily (it
costs seconds) and its per-run link printing is silenced.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from steerlab import records, stats
from steerlab.config import plain, position_of, root_of
from steerlab.records import Key, Sweep, Trial

Store = Path | str  # a root folder (local sqlite store) or a tracking server's URL
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, no metric columns);
# "custom_model_development" ("Machine learning" in the UI) opens the classic runs table
EXPERIMENT_KIND = "mlflow.experimentKind"
RUNS_VIEW_KIND = "custom_model_development"


def _quiet() -> None:
    """No per-run link lines or artifact progress bars (set before mlflow is imported); a
    server that does not answer is retried a few times, not for minutes."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    # its store logs a traceback for every database error, the HTTP pool a line for every
    # retry; steerlab reports a failure in one line, its retries summed up (`why_failed`)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def why_failed(e: BaseException, store: Store) -> str:
    """A tracking failure in a few words: a silent server by URL and retries, else one line."""
    from steerlab.config import redact
    from steerlab.errors import first_line

    unreachable = ("Max retries exceeded", "Connection refused", "NewConnectionError")
    if isinstance(store, str) and any(w in str(e) for w in unreachable):
        tries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
        return f"MLflow at {redact(store)} does not answer ({tries} retries)"
    return f"{type(e).__name__}: {first_line(e, '')}"[:200]


def store_of(cfg: DictConfig) -> Store:
    """Where this run's results go: `tracking.uri`, else the sqlite store under paths.root."""
    return str(cfg.tracking.uri) if cfg.tracking.uri else root_of(cfg)


def tracking_uri(store: Store) -> str:
    if isinstance(store, Path):
        return f"sqlite:///{(store / 'mlruns' / 'mlflow.db').resolve()}"
    return store


def client(store: Store) -> Any:
    """An MlflowClient on this store (creating a local store's folder and database once)."""
    _quiet()
    import mlflow

    if isinstance(store, Path):
        _create_local(tracking_uri(store))
    mlflow.set_tracking_uri(tracking_uri(store))
    return mlflow.MlflowClient(tracking_uri(store))


@functools.cache
def _create_local(uri: str) -> None:
    """Create (migrate) a local sqlite store under a file lock, once per process: workers that
    start together on a new root would otherwise run MLflow's migrations at the same time."""
    import fcntl

    import mlflow

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_store(store: Store) -> None:
    """The store answers, or a one-line ConfigError naming it, before any work (a sqlite file
    is read directly first: MLflow retries an unusable one for minutes)."""
    from steerlab.errors import ConfigError

    where = tracking_uri(store)
    fix = "move the broken file away" if where.startswith("sqlite:///") else "check the server"
    try:
        if where.startswith("sqlite:///"):
            _check_sqlite(Path(where.removeprefix("sqlite:///")))
        client(store).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure: the store is unusable
        reason = why_failed(e, store)
        raise ConfigError(f"tracking store {where} is not usable ({reason}); {fix}") from None


def _check_sqlite(db: Path) -> None:
    """A sqlite store that exists is a file that opens and reads within seconds."""
    import sqlite3

    if db.exists():  # a folder in its place fails at once too
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            c.execute("select count(*) from sqlite_master").fetchone()


def experiment_id(store: Store, name: str) -> str:
    """Get or create an experiment; a local store keeps its artifacts in `mlruns/artifacts`
    (a server decides where its artifacts go). It opens on MLflow 3's runs table
    (`mlflow.experimentKind`), unless someone chose another kind in the UI."""
    c = client(store)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND not in exp.tags:  # made by an earlier version
            racing(c.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND, RUNS_VIEW_KIND)
        return exp.experiment_id
    location = (
        (store / "mlruns" / "artifacts").resolve().as_uri() if isinstance(store, Path) else None
    )
    try:
        return c.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND: RUNS_VIEW_KIND}
        )
    except Exception:  # noqa: BLE001 - created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


def racing(write: Callable[..., Any], *args: Any) -> Any:
    """`write(*args)` (a tag set), safe when workers set one new tag at once: the store inserts
    a new tag, and all but one insert fail on its key; set again, it is an update."""
    for attempt in range(3):
        try:
            return write(*args)
        except Exception as e:
            if attempt == 2 or not any(w in str(e).lower() for w in ("unique", "duplicate")):
                raise


def rounded(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metrics as a person reads them: scores (0-100) to 2 decimals, coefficients to 4
    significant digits; counts, layers and trial numbers stay whole. None is left out."""
    out = {}
    for k, v in metrics.items():
        if v is None:
            continue
        x = float(v)
        out[k] = float(f"{x:.4g}") if "coef" in k else round(x, 2)
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": value}, values stringified as MLflow params need."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten(v, key + ".")
        else:
            out[key] = str(v)[:6000]
    return out


def experiment_name(cfg: DictConfig) -> str:
    return cfg.tracking.experiment or f"{cfg.model.name}/{cfg.trait.name}"


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """The config as MLflow params, plus the `resolved.*` values a report groups sweeps by
    (`records.Sweep` reads them back)."""
    params = plain(cfg)
    resolved = {
        "position": position_of(cfg),
        "source": cfg.extraction.source,
        "method": cfg.extraction.method,
        "component": cfg.steering.component,
    }
    if cfg.steering.mix:
        resolved |= {"source": "mix", "position": "mix", "method": "mix"}
    elif cfg.steering.vector:  # describe the given file, not the unused extraction settings
        side = Path(cfg.steering.vector).expanduser().with_suffix(".json")
        meta = json.loads(side.read_text()) if side.is_file() else {}
        resolved |= {k: meta.get(k, "?") for k in ("source", "position", "method")}
        resolved["component"] = meta.get("component", cfg.steering.component)
    params["resolved"] = resolved
    return params


@contextmanager
def run(
    store: Store,
    experiment: str,
    name: str,
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    span: tuple[float, float] | None = None,
) -> Iterator[Any]:
    """Start (or resume, with `run_id`) an MLflow run; yields the `mlflow` module.

    `span`: (start, end) in seconds since the epoch: what the run's start and end times (its
    duration in the UI) say, e.g. a trial's batch, not the seconds it took to log it."""
    c = client(store)
    import mlflow

    kwargs: dict[str, Any] = (
        {"run_id": run_id}
        if run_id
        else {
            "experiment_id": experiment_id(store, experiment),
            "run_name": name,
            "parent_run_id": parent_run_id,
            "tags": dict(tags or {}),
        }
    )
    if span and not run_id:  # created with its start time, then resumed by the fluent API
        from mlflow.tracking.context.registry import resolve_tags  # source, user, git: as fluent

        parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        made = c.create_run(
            kwargs["experiment_id"],
            start_time=int(span[0] * 1000),
            tags=resolve_tags({**kwargs["tags"], **parent}),
            run_name=name,
        )
        kwargs = {"run_id": made.info.run_id}
    with mlflow.start_run(nested=parent_run_id is not None, **kwargs) as active:
        if params and not run_id:
            mlflow.log_params(flatten(params))
        yield mlflow
    if span and not run_id:
        c.set_terminated(active.info.run_id, "FINISHED", end_time=int(span[1] * 1000))


# ---------------------------------------------------------------------------------------------
# records in the store: a sweep is a parent run (tag steerlab.kind=sweep) whose `trials.json`
# table holds its trials, with one child run (tag steerlab.kind=trial) per trial


def log_sweep(
    mlflow: Any,
    trials: list[Trial],
    front: list[int],
    coherence_min: float = records.DEFAULT_COHERENCE_MIN,
) -> Trial | None:
    """The trial table, its Pareto frontier and the best valid trial on a parent run: its
    scores (and their CIs: `best_delta_lo`, ...) as `best_*` metrics and where it steers as
    `best.*` tags (the parent's `steering.*` params are not the best trial's: a search sets them
    per trial)."""
    put_table(mlflow, records.table(trials), "trials.json")
    put_table(mlflow, records.table([trials[i] for i in front]), "pareto.json")
    best = records.best(trials)
    if best is not None:
        mlflow.log_metrics(
            rounded(
                {
                    "best_trait": best.trait,
                    "best_coherence": best.coherence,
                    "best_delta": best.delta,
                    "best_layer": best.layer,
                    "best_coef": best.coef,
                    "best_trial": best.number,
                    **{f"best_{k}": v for k, v in stats.ci_columns(best.cis).items()},
                }
            )
        )
        racing(mlflow.set_tags, best_tags(best))  # every worker's finish sets them at once
    else:
        racing(
            mlflow.set_tag, "best.trial", f"none: no trial reached coherence >= {coherence_min:g}"
        )
    if (high := records.best_at(trials)) is not None:
        mlflow.log_metric(records.HIGH_COHERENCE_METRIC, round(float(high.delta), 2))
    return best


def log_confirmation(
    mlflow: Any,
    confirmation: stats.Confirmation,
    rows: list[dict[str, Any]],
    base_rows: list[dict[str, Any]],
) -> None:
    """A sweep's held-out re-measurement of its best trial on its parent run: `confirm_*`
    metrics, and the steered and unsteered answers with their scores (`read_sweeps` reads the
    per-question scores back from them)."""
    mlflow.log_metrics(rounded(confirmation.metrics()))
    for name, got in ((records.CONFIRMATION, rows), (records.CONFIRMATION_BASELINE, base_rows)):
        put_table(mlflow, {k: [r[k] for r in got] for k in got[0]}, name)


def put_table(mlflow: Any, table: Mapping[str, list], file: str) -> None:
    """`log_table`'s file, replaced: `log_table` appends, so a re-run study repeated its rows."""
    import tempfile

    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/{file}"
        pd.DataFrame(dict(table)).to_json(path, orient="split", index=False, date_format="iso")
        mlflow.log_artifact(path)
    tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
    kinds = json.loads(tags.get("mlflow.loggedArtifacts", "[]"))  # the UI's table views
    if (entry := {"path": file, "type": "table"}) not in kinds:
        racing(mlflow.set_tag, "mlflow.loggedArtifacts", json.dumps([*kinds, entry]))


def best_tags(best: Trial) -> dict[str, str]:
    """`best.trial`, `best.layer` and `best.coef` (or `best.weights` of an ensemble), and the
    best trial's child run."""
    tags = {"best.trial": str(best.number)}
    if best.weights:
        tags["best.weights"] = ", ".join(f"L{la}={w:.4g}" for la, w in best.weights)
    else:
        if best.layer is not None:
            tags["best.layer"] = str(best.layer)
        if best.coef is not None:
            tags["best.coef"] = f"{best.coef:.4g}"
    return tags


def all_runs(client: Any, experiment_id: str) -> list[Any]:
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


def _trial_from_child(number: str, kid: Any, cmin: float) -> Trial | None:
    """A trial from its child run alone (a sweep whose trials.json is missing)."""
    m, p = kid.data.metrics, kid.data.params
    trait, coh, delta = (records.finite(m.get(k)) for k in ("trait", "coherence", "delta"))
    if trait is None or coh is None:
        return None
    if delta is None:
        base = records.finite(m.get("baseline_trait", m.get("baseline")))
        if base is None:
            return None
        delta = trait - base
    layers, ws = (
        records.literal(p.get("steering.layers")),
        records.literal(p.get("steering.weights")),
    )
    weights: tuple[tuple[int, float], ...] = ()
    coef = records.finite(p.get("steering.coef"))
    if isinstance(layers, list) and layers:
        fill = math.nan if coef is None else coef  # no coef logged: nan weights, no crash
        ws = ws if isinstance(ws, list) and len(ws) == len(layers) else [fill] * len(layers)
        weights = tuple(sorted((int(la), float(w)) for la, w in zip(layers, ws, strict=True)))
    return Trial.of(
        records.as_int(number),
        records.as_int(p.get("steering.layer")),
        coef,
        weights,
        (trait, coh, delta),
        cmin,
        **records.child_info(kid),
    )


def _trial_from_metrics(metrics: dict[str, float], cmin: float) -> list[Trial]:
    """A sweep with neither trials.json nor child runs: its logged best_* metrics only."""
    f = records.finite
    trait, coh, delta = (f(metrics.get(f"best_{k}")) for k in ("trait", "coherence", "delta"))
    if trait is None or coh is None or delta is None:
        return []
    return [
        Trial.of(
            records.as_int(metrics.get("best_trial")),
            records.as_int(metrics.get("best_layer")),
            f(metrics.get("best_coef")),
            (),
            (trait, coh, delta),
            cmin,
        )
    ]


def read_sweeps(client: Any, experiment: str) -> list[Sweep] | None:
    """Every sweep parent run of an experiment with its trials; None if there is no experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = all_runs(client, exp.experiment_id)
    children: dict[str, dict[str, Any]] = {}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if r.data.tags.get(records.KIND) == "trial" and parent:
            number = r.data.tags.get(records.TRIAL_TAG, r.info.run_id)
            children.setdefault(parent, {})[number] = r
    sweeps = []
    for r in runs:
        if r.data.tags.get(records.KIND) != "sweep":
            continue
        params, metrics = dict(r.data.params), dict(r.data.metrics)
        cmin = records.coherence_min(params)
        kids = children.get(r.info.run_id, {})
        raw = read_artifact(client, r.info.run_id, r.info.artifact_uri, "trials.json")
        trials = records.trials_from_rows(records.table_rows(raw), cmin, kids) if raw else []
        if not trials:
            trials = [t for n, k in kids.items() if (t := _trial_from_child(n, k, cmin))]
        if not trials:
            trials = _trial_from_metrics(metrics, cmin)
        trials.sort(key=lambda t: (t.number is None, t.number or 0))
        conf = _confirmation(client, r, metrics, cmin)
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
                confirmation=conf,
            )
        )
    sweeps.sort(key=lambda s: s.run_id)
    return sweeps


def _confirmation(
    client: Any, run: Any, metrics: Mapping[str, float], cmin: float
) -> stats.Confirmation | None:
    """A sweep's held-out re-evaluation of its best trial (when its run logged one)."""
    if "confirm_n" not in metrics:
        return None
    uri, rid = run.info.artifact_uri, run.info.run_id
    rows = records.table_rows(read_artifact(client, rid, uri, records.CONFIRMATION))
    base = records.table_rows(read_artifact(client, rid, uri, records.CONFIRMATION_BASELINE))
    if not rows or not base:
        return None
    trial = records.as_int(metrics.get("confirm_trial"))
    return stats.Confirmation.of(trial, rows, base, cmin)


def read_keys(client: Any, experiment: str) -> list[Key]:
    """The per-key view of one experiment's sweeps (comparison sweeps left out)."""
    sweeps = read_sweeps(client, experiment) or []
    records.label_groups(sweeps)
    return records.group_keys(sweeps)


def vector_path(client: Any, trial: Trial, sweep: Sweep) -> str | None:
    """The vector file a trial steered with (its child run's tag, else the sweep's vector.json)."""
    if trial.vector and trial.vector != "None":
        return trial.vector
    meta = read_artifact(client, sweep.run_id, sweep.artifact_uri, "vector.json")
    return meta.get("path") if isinstance(meta, dict) else None
