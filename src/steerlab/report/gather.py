"""What the report is made of: its dataclasses (Report and the Extras of sections 6 and 8), the
artifacts those sections read from the store (vector files' cosines, the best trials' steered
answers, the sweeps' extraction responses), and `build`, which reads a whole store into a Report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlab import records, tracking
from steerlab.records import SOURCES, Key, Sweep, best_of
from steerlab.report.analyse import cosine, groups

N_QUESTIONS = 3  # steered answers shown per trait
N_EXTRACTION = 3  # extraction responses shown per trait and source


@dataclass
class Cosine:
    """Cosine of the best instruction and best natural vector files of one trait."""

    group: str
    instruction: str  # key names
    natural: str
    layers: tuple[int | None, int | None]  # each source's best layer
    best: float | None  # cosine of the rows at those layers
    per_layer: list[float]  # same-layer cosines, layer 0..
    runs: tuple[str, str]
    note: str | None = None


@dataclass
class Answers:
    """The first questions answered by the best instruction and the best natural trial."""

    group: str
    heads: dict[str, str]  # source -> "inst_md, L14, c6.6"
    runs: dict[str, str]
    rows: list[dict[str, Any]]  # question, then per source {"answer", "trait", "coherence"}
    note: str | None = None


@dataclass
class Extraction:
    """The most trait-rich kept positive extraction responses of one trait and source."""

    group: str
    source: str
    key: str
    run: str
    rows: list[dict[str, Any]]


@dataclass
class Extras:
    cosines: list[Cosine] = field(default_factory=list)
    answers: list[Answers] = field(default_factory=list)
    extraction: list[Extraction] = field(default_factory=list)


@dataclass
class Report:
    uri: str
    experiment: str
    experiments: list[tuple[str, int | None]]  # name, number of sweeps (None: no experiment)
    keys: list[Key]
    extra: list[Sweep]  # combination-strategy, ensemble and other comparison sweeps
    extras: Extras
    figures: dict[str, str] = field(default_factory=dict)  # figure name -> file name
    run_id: str | None = None


def cosine_of(client: Any, group: str, inst: tuple, nat: tuple) -> Cosine:
    """Cosines of the vector files of the best instruction and best natural (key, trial, sweep)."""
    from steerlab.vectors import VectorFileError, load_vectors

    (ki, ti, si), (kn, tn, sn) = inst, nat
    base = Cosine(
        group,
        ki.name,
        kn.name,
        (ti.layer, tn.layer),
        None,
        [],
        (ti.run_id or si.run_id, tn.run_id or sn.run_id),
    )
    paths = [tracking.vector_path(client, ti, si), tracking.vector_path(client, tn, sn)]
    if not all(paths):
        base.note = "no vector path logged"
        return base
    try:
        va, vb = (load_vectors(Path(p)).vectors for p in paths)  # type: ignore[arg-type]
    except VectorFileError as e:
        base.note = str(e)
        return base
    if va.shape[-1] != vb.shape[-1]:
        base.note = f"hidden sizes differ ({va.shape[-1]} vs {vb.shape[-1]})"
        return base
    base.per_layer = [cosine(va[i], vb[i]) for i in range(min(len(va), len(vb)))]
    if ti.layer is not None and tn.layer is not None and ti.layer < len(va) and tn.layer < len(vb):
        base.best = cosine(va[ti.layer], vb[tn.layer])
    else:
        base.note = "best trials are ensembles (no single layer)"
    return base


def answers_of(client: Any, group: str, picks: dict[str, tuple]) -> Answers:
    """The first questions of each source's best trial run (its responses.json), side by side."""
    heads, runs, tables = {}, {}, {}
    for src, (k, t, s) in picks.items():
        heads[src] = f"{k.name}, {t.where()}"
        runs[src] = t.run_id or s.run_id
        raw = (
            tracking.read_artifact(client, t.run_id, t.artifact_uri, "responses.json")
            if t.run_id
            else None
        )
        tables[src] = records.table_rows(raw) if raw is not None else []
    out = Answers(group, heads, runs, [])
    missing = [src for src in picks if not tables[src]]
    if missing:
        out.note = "no responses.json on the best trial run of: " + ", ".join(missing)
    order = next((tables[s] for s in picks if tables[s]), [])
    for q in order[:N_QUESTIONS]:
        row: dict[str, Any] = {"question": q.get("question", "")}
        for src in picks:
            match = next((r for r in tables[src] if r.get("question") == row["question"]), None)
            row[src] = match
        out.rows.append(row)
    return out


def extraction_of(client: Any, group: str, source: str, key: Key, sweep: Sweep) -> Extraction:
    """The sweep's kept positive extraction responses (extraction.json), most trait-rich first."""
    raw = tracking.read_artifact(client, sweep.run_id, sweep.artifact_uri, "extraction.json")
    rows = [
        r
        for r in records.table_rows(raw)
        if r.get("label") == "positive"
        and _truthy(r.get("kept"))
        and records.finite(r.get("trait")) is not None
    ]
    rows.sort(key=lambda r: -float(r["trait"]))
    return Extraction(group, source, key.name, sweep.run_id, rows[:N_EXTRACTION])


def _truthy(v: Any) -> bool:
    return v is True or v == 1 or str(v).lower() in ("true", "1")


def gather(client: Any, keys: list[Key]) -> Extras:
    """Per trait: the cosine, steered answers and extraction responses of each source's best."""
    out = Extras()
    for group, ks in groups(keys).items():
        picks = {src: b for src in SOURCES if (b := best_of(k for k in ks if k.source == src))}
        if len(picks) == 2:
            out.cosines.append(cosine_of(client, group, picks["instruction"], picks["natural"]))
        if picks:
            out.answers.append(answers_of(client, group, picks))
        for src, (k, _t, s) in picks.items():
            ex = extraction_of(client, group, src, k, s)
            if ex.rows:
                out.extraction.append(ex)
    return out


def build(store: tracking.Store, experiment: str, extra_experiments: Sequence[str]) -> Report:
    """Read the store into a Report (no figures, no report run yet)."""
    client = tracking.client(store)
    names = [n.strip() for n in experiment.split(",") if n.strip()]
    extra_names = [n for n in (e.strip() for e in extra_experiments) if n and n not in names]
    found: dict[str, list[Sweep] | None] = {
        n: tracking.read_sweeps(client, n) for n in [*names, *extra_names]
    }
    everything = [s for ss in found.values() for s in ss or []]
    records.label_groups(everything)
    main_sweeps = [s for n in names for s in found[n] or []]
    keys = records.group_keys(main_sweeps)
    extra = [s for s in main_sweeps if s.is_comparison]
    extra += [s for n in extra_names for s in found[n] or []]
    return Report(
        uri=tracking.tracking_uri(store),
        experiment=", ".join(names),
        experiments=[(n, None if found[n] is None else len(found[n] or [])) for n in found],
        keys=keys,
        extra=extra,
        extras=gather(client, keys),
    )
