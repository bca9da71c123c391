"""Section 7 of the report: combination-strategy and ensemble sweeps, each compared with the best
single vector (its best valid trial, and its best delta at high coherence, with a Pareto note)."""

from __future__ import annotations

from dataclasses import dataclass

from steerlab.combinations import STRATEGIES
from steerlab.markdown import table
from steerlab.records import (
    HIGH_COHERENCE,
    SOURCES,
    Sweep,
    Trial,
    best_of,
    key_name,
    layer_label,
    order,
)
from steerlab.report import uncertainty as uq
from steerlab.report.format import fmt_delta, fmt_score, missing, short
from steerlab.report.gather import Report


def strategy_label(s: Sweep) -> str:
    return s.strategy or "?"


def layers_label(s: Sweep) -> str:
    """`L5+L7`: the layers the sweep steers."""
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
    score: uq.Score | None = None  # the best trial, re-measured on held-out questions

    @classmethod
    def of(cls, label: str, s: Sweep) -> Row:
        t = s.best()
        score = uq.score_of(t, s) if t else None
        return cls(label, layers_label(s), s.component, t, s.delta85, s.run_id, score)


def comparison_table(rows: list[Row], ref_label: str) -> list[str]:
    """The rows, each compared with the reference row (`ref_label`) over the held-out
    questions both were confirmed on."""
    header = [
        "Config",
        "Layer(s)",
        "Component",
        "Weights / coef",
        "Trait",
        "Coh",
        "Search Δ",
        "Held-out Δ [95% CI]",
        "This − best single (paired)",
        f"Δ @ coh ≥ {HIGH_COHERENCE:g}",
        "Run",
    ]
    ref = next((r.score for r in rows if r.label == ref_label), None)
    body = []
    for r in rows:
        t = r.trial
        if t is None or r.score is None:
            scores = ["—", "—", "—", "no valid trial", "—", "—"]
        else:
            held = r.score.text() if r.score.confirmed else "—"
            p = uq.compare(r.score, ref)
            vs = "(reference)" if r.label == ref_label else uq.fmt_paired(p)
            if p is not None and r.label != ref_label:
                vs += f": {uq.verdict('this', 'best single', p)}"
            scores = [
                t.where(),
                fmt_score(t.trait),
                fmt_score(t.coherence),
                fmt_delta(t.delta),
                held,
                vs,
            ]
        body.append([r.label, r.layers, r.component, *scores, fmt_delta(r.delta85), short(r.run)])
    return table(header, body)


def pareto_note(rows: list[Row], ref_label: str) -> str:
    """Best delta at coherence >= HIGH_COHERENCE: the best single vs the best of the other rows."""
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
        return f"**Pareto note:** no run reached coherence ≥ {HIGH_COHERENCE:g}."
    return f"**Pareto note:** at coherence ≥ {HIGH_COHERENCE:g}, " + "; ".join(parts) + "."


def combined_from(sweeps: list[Sweep]) -> list[str]:
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
        return out + missing(f"No combination or ensemble sweeps (experiments: {names}).")
    out += [
        "Search Δ: each sweep's best valid trial on the search questions (the best of its "
        "trials, optimistic). Held-out Δ: that trial re-measured on questions no search asked. "
        "The paired column is this configuration minus the best single over the same held-out "
        "questions (95% Student-t CI, sign-flip permutation p); `this` or `best single` is "
        "named when the CI excludes 0.",
        "",
    ]
    by_group: dict[str, list[Sweep]] = {}
    for s in combos:
        by_group.setdefault(s.group, []).append(s)
    for group, ss in sorted(by_group.items()):
        ss.sort(key=lambda s: (order(strategy_label(s), STRATEGIES), s.run_id))
        rows = [Row.of(strategy_label(s), s) for s in ss]
        out += [f"### Combination strategies — {group}", ""]
        out += combined_from(ss)
        out += comparison_table(rows, "best_single") + ["", pareto_note(rows, "best_single"), ""]
    by_group = {}
    for s in others:
        by_group.setdefault(s.group, []).append(s)
    for group, ss in sorted(by_group.items()):
        rows = []
        for s in sorted(ss, key=lambda s: (not s.is_ensemble, s.layers(), s.method, s.run_id)):
            label = (
                f"{layers_label(s)} {s.method}"
                if s.is_ensemble
                else f"{layers_label(s)} alone ({s.method})"
            )
            rows.append(Row.of(label, s))
        ref = "Best single residual"
        b = best_of(k for k in report.keys if k.group == group and k.component == "residual")
        if b:
            k, t, s = b
            layer = layer_label(t.layer)
            score = uq.score_of(t, s)
            rows.append(Row(ref, layer, k.component, t, s.delta85, t.run_id or s.run_id, score))
        out += [f"### Ensembles — {group}", ""]
        out += comparison_table(rows, ref) + ["", pareto_note(rows, ref), ""]
    return out
