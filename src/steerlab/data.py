"""Trait data: loading and validating the on-disk format described in `traits/FORMAT.md`.

Every problem is reported as `file:line: reason` so a dataset author can fix it directly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # a source checkout's root (tests, data/)
# The shipped `conf/` and `traits/` live inside the package, so a plain `pip install` (not only a
# checkout) can compose configs and load the shipped traits; a checkout links them at its root.
PACKAGE_DATA = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DATA / "conf"
TRAITS_DIR = PACKAGE_DATA / "traits"

# file -> (required keys, minimum rows)
_PAIR = ("positive", "negative")
_FILES: dict[str, tuple[tuple[str, ...], int]] = {
    "instruction.jsonl": (_PAIR, 1),
    "questions.jsonl": (("question",), 1),
    "natural.jsonl": (_PAIR, 1),
    "steering.jsonl": (("question",), 1),
}
LABELLED_KEYS = ("question", "answer", "trait_score", "coherence")
RUBRIC_KEYS = ("definition", "high", "mid", "low")


class TraitDataError(ValueError):
    """Invalid trait data; the message starts with `file:line`."""


@dataclass(frozen=True)
class Rubric:
    definition: str
    high: str
    mid: str
    low: str

    def text(self) -> str:
        return (
            f"{self.definition}\n\nHIGH (70-100): {self.high}\nMID (30-69): {self.mid}\n"
            f"LOW (0-29): {self.low}"
        )


@dataclass(frozen=True)
class Labelled:
    """A (question, answer) pair with human trait and coherence labels (0-100)."""

    question: str
    answer: str
    trait_score: float
    coherence: float
    trait: str = ""


@dataclass(frozen=True)
class TraitData:
    name: str
    description: str
    rubric: Rubric
    instructions: list[tuple[str, str]]  # (positive, negative) system prompts
    questions: list[str]  # extraction questions
    natural: list[tuple[str, str]]  # (positive, negative) prefixes
    steering_questions: list[str]  # held-out
    calibration: list[Labelled] = field(default_factory=list)
    root: Path = PACKAGE_DATA

    def digest(self) -> str:
        """Content hash of everything that determines extraction and evaluation."""
        blob = json.dumps(
            [self.name, self.instructions, self.questions, self.natural, self.steering_questions]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_of(path: Path) -> str:
    """A data file's text: UTF-8, with or without a byte-order mark; other bytes are an error
    naming `file:line` and the byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TraitDataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset {e.start}); "
            "save the file as UTF-8"
        ) from None


def data_file(folder: Path, fname: str) -> Path:
    """`folder/fname`, refused unless it is a regular file inside `folder` once links are
    resolved (a link within the folder is fine): a trait folder from elsewhere cannot make
    steerlab read `/etc/passwd` or another user's file. A missing file is returned as is."""
    path = folder / fname
    if not path.is_symlink() and not path.exists():
        return path
    real, home = path.resolve(), folder.resolve()
    if not real.is_relative_to(home):
        raise TraitDataError(f"{path}: links outside the trait folder (to {real}); copy it in")
    if not real.is_file():
        raise TraitDataError(f"{path}: not a regular file")
    return path


def read_jsonl(
    path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> list[tuple[int, dict]]:
    """Rows of a JSONL file with exactly `keys` (+ `optional`), each paired with its line number."""
    if not path.is_file():
        raise TraitDataError(f"{path}: file not found")
    rows = []
    for n, line in enumerate(text_of(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraitDataError(f"{path}:{n}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TraitDataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        unknown = set(row) - set(keys) - set(optional)
        missing = [k for k in keys if k not in row]
        if unknown:
            raise TraitDataError(
                f"{path}:{n}: unknown field(s) {sorted(unknown)}; valid: {list(keys + optional)}"
            )
        if missing:
            raise TraitDataError(f"{path}:{n}: missing field(s) {missing}")
        for k in keys:
            v = row[k]
            if k in ("trait_score", "coherence"):
                if not isinstance(v, int | float) or not 0 <= v <= 100:
                    raise TraitDataError(f"{path}:{n}: {k} must be a number 0-100, got {v!r}")
            elif not isinstance(v, str) or not v.strip():
                raise TraitDataError(f"{path}:{n}: {k} must be a non-empty string")
        rows.append((n, row))
    return rows


def read_labelled(path: Path, with_trait: bool = False) -> list[Labelled]:
    keys = (("trait",) if with_trait else ()) + LABELLED_KEYS
    return [
        Labelled(
            r["question"],
            r["answer"],
            float(r["trait_score"]),
            float(r["coherence"]),
            r.get("trait", ""),
        )
        for _, r in read_jsonl(path, keys)
    ]


def _check_pairs(path: Path, rows: list[tuple[int, dict]]) -> None:
    for n, r in rows:
        if r["positive"].strip() == r["negative"].strip():
            raise TraitDataError(f"{path}:{n}: unmatched pair: positive and negative are identical")


def data_path(path: str | Path) -> Path:
    """A trait or config path as written in a config (`traits/evil`): absolute as is; relative to
    the current directory when it exists there (a user's own traits), else to the package data
    (the shipped ones, wherever steerlab is installed)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return PACKAGE_DATA / p if (PACKAGE_DATA / p).exists() else p


def load_trait(directory: str | Path, minimums: dict[str, int] | None = None) -> TraitData:
    """Load and validate a trait folder; `minimums` maps file name -> minimum row count."""
    d = data_path(directory)
    meta_path = data_file(d, "trait.yaml")
    if not meta_path.is_file():
        raise TraitDataError(f"{meta_path}: file not found (a trait folder needs trait.yaml)")
    meta = yaml.safe_load(text_of(meta_path)) or {}
    unknown = set(meta) - {"name", "description", "rubric"}
    if unknown:
        raise TraitDataError(
            f"{meta_path}: unknown field(s) {sorted(unknown)}; valid: name, description, rubric"
        )
    rubric = meta.get("rubric") or {}
    if not isinstance(rubric, dict) or set(rubric) != set(RUBRIC_KEYS):
        raise TraitDataError(f"{meta_path}: rubric needs exactly the keys {list(RUBRIC_KEYS)}")
    mins = {f: m for f, (_, m) in _FILES.items()} | (minimums or {})
    rows: dict[str, list[tuple[int, dict]]] = {}
    for fname, (keys, _) in _FILES.items():
        rows[fname] = read_jsonl(data_file(d, fname), keys)
        if len(rows[fname]) < mins[fname]:
            raise TraitDataError(
                f"{d / fname}: {len(rows[fname])} rows, need at least {mins[fname]}"
            )
    for fname in ("instruction.jsonl", "natural.jsonl"):
        _check_pairs(d / fname, rows[fname])
    extraction = {r["question"].strip().lower() for _, r in rows["questions.jsonl"]}
    for n, r in rows["steering.jsonl"]:
        if r["question"].strip().lower() in extraction:
            raise TraitDataError(
                f"{d / 'steering.jsonl'}:{n}: steering question also appears in questions.jsonl "
                "(held-out questions must be disjoint from extraction questions)"
            )
    calib = data_file(d, "calibration.jsonl")
    return TraitData(
        name=str(meta.get("name", d.name)),
        description=str(meta.get("description", "")),
        rubric=Rubric(**{k: str(rubric[k]) for k in RUBRIC_KEYS}),
        instructions=[(r["positive"], r["negative"]) for _, r in rows["instruction.jsonl"]],
        questions=[r["question"] for _, r in rows["questions.jsonl"]],
        natural=[(r["positive"], r["negative"]) for _, r in rows["natural.jsonl"]],
        steering_questions=[r["question"] for _, r in rows["steering.jsonl"]],
        calibration=read_labelled(calib) if calib.is_file() else [],
        root=d,
    )
