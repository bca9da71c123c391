"""A sweep's runs in MLflow after its trials: the best child flagged, the shared runs-table
view, and the runs a killed worker left behind closed (kept apart from `tracking`, which writes
and reads records)."""

from __future__ import annotations

import json
from typing import Any

from steerlab import records
from steerlab.tracking import Store, client, racing

BEST_TAG = "steerlab.best"  # "true" on the child run of the sweep's best valid trial
# MLflow's shared views: an experiment tag `mlflow.sharedViewState.<key>` holding the runs
# table's state, opened by `?viewStateShareKey=<key>` (3.17 sets no default columns from tags;
# a plain visit shows the browser's own last view)
VIEW_KEY = "steerlab"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_COLUMNS = (  # a trial's scores and flag; the parent's best trial (its page has the rest)
    "metrics.`objective`",
    "metrics.`trait`",
    "metrics.`coherence`",
    "metrics.`delta`",
    "metrics.`delta_lo`",  # its 95% CI over the questions
    "metrics.`delta_hi`",
    "metrics.`valid`",
    "metrics.`confirm_delta`",  # a parent's best trial on held-out questions
    "tags.`steerlab.best`",
    "tags.`best.trial`",
    "tags.`best.layer`",
    "tags.`best.coef`",
)


def mark_best(store: Store, parent_run_id: str, number: int | None) -> str | None:
    """Tag the best trial's child run `steerlab.best=true` and untag any other (the best moves
    when a resumed sweep finds a better trial); returns the best child's run id."""
    c = client(store)
    exp = c.get_run(parent_run_id).info.experiment_id
    kids = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    for r in c.search_runs([exp], f"{kids} and tags.`{BEST_TAG}` = 'true'", max_results=1000):
        if r.data.tags.get(records.TRIAL_TAG) != str(number):
            c.delete_tag(r.info.run_id, BEST_TAG)
    if number is None:
        return None
    query = f"{kids} and tags.`{records.TRIAL_TAG}` = '{number}' and attributes.status = 'FINISHED'"
    found = c.search_runs([exp], query, max_results=1)
    if not found:
        return None
    racing(c.set_tag, found[0].info.run_id, BEST_TAG, "true")  # every worker's finish does
    return found[0].info.run_id


def runs_view(store: Store, experiment: str, parent_run_id: str, searched: list[str]) -> str:
    """Record the experiment's runs-table view as an MLflow shared view (scores, validity, the
    best-trial flag, the searched `steering.*` params; this sweep's trials expanded under its
    parent; sorted by `objective`, so the best valid trial comes first) and return its page,
    `#/experiments/<id>/runs?...`.

    `workflowType=machine_learning` opens MLflow 3.17's "Model training" UI (its runs table);
    without it a browser opens the GenAI view, whatever the experiment's kind tag says."""
    c = client(store)
    exp = c.get_experiment_by_name(experiment)
    try:
        old = json.loads(exp.tags.get(VIEW_TAG, "{}"))
    except ValueError:
        old = {}
    params = [c for c in old.get("selectedColumns", []) if c.startswith("params.")]
    params += [f"params.`steering.{k}`" for k in searched]  # the experiment's other sweeps' too
    columns = list(dict.fromkeys([*VIEW_COLUMNS, *params]))
    expanded = {**old.get("runsExpanded", {}), parent_run_id: True}
    state = {
        "selectedColumns": columns,
        "runsExpanded": dict(list(expanded.items())[-100:]),  # the latest sweeps
        "orderByKey": "metrics.`objective`",
        "orderByAsc": False,
        "searchFilter": "",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
    }
    racing(c.set_experiment_tag, exp.experiment_id, VIEW_TAG, json.dumps(state))
    return (
        f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={VIEW_KEY}"
    )


def run_exists(store: Store, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client(store).get_run(run_id)
    except MlflowException:
        return False
    return True


def _children(
    store: Store, parent_run_id: str, status: str
) -> tuple[Any, list[tuple[Any, int | None]]]:
    """A client and the parent's child runs whose status matches `status` (e.g. "= 'RUNNING'"),
    each with its trial number (None if it has none)."""
    c = client(store)
    exp = c.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status {status}"
    found = c.search_runs([exp], query, max_results=50000)
    return c, [(r, records.as_int(r.data.tags.get(records.TRIAL_TAG))) for r in found]


class Logged(dict[int, list[str]]):
    """The FINISHED child runs under a sweep's parent, by trial number (their run ids, sorted),
    and `best`: the ids of those flagged as the study's best."""

    best: set[str]


def logged_trials(store: Store, parent_run_id: str) -> Logged:
    """The FINISHED child runs under the sweep's parent run, by trial number."""
    _, kids = _children(store, parent_run_id, "= 'FINISHED'")
    out = Logged()
    out.best = {r.info.run_id for r, _ in kids if r.data.tags.get(BEST_TAG) == "true"}
    for r, n in kids:
        if n is not None:
            out.setdefault(n, []).append(r.info.run_id)
    for ids in out.values():
        ids.sort()
    return out


def mirror(store: Store, logged: Logged, complete: set[int], live: set[int]) -> set[int]:
    """Make MLflow mirror the study, one FINISHED run per recorded trial (`complete`: COMPLETE,
    or pruned over questions); the numbers that have theirs. `logged` is read before the study's
    `complete` and `live` (RUNNING or WAITING) trials: a live trial's run may be one whose tell
    is still to come, and is left alone. Deleted: the runs of a trial that ended otherwise (its
    tell failed, the database down; it was closed and re-tried) and all but the first run id of
    a recorded trial logged twice (workers that logged a missing trial at once). Every worker
    keeps the same one, so two cleaning at once never delete both; the best flag moves to it."""
    c = client(store)
    for n, ids in logged.items():
        if n in live:
            continue
        extra = ids[1:] if n in complete else ids
        for run_id in extra:
            if n in complete and run_id in logged.best:
                racing(c.set_tag, ids[0], BEST_TAG, "true")
            c.delete_run(run_id)
    return {n for n in logged if n in complete}


def drop_unfinished(store: Store, parent_run_id: str, numbers: set[int]) -> None:
    """Delete the child runs of these trials that did not finish (a logging that failed half
    way): a completed trial's one run is the FINISHED one logged from its folder."""
    c, kids = _children(store, parent_run_id, "!= 'FINISHED'")
    for r, n in kids:
        if n in numbers:
            c.delete_run(r.info.run_id)


def close_orphans(store: Store, parent_run_id: str, running: set[int]) -> int:
    """Close the child runs a killed worker left RUNNING (their trial is no longer in flight)
    as KILLED; returns how many."""
    c, kids = _children(store, parent_run_id, "= 'RUNNING'")
    closed = 0
    for r, number in kids:
        if number is not None and number in running:
            continue
        c.set_tag(r.info.run_id, "steerlab.interrupted", "true")
        c.set_terminated(r.info.run_id, "KILLED")
        closed += 1
    return closed
