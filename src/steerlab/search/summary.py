"""What a study says while it runs and when it ends: a line per batch of trials (`Progress`) and
the closing summary (`summary_text`): counts, the best valid and strongest invalid trials with
their 95% CIs, the best valid trial and its held-out confirmation, a convergence hint, where to
look further."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from steerlab import records
from steerlab.config import position_of
from steerlab.records import Trial
from steerlab.search import liveness
from steerlab.stats import Confirmation, fmt_ci

log = logging.getLogger("steerlab.sweeper")


class Progress:
    """What a batch of trials is doing, in the log: a line when it starts (`batch 3/6 (trials
    4-5)`, K configurations x Q questions in one generate) and one when it ends (its time, the
    trials counted so far, the best valid one, an ETA from this process's batches). A batch
    takes seconds to minutes and prints nothing else."""

    def __init__(self, total: int, batch_size: int, n_questions: int, first: int = 0) -> None:
        """`first`: the questions every trial answers before pruning (0: no pruning)."""
        self.total, self.size, self.questions = total, max(1, batch_size), n_questions
        self.first = first if 0 < first < n_questions else 0
        self.n = max(1, math.ceil(total / self.size))
        self.times: list[float] = []
        self.label, self.started = "", 0.0

    def start(self, numbers: list[int], done: int) -> None:
        k = min(done // self.size + 1, self.n)
        self.label = f"batch {k}/{self.n} ({_numbers(numbers)})"
        self.started = time.time()
        how = (
            f"(the first {self.first} for all, then the rest for those not pruned)"
            if self.first
            else "in one generate, then judged"
        )
        log.info("%s: %d configuration(s) x %d question(s) %s", self.label, len(numbers),
                 self.questions, how)  # fmt: skip

    def evaluated(self) -> tuple[float, float]:
        """(start, end) of the batch's generate and judging: its trials' MLflow run times."""
        return self.started, time.time()

    def end(self, study: optuna.Study, coherence_min: float) -> None:
        took = time.time() - self.started
        self.times.append(took)
        done = liveness.counted(study)
        left = max(self.total - done, 0)
        eta = sum(self.times) / len(self.times) * math.ceil(left / self.size)
        valid = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("feasible")
        ]
        top = max(valid, key=lambda t: float(t.user_attrs["trait"]), default=None)
        best = (
            f"best valid so far: trial {top.number}, trait {float(top.user_attrs['trait']):.1f}"
            if top
            else f"no valid trial yet (coherence >= {coherence_min:g})"
        )
        cut = liveness.n_pruned(study)
        log.info(
            "%s done in %s: %d/%d trials%s; %s; eta %s",
            self.label,
            duration(took),
            done,
            self.total,
            f" ({cut} pruned)" if cut else "",
            best,
            duration(eta) if left else "0s",
        )


def numbers(ns: Iterable[int]) -> str:
    """Trial numbers as runs of consecutive ones, each once: `4`, `4-5`, `2-7, 9`."""
    runs: list[list[int]] = []
    for n in sorted(set(ns)):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _numbers(ns: list[int]) -> str:
    """`trial 4`, `trials 4-5`, `trials 4, 7`."""
    return f"trial{'s' if len(ns) > 1 else ''} {numbers(ns)}"


def duration(seconds: float) -> str:
    """`8.2s`, `1m20s`, `2h05m`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, sec = divmod(round(seconds), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


TOP_VALID, TOP_INVALID = 5, 3  # rows of the closing table
COVERED = 0.5  # at least this share of the trials valid: the coherent region is covered


@dataclass(frozen=True)
class Convergence:
    """Whether more trials would likely find a better valid configuration, and why, in a line."""

    more: bool
    text: str


def convergence(
    trials: Sequence[tuple[bool, float]], batch: int, covered: float = COVERED
) -> Convergence:
    """The study's own verdict on its budget, from its trials (valid, trait) in the order they
    were asked. Chosen by the landscape replay (docs/search.md), where when the best came (last
    batch or not) did not predict whether twice the trials lower the regret, but how much of
    the search was coherent did a little: fewer than `covered` of the trials valid means the
    coherent region is barely explored and more trials would likely help; otherwise they would
    likely change little (a noisy pick on few questions limits the regret, not the trials)."""
    n = len(trials)
    valid = [i for i, (ok, _) in enumerate(trials) if ok]
    if not valid:
        return Convergence(True, f"no valid trial in {n}: more trials, or a narrower coefficient "
                                 "range, would likely help")  # fmt: skip
    best = max(valid, key=lambda i: (trials[i][1], -i))  # the first to reach the best trait
    late = " (in the last batch)" if best >= n - max(batch, 1) else ""
    said = f"{len(valid)} of {n} trials valid, the best at {best + 1}{late}"
    if len(valid) < covered * n:
        return Convergence(True, f"{said}: more trials, or a narrower coefficient range, would "
                                 "likely help")  # fmt: skip
    return Convergence(False, f"{said}: more trials would likely change little; more questions "
                              "per trial would tell the best apart better")  # fmt: skip


def summary_text(
    cfg: DictConfig,
    trials: list[Trial],
    best: Trial | None,
    failed: int,
    interrupted: int,
    storage: str,
    ui: str = "",
    confirmation: Confirmation | None = None,
    hint: str = "",
    pruned: int = 0,
) -> str:
    """The study's closing lines: counts (`pruned`: trials stopped over questions, never
    results); the best valid trials, then the strongest invalid ones (a high trait score bought
    with incoherent text), each marked with why it does not count;
    the best valid trial; the convergence `hint`; where to look further."""
    study_of = cfg.combine.strategy or (
        f"{cfg.extraction.source} {position_of(cfg)} {cfg.extraction.method}"
    )
    cmin = float(cfg.search.coherence_min)
    more = f", {interrupted} interrupted" if interrupted else ""
    valid = sorted((t for t in trials if t.valid), key=records.rank, reverse=True)
    invalid = sorted((t for t in trials if not t.valid), key=lambda t: (-t.trait, t.number or 0))
    lines = [
        f"\n== {cfg.trait.name} [{study_of} {cfg.steering.component}, {cfg.search.sampler}]: "
        f"{len(trials)} trials done, {f'{pruned} pruned, ' if pruned else ''}{failed} failed{more} "
        f"({len(valid)} valid: mean coherence "
        f">= {cmin:g}); study {storage}",
        f"{'trial':>5} {'where':>24} {'trait':>6} {'coh':>6} {'delta':>6} {'delta 95% CI':>14}",
    ]

    def row(t: Trial, note: str) -> str:
        return (
            f"{t.number:>5} {t.where():>24} {t.trait:>6.1f} {t.coherence:>6.1f} "
            f"{t.delta:>+6.1f} {fmt_ci(t.delta_ci):>14}  {note}"
        ).rstrip()

    for t in valid[:TOP_VALID]:
        lines.append(row(t, "<- best valid" if t is best else ""))
    if len(valid) > TOP_VALID:
        lines.append(f"{'':>5} ... {len(valid) - TOP_VALID} more valid")
    for t in invalid[:TOP_INVALID]:
        lines.append(row(t, f"x invalid (coherence {t.coherence:.1f} < {cmin:g})"))
    if len(invalid) > TOP_INVALID:
        lines.append(f"{'':>5} ... {len(invalid) - TOP_INVALID} more invalid")
    if best:
        what = (
            f"weights {best.row()['weights']}"
            if best.weights
            else f"layer {best.layer} coef {best.coef:.3g}"
        )
        border = " - borderline: its CI straddles the threshold" if best.borderline else ""
        lines.append(
            f"best valid: trial {best.number}, {what} -> delta {best.delta:+.1f} "
            f"{fmt_ci(best.delta_ci)} (trait {best.trait:.1f}, coherence "
            f"{best.coherence:.1f} {fmt_ci(best.coherence_ci, '')}{border}); 95% CIs over the "
            "search questions, the best of all trials on them (optimistic)"
        )
        if confirmation is not None and confirmation.delta is not None:
            c = confirmation
            ok = "valid" if c.valid else f"NOT valid (coherence < {cmin:g})"
            ok += ", borderline" if c.borderline else ""
            lines.append(
                f"confirmed on {c.n} held-out question(s): delta {c.delta:+.1f} "
                f"{fmt_ci(c.delta_ci)}, coherence {c.coherence_mean:.1f} "
                f"{fmt_ci(c.coherence_ci, '')} ({ok})"
            )
    else:
        lines.append(f"no trial reached mean coherence >= {cmin:g}")
    if hint:
        lines.append(f"convergence: {hint}")
    if ui:
        lines.append(ui)
    return "\n".join(lines)
