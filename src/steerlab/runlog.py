"""A trial's MLflow child run written in a handful of store calls (a sweep writes one per trial,
so the fluent API's per-call lookups would cost more than the trial's bookkeeping)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steerlab.stop import held
from steerlab.tracking import Store, client, experiment_id, flatten


def log_child(
    store: Store,
    experiment: str,
    name: str,
    parent_run_id: str | None,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tables: Mapping[str, Mapping[str, list]] | None = None,
    dicts: Mapping[str, Any] | None = None,
    folder: tuple[Path, str] | None = None,
    span: tuple[float, float] | None = None,
) -> str:
    """A finished run in few store calls (a sweep logs many): created with its tags and start
    time, params and metrics in one batch, tables, dicts and a folder as artifacts, then ended
    (FAILED if any of that failed; KILLED and tagged `steerlab.interrupted` if a signal stopped
    it). `span` as in `run`. Returns its id."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking.context.registry import resolve_tags

    c = client(store)
    start, end = span or (time.time(), None)
    parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    run_id = None
    try:  # a stop lands between database calls, never inside one (which would keep its lock)
        with held():
            run_id = c.create_run(
                experiment_id(store, experiment),
                start_time=int(start * 1000),
                tags=resolve_tags({**tags, **parent}),
                run_name=name,
            ).info.run_id
        with held():
            now = int(time.time() * 1000)
            c.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in flatten(params).items()],
            )
        with held():  # small files, and the database reads and tags that come with them
            for file, table in (tables or {}).items():
                c.log_table(run_id, dict(table), file)
            for file, d in (dicts or {}).items():
                c.log_dict(run_id, d, file)
            where = c.get_run(run_id).info.artifact_uri if folder else ""
        if folder:  # the long copy, which a stop may cut: no database call inside it
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            repo = get_artifact_repository(where, tracking_uri=c.tracking_uri)
            repo.log_artifacts(str(folder[0]), folder[1])
    except BaseException as e:
        if run_id is None:
            raise
        if stopped := _signalled(e):  # a stop is no failure of the trial: KILLED, as any stop
            c.set_tag(run_id, "steerlab.interrupted", "true")
        c.set_terminated(run_id, "KILLED" if stopped else "FAILED")
        raise
    with held():
        c.set_terminated(run_id, "FINISHED", end_time=int((end or time.time()) * 1000))
    return run_id


def _signalled(e: BaseException | None) -> bool:
    """Whether a signal's exception (not an `Exception`: a stop or Ctrl-C) is in `e`'s chain,
    where a store call that was interrupted may have wrapped it."""
    while e is not None:
        if not isinstance(e, Exception):
            return True
        e = e.__cause__ or e.__context__
    return False
