"""MLflow tracking under `<paths.root>/mlruns/`: a sqlite store plus an artifact folder.

mlflow is imported lazily (it costs seconds) and its per-run link printing is silenced.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def client(root: Path) -> Any:
    """An MlflowClient on this root's store (creating the folder)."""
    import mlflow

    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(root))
    return mlflow.MlflowClient(tracking_uri(root))


def experiment_id(root: Path, name: str) -> str:
    """Get or create an experiment whose artifacts live under `<root>/mlruns/artifacts`."""
    c = client(root)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (root / "mlruns" / "artifacts").resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


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


@contextmanager
def run(
    root: Path,
    experiment: str,
    name: str,
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Start (or resume, with `run_id`) an MLflow run; yields the `mlflow` module."""
    import mlflow

    client(root)
    kwargs: dict[str, Any] = (
        {"run_id": run_id}
        if run_id
        else {
            "experiment_id": experiment_id(root, experiment),
            "run_name": name,
            "parent_run_id": parent_run_id,
            "tags": dict(tags or {}),
        }
    )
    with mlflow.start_run(nested=parent_run_id is not None, **kwargs):
        if params and not run_id:
            mlflow.log_params(flatten(params))
        yield mlflow
