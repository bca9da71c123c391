"""The numbers the report states and how sure they are: each chosen configuration's confirmed
delta (its held-out re-measurement, else its search score, marked), paired comparisons of two
configurations over the same held-out questions, the decisions drawn from them (a winner only
when the 95% CI of the difference excludes 0, its permutation p shown beside it; "Natural %"
only over an instruction delta whose CI lies above 0), and the summary paragraph the report
opens with. Pure: no I/O."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from steerlab import stats
from steerlab.records import Key, Sweep, Trial, best_of
from steerlab.report.format import fmt_delta
from steerlab.stats import Confirmation, Interval, Paired, fmt_ci


@dataclass(frozen=True)
class Score:
    """What the report states for a configuration chosen by its search score: its held-out
    re-measurement when there is one (`confirmation`), else its search numbers, marked."""

    trial: Trial  # the search's best valid trial
    confirmation: Confirmation | None = None  # with at least one held-out question

    @property
    def confirmed(self) -> bool:
        return self.confirmation is not None

    @property
    def measured(self) -> Confirmation | Trial:
        """Where the stated numbers come from: the held-out re-measurement, else the search."""
        return self.confirmation or self.trial

    @property
    def delta(self) -> float:
        c = self.confirmation
        return c.delta if c is not None and c.delta is not None else self.trial.delta

    @property
    def ci(self) -> Interval | None:
        return self.measured.delta_ci

    @property
    def borderline(self) -> bool:
        return self.measured.borderline

    @property
    def valid(self) -> bool:
        return self.measured.valid

    def text(self) -> str:
        """`+4.1 [-1.0, +9.3]`, and `search` when it is the (optimistic) search score."""
        flags = [] if self.confirmed else ["search"]
        flags += ["borderline coherence"] if self.borderline else []
        flags += [] if self.valid else ["coherence < min on held-out"]
        tail = f" ({', '.join(flags)})" if flags else ""
        return f"{fmt_delta(self.delta)} {fmt_ci(self.ci)}{tail}"


def score_of(trial: Trial, sweep: Sweep) -> Score:
    c = sweep.confirmed(trial)
    return Score(trial, c if c is not None and c.n else None)


def best_score(keys: Iterable[Key]) -> tuple[Key, Score, Sweep] | None:
    """The configuration the searches chose over several keys (best search delta), scored."""
    b = best_of(keys)
    return None if b is None else (b[0], score_of(b[1], b[2]), b[2])


def held_out_baseline(scores: Iterable[Score]) -> float | None:
    """The unsteered mean trait on the held-out questions (the same for every confirmed key)."""
    c = next((s.confirmation for s in scores if s.confirmation), None)
    return statistics.fmean(c.baseline.values()) if c and c.baseline else None


def compare(a: Score | None, b: Score | None) -> Paired | None:
    """`a − b` over the held-out questions both were confirmed on (per-question deltas)."""
    if a is None or b is None or a.confirmation is None or b.confirmation is None:
        return None
    return stats.paired(a.confirmation.deltas, b.confirmation.deltas)


def fmt_p(p: float) -> str:
    """3 decimals near the 0.05 line (p=0.047 must not read as p=0.05), 2 above 0.1."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def fmt_paired(p: Paired | None) -> str:
    """`+12.0 [+3.1, +20.4], p=0.02, n=8`; `—` without a paired comparison."""
    if p is None:
        return "—"
    return f"{fmt_delta(p.diff)} {fmt_ci(p.ci)}, {fmt_p(p.p)}, n={p.n}"


def verdict(a: str, b: str, p: Paired | None) -> str:
    """The name of the better one only when a difference is detected (`Paired.detected`)."""
    if p is None:
        return "untested (no held-out confirmation of both)"
    if not p.detected:
        return f"no difference detected (n={p.n})"
    return a if p.diff > 0 else b


def natural_pct(inst: Score | None, nat: Score | None) -> str:
    """Natural delta / instruction delta, only where the instruction delta's CI lies above 0
    (a ratio over a delta that may be 0 or negative means nothing) and both are measured alike
    (held-out, or both search scores)."""
    if inst is None or nat is None:
        return "—"
    if inst.confirmed != nat.confirmed:
        return "n/a: only one Δ is held-out"
    if inst.ci is None:
        return "n/a: no CI for the instruction Δ"
    if inst.ci[0] <= 0:
        where = "includes 0" if inst.ci[1] >= 0 else "is below 0"
        return f"n/a: instruction Δ CI {fmt_ci(inst.ci)} {where}"
    return f"{round(100 * nat.delta / inst.delta)}%"


@dataclass(frozen=True)
class Cross:
    """One trait of the cross-trait comparison: each source's chosen configuration, scored,
    and their paired difference (natural − instruction) on the held-out questions."""

    group: str
    inst: tuple[Key, Score, Sweep] | None
    nat: tuple[Key, Score, Sweep] | None

    @cached_property  # an interval and a permutation test: computed once
    def paired(self) -> Paired | None:
        return compare(self.nat[1] if self.nat else None, self.inst[1] if self.inst else None)

    @property
    def winner(self) -> str:
        if not (self.inst and self.nat):
            return "—"
        return verdict("natural", "instruction", self.paired)

    @property
    def pct(self) -> str:
        return natural_pct(self.inst[1] if self.inst else None, self.nat[1] if self.nat else None)


def cross(groups: dict[str, list[Key]]) -> list[Cross]:
    return [
        Cross(
            group,
            best_score(k for k in ks if k.source == "instruction"),
            best_score(k for k in ks if k.source == "natural"),
        )
        for group, ks in groups.items()
    ]


def shrinkage(keys: Iterable[Key]) -> str | None:
    """How much the keys' best search scores fell when re-measured on held-out questions (the
    winner's curse, measured): one sentence, None without confirmations."""
    scores = [s for k in keys if (b := k.best()) and (s := score_of(*b)).confirmed]
    if not scores:
        return None
    drops = [s.trial.delta - s.delta for s in scores]
    lost = sum(1 for s in scores if not s.valid)
    return (
        f"Re-measured on held-out questions, the {len(scores)} keys' best configurations moved "
        f"by {fmt_delta(-statistics.fmean(drops))} Δ points on average (median "
        f"{fmt_delta(-statistics.median(drops))}; {sum(d > 0 for d in drops)} fell, "
        f"{sum(d < 0 for d in drops)} rose); {lost} fell below the coherence threshold there."
    )


def summary(rows: list[Cross], keys: Iterable[Key] = ()) -> list[str]:
    """The report's opening paragraph: per trait, which source wins, by how much, how sure;
    then how far the search's best scores shrank on held-out questions."""
    both = [c for c in rows if c.inst and c.nat]
    if not both:
        return []
    parts = []
    for c in both:
        assert c.inst and c.nat
        p, (_, si, _), (_, sn, _) = c.paired, c.inst, c.nat
        scores = f"natural {sn.text()} vs instruction {si.text()}"
        if p is None:
            parts.append(f"**{c.group}**: {scores}; not compared (no held-out confirmation)")
        elif p.detected:
            parts.append(
                f"**{c.group}**: {c.winner} steers more, by {fmt_delta(abs(p.diff))} "
                f"{fmt_ci(_abs_ci(p))} ({fmt_p(p.p)}, n={p.n}); {scores}"
            )
        else:
            parts.append(
                f"**{c.group}**: no difference detected between natural and instruction "
                f"(difference {fmt_paired(p)}); {scores}"
            )
    won = sum(1 for c in both if c.paired and c.paired.detected)
    lead = (
        f"Natural vs instruction vectors, each source's best configuration re-measured on "
        f"held-out questions (Δ over the unsteered baseline, 95% Student-t CI; `search` marks "
        f"an unconfirmed search score): a winner is named for {won} of {len(both)} trait(s), "
        "where the CI of the paired difference excludes 0 (sign-flip permutation p beside it)."
    )
    shrunk = shrinkage(keys)
    return [lead, "", *(f"- {x}." for x in parts), "", *([shrunk, ""] if shrunk else [])]


def _abs_ci(p: Paired) -> Interval:
    return p.ci if p.diff > 0 else (-p.ci[1], -p.ci[0])
