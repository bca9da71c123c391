"""`python -m steerlab.check_trait NAME|FOLDER`: a quality report on a trait folder.

The loader (`steerlab.data`) checks the format; this checks what it lets through: counts
against `traits/FORMAT.md`'s minimums, near-duplicates within and across files (cosine of
all-MiniLM-L6-v2 embeddings), steering questions that paraphrase extraction questions
(leakage), natural pairs whose sides do not contrast as matched prefixes (near-identical,
unequal length, different endings), very short items and unbalanced calibration labels.
Exit 0 when nothing is an error, 1 otherwise; `--out` writes the report (`.md` or `.html`).
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steerlab import prog
from steerlab.data import (
    _FILES,
    CONF_DIR,
    LABELLED_KEYS,
    TraitDataError,
    data_file,
    data_path,
    load_trait,
    read_jsonl,
)
from steerlab.markdown import cell, table

# FORMAT.md's minimums, and its one exception (hallucination's scenarios are scarcer)
MINIMUMS = {
    "instruction.jsonl": 5,
    "questions.jsonl": 20,
    "steering.jsonl": 20,
    "natural.jsonl": 100,
    "calibration.jsonl": 100,
}
FORMAT_EXCEPTIONS = {"hallucination": {"natural.jsonl": 50}}
DUPLICATE = 0.9  # cosine at or above which two items of one kind are near-duplicates
LEAKAGE = 0.8  # a steering question this close to an extraction question paraphrases it
PAIR_APART = 0.45  # natural sides further apart describe different scenes, not one contrast
LENGTH_RATIO = 1.6  # natural sides' word counts differ more than this: not matched prefixes
MIN_WORDS = {"instruction.jsonl": 4, "questions.jsonl": 4, "steering.jsonl": 4, "natural.jsonl": 8}
MAX_CHARS = 2000  # an item longer than this (characters) would crowd the model's context
MIN_BAND = 0.2  # calibration: at least this share of labels high (>= 70) and low (< 30)
ERRORS = ("format", "count", "duplicate", "leakage", "long")  # the kinds that make the exit code 1


@dataclass(frozen=True)
class Finding:
    kind: str  # format, count, duplicate, leakage, pair, short, balance
    file: str
    line: int | None  # 1-based line of the row to fix (None: the file as a whole)
    message: str

    @property
    def severity(self) -> str:
        return "error" if self.kind in ERRORS else "warning"


@dataclass(frozen=True)
class Report:
    folder: Path
    counts: dict[str, int]
    minimums: dict[str, int]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def markdown(self) -> str:
        errors = sum(f.severity == "error" for f in self.findings)
        lines = [
            f"# Trait check: {self.folder}",
            "",
            f"**{'PASS' if self.ok else 'FAIL'}**: {errors} error(s), "
            f"{len(self.findings) - errors} warning(s).",
            "",
            *table(
                ("file", "rows", "minimum", ""),
                (
                    (
                        f,
                        n,
                        self.minimums.get(f, ""),
                        "ok" if n >= self.minimums.get(f, 0) else "LOW",
                    )
                    for f, n in self.counts.items()
                ),
            ),
            "",
            f"Thresholds (cosine of all-MiniLM-L6-v2 embeddings): near-duplicate >= {DUPLICATE}, "
            f"leakage (steering vs extraction) >= {LEAKAGE}, natural sides of one scene >= "
            f"{PAIR_APART} (and differing in more than case or punctuation: embeddings do not "
            "see negation, so a one-word flip such as more/less is a good pair); natural "
            f"sides' word counts within {LENGTH_RATIO}x; minimum words "
            f"{MIN_WORDS}; at most {MAX_CHARS:,} characters an item; calibration: >= "
            f"{MIN_BAND:.0%} of labels high and low.",
            "",
        ]
        if self.findings:
            lines += table(
                ("severity", "kind", "where", "finding"),
                (
                    (
                        f.severity,
                        f.kind,
                        f"{f.file}:{f.line}" if f.line else f.file,
                        cell(f.message),
                    )
                    for f in self.findings
                ),
            )
        else:
            lines.append("No findings.")
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        rows = "".join(
            f"<tr><td>{f.severity}</td><td>{f.kind}</td><td>{html.escape(f.file)}"
            f"{':' + str(f.line) if f.line else ''}</td><td>{html.escape(f.message)}</td></tr>"
            for f in self.findings
        )
        counts = "".join(
            f"<tr><td>{f}</td><td>{n}</td><td>{self.minimums.get(f, '')}</td></tr>"
            for f, n in self.counts.items()
        )
        return (
            f"<!doctype html><meta charset='utf-8'><title>Trait check: {self.folder.name}</title>"
            f"<h1>Trait check: {html.escape(str(self.folder))}</h1>"
            f"<p><b>{'PASS' if self.ok else 'FAIL'}</b></p>"
            f"<table><tr><th>file</th><th>rows</th><th>minimum</th></tr>{counts}</table>"
            "<table><tr><th>severity</th><th>kind</th><th>where</th><th>finding</th></tr>"
            f"{rows}</table>\n"
        )


Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> unit-norm rows


def _encoder() -> Embed:
    from steerlab.judges.offline_features import Encoder

    return Encoder().encode


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def _rows(folder: Path, fname: str, findings: list[Finding]) -> list[tuple[int, dict]]:
    keys = LABELLED_KEYS if fname == "calibration.jsonl" else _FILES[fname][0]
    try:
        return read_jsonl(data_file(folder, fname), keys)
    except TraitDataError as e:
        findings.append(Finding("format", fname, _line(str(e)), str(e)))
        return []


def _line(message: str) -> int | None:
    m = re.match(r"[^:]+:(\d+):", message)
    return int(m.group(1)) if m else None


def check(
    folder: str | Path, minimums: dict[str, int] | None = None, embed: Embed | None = None
) -> Report:
    """Every finding on the trait folder (a path, or a configured trait's name)."""
    d = resolve(folder)
    mins = MINIMUMS | FORMAT_EXCEPTIONS.get(d.name, {}) | (minimums or {})
    findings: list[Finding] = []
    try:
        load_trait(d)
    except TraitDataError as e:
        msg = str(e)
        fname = Path(msg.split(":", 1)[0]).name
        findings.append(Finding("format", fname, _line(msg), msg))
    rows = {f: _rows(d, f, findings) for f in MINIMUMS}
    counts = {f: len(r) for f, r in rows.items()}
    findings += [
        Finding("count", f, None, f"{n} rows, FORMAT.md asks at least {mins[f]}")
        for f, n in counts.items()
        if n < mins[f]
    ]
    findings += _short(rows) + _long(rows)
    embed = embed or _encoder()
    texts = {f: [_text(r) for _, r in rs] for f, rs in rows.items()}
    lines = {f: [n for n, _ in rs] for f, rs in rows.items()}
    emb = {f: embed(t) if t else np.zeros((0, 1)) for f, t in texts.items()}
    for f in rows:
        findings += _duplicates(
            f, lines[f], emb[f], texts[f], emb[f], texts[f], lines[f], DUPLICATE
        )
    # a steering question too close to an extraction question: leakage, fix the steering one
    findings += _duplicates(
        "steering.jsonl",
        lines["steering.jsonl"],
        emb["steering.jsonl"],
        texts["steering.jsonl"],
        emb["questions.jsonl"],
        texts["questions.jsonl"],
        lines["questions.jsonl"],
        LEAKAGE,
        kind="leakage",
        other="questions.jsonl",
    )
    findings += _pairs(rows["natural.jsonl"], embed)
    findings += _balance(rows.get("calibration.jsonl", []))
    return Report(d, counts, mins, list(dict.fromkeys(findings)))  # load_trait's and _rows' once


def resolve(folder: str | Path) -> Path:
    """A folder path, or the name of a configured trait (`conf/trait/NAME.yaml`'s `dir`)."""
    p = data_path(folder)
    if p.is_dir():
        return p
    conf = CONF_DIR / "trait" / f"{folder}.yaml"
    if conf.is_file():
        import yaml

        return data_path(yaml.safe_load(conf.read_text())["dir"])
    names = sorted(c.stem for c in (CONF_DIR / "trait").glob("*.yaml"))
    raise TraitDataError(f"{folder}: no such folder, nor a configured trait; traits: {names}")


def _text(row: dict) -> str:
    if "question" in row and "answer" in row:
        return row["answer"]
    return row.get("question") or f"{row['positive']} || {row['negative']}"


def _duplicates(
    fname: str,
    lines: list[int],
    emb: np.ndarray,
    texts: list[str],
    other_emb: np.ndarray,
    other_texts: list[str],
    other_lines: list[int],
    threshold: float,
    kind: str = "duplicate",
    other: str | None = None,
) -> list[Finding]:
    """Each row of `fname` at or above `threshold` cosine to an earlier row (within a file) or
    to any row of `other`: the later/steering row is the one to fix."""
    if not len(emb) or not len(other_emb):
        return []
    sim = emb @ other_emb.T
    out = []
    for i in range(len(emb)):
        cand = sim[i, :i] if other is None else sim[i]
        if len(cand) and (j := int(np.argmax(cand))) >= 0 and cand[j] >= threshold:
            where = f"line {other_lines[j]}" if other is None else f"{other}:{other_lines[j]}"
            out.append(
                Finding(
                    kind,
                    fname,
                    lines[i],
                    f"cosine {cand[j]:.3f} to {where}: {cell(texts[i], 80)!r} ~ "
                    f"{cell(other_texts[j], 80)!r}",
                )
            )
    return out


def _short(rows: dict[str, list[tuple[int, dict]]]) -> list[Finding]:
    out = []
    for f, least in MIN_WORDS.items():
        for n, r in rows.get(f, []):
            for k in ("question", "positive", "negative"):
                if k in r and len(words(r[k])) < least:
                    out.append(Finding("short", f, n, f"{k} has under {least} words: {r[k]!r}"))
    return out


def _long(rows: dict[str, list[tuple[int, dict]]]) -> list[Finding]:
    return [
        Finding("long", f, n, f"{k} has {len(v):,} characters; at most {MAX_CHARS:,}")
        for f, rs in rows.items()
        for n, r in rs
        for k, v in r.items()
        if isinstance(v, str) and len(v) > MAX_CHARS
    ]


def _pairs(rows: list[tuple[int, dict]], embed: Embed) -> list[Finding]:
    """Natural pairs: matched prefixes differ in the trait, not in length or ending."""
    if not rows:
        return []
    pos = embed([r["positive"] for _, r in rows])
    neg = embed([r["negative"] for _, r in rows])
    out = []
    for (n, r), a, b in zip(rows, pos, neg, strict=True):
        wp, wn = words(r["positive"]), words(r["negative"])
        if wp == wn:
            out.append(
                Finding("pair", "natural.jsonl", n, "sides differ only in case or punctuation")
            )
        elif float(a @ b) < PAIR_APART:
            out.append(
                Finding(
                    "pair",
                    "natural.jsonl",
                    n,
                    f"sides describe different scenes (cosine {float(a @ b):.3f})",
                )
            )
        ratio = max(len(wp), len(wn)) / max(1, min(len(wp), len(wn)))
        if ratio > LENGTH_RATIO:
            out.append(
                Finding(
                    "pair",
                    "natural.jsonl",
                    n,
                    f"sides' lengths differ {ratio:.1f}x ({len(wp)} vs {len(wn)} words)",
                )
            )
        if wp[-1:] != wn[-1:]:
            out.append(
                Finding(
                    "pair", "natural.jsonl", n, f"sides end differently ({wp[-1:]} vs {wn[-1:]})"
                )
            )
    return out


def _balance(rows: list[tuple[int, dict]]) -> list[Finding]:
    if not rows:
        return []
    scores = np.array([r["trait_score"] for _, r in rows], dtype=float)
    high, low = float(np.mean(scores >= 70)), float(np.mean(scores < 30))
    if min(high, low) >= MIN_BAND:
        return []
    return [
        Finding(
            "balance",
            "calibration.jsonl",
            None,
            f"labels unbalanced: {high:.0%} high (>= 70), {low:.0%} low (< 30); "
            f"each should be >= {MIN_BAND:.0%}",
        )
    ]


def write(report: Report, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html() if out.suffix == ".html" else report.markdown(), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("steerlab.check_trait"), description=__doc__)
    p.add_argument("trait", help="a trait folder, or a configured trait's name (evil)")
    p.add_argument("--out", type=Path, help="write the report here (.md or .html)")
    p.add_argument(
        "--min", action="append", default=[], metavar="FILE=N", help="override a minimum"
    )
    a = p.parse_args(argv)
    try:
        mins = {}
        for m in a.min:
            f, _, n = m.partition("=")
            if f not in MINIMUMS or not n.isdigit():
                raise TraitDataError(
                    f"--min {m}: expected FILE=N with FILE one of {list(MINIMUMS)}"
                )
            mins[f] = int(n)
        report = check(a.trait, mins)
    except TraitDataError as e:
        print(f"steerlab.check_trait: error: {e}", file=sys.stderr)
        return 2
    if a.out:
        write(report, a.out)
    print(report.markdown(), end="")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
