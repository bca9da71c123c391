"""Markdown report of the sweeps in an MLflow store: `python -m steerlab.report`.

Reads sweep parent runs (tag `steerlab.kind=sweep`) and their trial child runs, and writes
`<out>/report.md` plus PNG figures next to it, then logs that folder as an artifact of a new run
(tag `steerlab.kind=report`) in the main experiment. Every table row names the run (first 8
characters of its id) its numbers came from, and the report names the tracking URI.

The pipeline, each step testable on its own:
    collect  tracking.read_sweeps / read_keys   the store -> records (Sweep, Key, Trial)
    gather   gather.build, gather.gather        + vectors' cosines, steered answers, extraction
    render   sections.render                    Report -> Markdown, no I/O
    draw     figures.draw                       Report -> PNG figures

Modules: `analyse` (pure analysis over records), `uncertainty` (held-out numbers, CIs, paired
comparisons and the decisions drawn from them, the summary paragraph), `gather` (the Report and
the artifacts it reads), `sections` (sections 1-6 and 8, and `render`), `comparisons` (section
7), `figures`, `format` (number and run-id formatting), `cli` (the command line).

A trial counts ("valid") only when its mean coherence is at least its sweep's
`search.coherence_min`; every "best" is the best valid trial by delta over the baseline
(`steerlab.records` owns those rules), and is then stated as re-measured on held-out questions
(its sweep's confirmation) with a 95% CI.
"""

from steerlab.report.cli import main

__all__ = ["main"]
