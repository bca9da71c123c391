"""`python -m steerlab.report`: the command line that builds the report of a store, draws its
figures, writes `<out>/report.md` and logs that folder as a report run in the main experiment."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from steerlab import prog
from steerlab.records import KIND
from steerlab.report.figures import FIGURES, draw
from steerlab.report.gather import build
from steerlab.report.sections import render


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog("steerlab.report"),
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
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="an MLflow tracking server's URL (e.g. http://127.0.0.1:5000) instead of --root",
    )
    p.add_argument("--no-log", action="store_true", help="do not log the report as an MLflow run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.root.expanduser().resolve()
    store = args.tracking_uri or root
    if store is root and not (root / "mlruns" / "mlflow.db").is_file():
        print(f"no MLflow store at {root / 'mlruns' / 'mlflow.db'}", file=sys.stderr)
        return 2
    if not args.experiment.replace(",", "").strip():
        print("--experiment must name at least one experiment", file=sys.stderr)
        return 2
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in FIGURES:
        (out / stale).unlink(missing_ok=True)
    report = build(store, args.experiment, args.experiments.split(","))
    report.figures = draw(report, out)
    path = out / "report.md"
    experiment = args.experiment.split(",")[0].strip()
    if args.no_log or report.experiments[0][1] is None:
        path.write_text(render(report))
        why = "" if args.no_log else f" (not logged: no experiment {experiment!r})"
        print(f"report: {path}{why}")
        return 0
    from steerlab import tracking

    with tracking.run(store, experiment, "report", tags={KIND: "report"}) as mlflow:
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
