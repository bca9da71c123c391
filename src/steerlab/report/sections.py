"""The report's Markdown, with no I/O: sections 1-6 and 8 over a Report, and `render`, which puts
the header, every section (7 is `comparisons.section_combinations`) and the figures together."""

from __future__ import annotations

from steerlab.markdown import cell, table
from steerlab.records import (
    METHODS,
    SOURCES,
    Key,
    best_of,
    finite,
    fmt_coef,
    layer_label,
    order,
    position_order,
)
from steerlab.report import uncertainty as uq
from steerlab.report.analyse import WINDOW, baseline, groups, operating_range
from steerlab.report.comparisons import section_combinations
from steerlab.report.format import fmt_delta, fmt_score, layer_ranges, missing, plural, short
from steerlab.report.gather import N_EXTRACTION, N_QUESTIONS, Report
from steerlab.stats import fmt_ci


def section_cross(keys: list[Key], rows: list[uq.Cross]) -> list[str]:
    """`rows`: `uncertainty.cross` of the keys (the summary paragraph reads the same ones)."""
    out = ["## 1. Cross-trait results", ""]
    gs = groups(keys)
    if not gs:
        return out + missing("No sweep runs (tag steerlab.kind=sweep) to report.")
    out.append(
        "Each source's best configuration is chosen by its search score (the best valid trial "
        "on the search questions), then stated as **re-measured on held-out questions** "
        "(`confirm.*`), Δ over the unsteered answers to the same questions, with a 95% "
        "Student-t CI over questions; `search` marks a number with no confirmation (optimistic: "
        "the best of many on the questions that scored it). Natural − Instruction is paired "
        "over the same held-out questions (t CI, and a sign-flip permutation p shown beside "
        "it). A winner is named when that CI excludes 0. Natural % = natural Δ / instruction Δ, "
        "only where the instruction Δ's CI lies above 0. Baseline: mean `baseline_trait` of the "
        "trait's sweeps (search questions), and the unsteered mean on the held-out questions."
    )
    out.append("")
    body = []
    for c in rows:
        base, n = baseline(gs[c.group])
        held = uq.held_out_baseline(b[1] for b in (c.inst, c.nat) if b)
        runs = ", ".join(
            f"{lab} {short(b[1].trial.run_id or b[2].run_id)}"
            for lab, b in (("inst", c.inst), ("nat", c.nat))
            if b
        )
        body.append(
            [
                c.group,
                (f"{fmt_score(base)}" if base is None else f"{base:.1f} (n={n})")
                + ("" if held is None else f"; held-out {held:.1f}"),
                *(scored(b[0], b[1]) if b else "—" for b in (c.inst, c.nat)),
                uq.fmt_paired(c.paired),
                c.winner,
                c.pct,
                runs or "—",
            ]
        )
    header = ["Trait", "Baseline", "Best Instruction", "Best Natural", "Natural − Instruction"]
    return out + table([*header, "Winner", "Natural %", "Runs"], body) + [""]


def scored(key: Key, score: uq.Score) -> str:
    """`+4.1 [-1.0, +9.3] (search +12.3; L5, c0.2, mean_diff, response[:])`."""
    t = score.trial
    extra = "" if key.component == "residual" else f", {key.component}"
    search = f"search {fmt_delta(t.delta)}; " if score.confirmed else ""
    return f"{score.text()} ({search}{t.where()}, {key.method}, {key.position}{extra})"


def section_positions(keys: list[Key]) -> list[str]:
    out = ["## 2. Position effects (natural vectors)", ""]
    body: list[str] = []
    for group, ks in groups(keys).items():
        nat = [k for k in ks if k.source == "natural"]
        if not nat:
            continue
        picks = {
            pos: uq.best_score(k for k in nat if k.position == pos)
            for pos in sorted({k.position for k in nat}, key=position_order)
        }
        top = max(
            (p for p in picks if picks[p]), key=lambda p: picks[p][1].trial.delta, default=None
        )
        rows = []
        for pos, b in picks.items():
            if b is None:
                rows.append([pos, "—", "—", "—", "—", "—", "no valid trial"])
                continue
            k, sc, sw = b
            if pos == top:
                vs = "(the search's best position)"
            else:
                p = uq.compare(picks[top][1], sc) if top else None
                vs = uq.verdict(top or "", pos, p)
                vs = vs if p is None else f"{uq.fmt_paired(p)}: {vs}"
            rows.append(
                [
                    pos,
                    sc.text(),
                    fmt_delta(sc.trial.delta),
                    sc.trial.where().split(",")[0],
                    k.method,
                    vs,
                    short(sc.trial.run_id or sw.run_id),
                ]
            )
        body += [f"### {group}", ""]
        header = ["Position", "Δ [95% CI]", "Search Δ", "Best Layer", "Method"]
        body += table([*header, "Best position − this (paired)", "Run"], rows) + [""]
    if body:
        body = [
            "Each position's best natural configuration (by search score), re-measured on the "
            "held-out questions; the last column compares the search's best position with each "
            "other one over the same questions.",
            "",
            *body,
        ]
    return out + (body or missing("No natural-source sweeps."))


def section_methods(keys: list[Key]) -> list[str]:
    out = ["## 3. Method comparison (mean_diff vs probe)", ""]
    rows = []
    for group, ks in groups(keys).items():
        cells: dict[tuple, dict[str, Key]] = {}
        for k in ks:
            cells.setdefault((k.source, k.position, k.component), {})[k.method] = k
        for (src, pos, comp), by in sorted(
            cells.items(),
            key=lambda kv: (order(kv[0][0], SOURCES), position_order(kv[0][1]), kv[0][2]),
        ):
            md, pr = (uq.best_score([by[m]]) if m in by else None for m in METHODS)
            p = uq.compare(md[1] if md else None, pr[1] if pr else None)
            runs = ", ".join(
                f"{m} {short(b[1].trial.run_id or b[2].run_id)}"
                for m, b in zip(("md", "pr"), (md, pr), strict=True)
                if b
            )
            label = pos if comp == "residual" else f"{pos} {comp}"
            rows.append(
                [
                    group,
                    src,
                    label,
                    md[1].text() if md else "—",
                    pr[1].text() if pr else "—",
                    uq.fmt_paired(p),
                    uq.verdict("mean_diff", "probe", p) if md and pr else "—",
                    runs or "no valid trial",
                ]
            )
    if not rows:
        return out + missing("No sweeps.")
    header = ["Trait", "Source", "Position", "mean_diff Δ", "probe Δ", "md − pr (paired)"]
    return out + table([*header, "Better", "Runs"], rows) + [""]


def section_layers(keys: list[Key]) -> list[str]:
    out = ["## 4. Best steering layers and operating range", ""]
    gs = groups(keys)
    if not gs:
        return out + missing("No sweeps.")
    rows, ranges = [], []
    for group, ks in gs.items():
        best = {src: best_of(k for k in ks if k.source == src) for src in SOURCES}
        cells = []
        for src in SOURCES:
            b = best[src]
            cells.append(f"{b[1].where().split(',')[0]} ({b[0].name})" if b else "—")
            if b:
                trials = operating_range(b[0])
                coefs = [t.coef for t in trials if t.coef is not None]
                window = (
                    "—"
                    if not coefs
                    else f"c{fmt_coef(min(coefs))}"
                    if min(coefs) == max(coefs)
                    else f"c{fmt_coef(min(coefs))}-{fmt_coef(max(coefs))}"
                )
                ranges.append(
                    [
                        group,
                        src,
                        b[0].name,
                        fmt_score(b[1].trait),
                        layer_ranges(t.layer for t in trials if t.layer is not None),
                        window,
                        f"{len(trials)}/{b[0].n_valid}",
                        ", ".join(short(s.run_id) for s in b[0].sweeps),
                    ]
                )
        li, ln = (best[s][1].layer if best[s] else None for s in SOURCES)
        gap = "—" if li is None or ln is None else f"{abs(li - ln)} layers"
        rows.append([group, *cells, gap])
    out += table(["Trait", "Instruction best", "Natural best", "Gap"], rows) + [""]
    out += [
        f"Operating range: the valid trials of each source's best key whose trait is within "
        f"{WINDOW:g} points of that best (from the sweeps' trials.json).",
        "",
    ]
    header = ["Trait", "Source", "Key", "Best trait", "Layers", "Coef window", "Trials in range"]
    return out + table([*header, "Sweeps"], ranges) + [""]


def section_full(keys: list[Key]) -> list[str]:
    out = ["## 5. Full steering table per trait", ""]
    gs = groups(keys)
    if not gs:
        return out + missing("No sweeps.")
    header = [
        "Key",
        "Source",
        "Position",
        "Method",
        "Component",
        "Best Layer",
        "Coef",
        "Trait",
        "Coh [95% CI]",
        "Search Δ [95% CI]",
        "Held-out Δ [95% CI]",
        "Valid",
        "Best's validity",
        "Sweep",
        "Trial",
    ]
    for group, ks in gs.items():
        base, n = baseline(ks)
        note = "" if base is None else f" (baseline trait {base:.1f}, mean of {plural(n, 'sweep')})"
        rows = []
        for k in ks:
            b = k.best()
            counts = f"{k.n_valid}/{k.n_evaluated}"
            key_cols = [k.name, k.source, k.position, k.method, k.component]
            if b is None:
                sweeps = ", ".join(short(s.run_id) for s in k.sweeps)
                none = ["—"] * 6
                rows.append([*key_cols, *none, counts, "—", sweeps, "no valid trial"])
                continue
            t, s = b
            layer = t.where() if t.weights else layer_label(t.layer)
            conf = uq.score_of(t, s)
            rows.append(
                [
                    *key_cols,
                    layer,
                    "—" if t.weights else fmt_coef(t.coef),
                    fmt_score(t.trait),
                    f"{fmt_score(t.coherence)} {fmt_ci(t.coherence_ci, '')}",
                    f"{fmt_delta(t.delta)} {fmt_ci(t.delta_ci)}",
                    conf.text() if conf.confirmed else "—",
                    counts,
                    t.validity(),
                    short(s.run_id),
                    short(t.run_id),
                ]
            )
        out += [f"### {group}{note}", ""] + table(header, rows) + [""]
    what = (
        "Best valid trial of each key by search score. CIs: 95% Student t over questions (Δ "
        "paired with the unsteered answer to each question). Held-out Δ: that trial "
        "re-measured on the questions the search never asked. Best's validity: `borderline` "
        "when its coherence CI straddles `search.coherence_min`."
    )
    return [*out[:2], what, "", *out[2:]]


def section_cosine(report: Report) -> list[str]:
    out = ["## 6. Vector similarity (best instruction vs best natural)", ""]
    cos = report.extras.cosines
    if not cos:
        return out + missing("Needs a valid best trial of both sources for a trait.")
    rows = []
    for c in cos:
        val = "—" if c.best is None else f"{c.best:.2f}"
        layers = f"{layer_label(c.layers[0])} vs {layer_label(c.layers[1])}"
        rows.append(
            [
                c.group,
                val,
                layers,
                f"{c.instruction} vs {c.natural}",
                f"{short(c.runs[0])}, {short(c.runs[1])}",
                c.note or "",
            ]
        )
    out += table(["Trait", "Cosine", "Layers", "Vectors", "Runs", "Note"], rows) + [""]
    with_layers = [c for c in cos if c.per_layer]
    if with_layers:
        n = max(len(c.per_layer) for c in with_layers)
        out += ["Same-layer cosine of the two vector files:", ""]
        body = [
            [
                f"L{i}",
                *(f"{c.per_layer[i]:.2f}" if i < len(c.per_layer) else "—" for c in with_layers),
            ]
            for i in range(n)
        ]
        out += table(["Layer", *(c.group for c in with_layers)], body) + [""]
    if "cosine" in report.figures:
        out += [f"![same-layer cosine]({report.figures['cosine']})", ""]
    return out


def section_answers(report: Report) -> list[str]:
    out = ["## 8. Steered answers and extraction responses", ""]
    ans, ext = report.extras.answers, report.extras.extraction
    if not ans and not ext:
        return out + missing("No valid best trial to show answers for.")
    for a in ans:
        out += [f"### {a.group}: best steered answers (first {N_QUESTIONS} questions)", ""]
        if a.note:
            out += [f"_{a.note}_", ""]
        if not a.rows:
            continue
        srcs = list(a.heads)
        header = ["Question"] + [
            f"{src.capitalize()} ({a.heads[src]}) {short(a.runs[src])}" for src in srcs
        ]
        body = []
        for r in a.rows:
            cells = [cell(r["question"], 200)]
            for src in srcs:
                got = r.get(src)
                if not got:
                    cells.append("—")
                    continue
                scores = (
                    f"trait {fmt_score(finite(got.get('trait')))}, coh "
                    f"{fmt_score(finite(got.get('coherence')))}"
                )
                cells.append(f"{cell(got.get('answer', ''))} ({scores})")
            body.append(cells)
        out += table(header, body) + [""]
    if ext:
        out += [f"### Most trait-rich kept extraction responses (top {N_EXTRACTION} positives)", ""]
        body = [
            [
                e.group,
                e.source,
                e.key,
                fmt_score(finite(r.get("trait"))),
                cell(r.get("context", ""), 160),
                cell(r.get("response", "")),
                short(e.run),
            ]
            for e in ext
            for r in e.rows
        ]
        out += table(
            ["Trait", "Source", "Key", "Trait score", "Context", "Response", "Sweep"], body
        ) + [""]
    return out


def caveats(report: Report) -> list[str]:
    """What the numbers rest on, first: models, judge and sizes, as the sweeps logged them."""
    sweeps = [s for k in report.keys for s in k.sweeps] + report.extra
    if not sweeps:
        return []

    def values(name: str, default: str = "?") -> str:
        got = sorted({str(s.params.get(name, default)) for s in sweeps})
        return ", ".join(f"`{v}`" for v in got)

    trials = sorted({len(s.trials) for s in sweeps})
    n_trials = f"{trials[0]}-{trials[-1]} trials" if len(trials) > 1 else plural(trials[0], "trial")
    return [
        f"**Setting:** model {values('model.name')} (steered: {values('model.steering')}), "
        f"judge {values('judge.backend')}; {len(sweeps)} studies of {n_trials}; search "
        f"questions per trial {values('steering.n_questions')} (`None`: all not held out), "
        f"held-out questions {values('confirm.n_questions', '0')} x "
        f"{values('confirm.rollouts', '1')} rollout(s); extraction pairs "
        f"{values('extraction.max_pairs')}, vetting {values('extraction.vet.enabled')}. With "
        "this few questions every interval is wide: read differences through their CIs. Each "
        "comparison is tested on its own (no correction for the many made here), so about 1 "
        "in 20 true non-differences will still be called a difference.",
        "",
    ]


def render(report: Report) -> str:
    """The whole report as Markdown."""
    exps = ", ".join(
        f"`{n}` ({'missing' if c is None else plural(c, 'sweep')})" for n, c in report.experiments
    )
    cross = uq.cross(groups(report.keys))
    mins = sorted(
        {s.coherence_min for k in report.keys for s in k.sweeps}
        | {s.coherence_min for s in report.extra}
    )
    lines = [
        f"# steerlab report: {report.experiment}",
        "",
        *caveats(report),
        *uq.summary(cross, report.keys),
        "## About this report",
        "",
        f"- Tracking URI: `{report.uri}`",
        f"- Experiments: {exps}",
    ]
    if report.run_id:
        lines.append(f"- Report run: {short(report.run_id)} (tag `steerlab.kind=report`)")
    lines += [
        "- Valid trial: mean coherence ≥ the sweep's `search.coherence_min` ("
        + (", ".join(f"{m:g}" for m in mins) or "—")
        + "); invalid trials never count as best.",
        "- Run ids: first 8 characters of the MLflow run id (Sweep = parent run, "
        "Trial = child run). Coefficients are relative units (3 significant digits).",
        "",
    ]
    for part in (
        section_cross(report.keys, cross),
        section_positions(report.keys),
        section_methods(report.keys),
        section_layers(report.keys),
        section_full(report.keys),
        section_cosine(report),
        section_combinations(report),
        section_answers(report),
    ):
        lines += part
    if "cross_trait" in report.figures or "positions" in report.figures:
        lines += ["## Figures", ""]
        for name, title in (
            ("cross_trait", "best delta per source"),
            ("positions", "natural best delta per position"),
        ):
            if name in report.figures:
                lines += [f"![{title}]({report.figures[name]})", ""]
    return "\n".join(lines).rstrip() + "\n"
