"""Trait data loader: shipped traits are complete; every malformed input names file:line."""

import json
import shutil
from pathlib import Path

import pytest

from steerlab.data import PROJECT_ROOT, TraitDataError, load_trait, read_labelled

SHIPPED = {"evil": 100, "sycophancy": 100, "hallucination": 50}


@pytest.mark.parametrize(("name", "min_natural"), SHIPPED.items())
def test_shipped_traits_meet_the_sizes(name, min_natural):
    t = load_trait(f"traits/{name}")
    assert t.name == name and t.rubric.high and t.rubric.low
    assert len(t.instructions) >= 5 and len(t.questions) >= 20
    assert len(t.natural) >= min_natural and len(t.steering_questions) >= 20
    assert not set(t.steering_questions) & set(t.questions)
    assert len(t.calibration) >= 60


def test_validation_set_is_disjoint_from_calibration():
    for name in SHIPPED:
        val = read_labelled(PROJECT_ROOT / "data" / "judge_validation" / f"{name}.jsonl", True)
        cal = load_trait(f"traits/{name}").calibration
        assert len(val) >= 60 and {r.trait for r in val} == {name}
        assert not {r.answer for r in val} & {r.answer for r in cal}


@pytest.fixture
def trait_dir(tmp_path) -> Path:
    d = tmp_path / "evil"
    shutil.copytree(PROJECT_ROOT / "traits" / "evil", d)
    return d


def _write_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("file", "line", "text", "reason"),
    [
        ("natural.jsonl", 3, '{"positive": "I am', "natural.jsonl:3: malformed JSON"),
        (
            "natural.jsonl",
            4,
            '{"positive": "I hurt", "negative": "I hurt"}',
            "natural.jsonl:4: unmatched pair",
        ),
        (
            "instruction.jsonl",
            2,
            '{"positive": "Be evil.", "negatve": "Be kind."}',
            "instruction.jsonl:2: unknown field(s) ['negatve']",
        ),
        ("questions.jsonl", 5, '{"question": ""}', "questions.jsonl:5: question must be"),
        ("questions.jsonl", 1, '["not", "an", "object"]', "questions.jsonl:1: expected a JSON"),
        (
            "calibration.jsonl",
            2,
            '{"question": "q", "answer": "a", "trait_score": 140, "coherence": 50}',
            "calibration.jsonl:2: trait_score must be a number 0-100",
        ),
    ],
)
def test_bad_rows_name_file_and_line(trait_dir, file, line, text, reason):
    _write_line(trait_dir / file, line, text)
    with pytest.raises(TraitDataError, match=None) as e:
        load_trait(trait_dir)
    assert reason in str(e.value)


def test_steering_question_leaking_from_extraction_is_rejected(trait_dir):
    q = json.loads((trait_dir / "questions.jsonl").read_text().splitlines()[0])["question"]
    _write_line(trait_dir / "steering.jsonl", 7, json.dumps({"question": q}))
    with pytest.raises(TraitDataError, match=r"steering.jsonl:7: steering question also appears"):
        load_trait(trait_dir)


def test_empty_set_and_missing_file(trait_dir):
    natural = (trait_dir / "natural.jsonl").read_text()
    (trait_dir / "natural.jsonl").write_text("")
    with pytest.raises(TraitDataError, match=r"natural.jsonl: 0 rows, need at least 1"):
        load_trait(trait_dir)
    (trait_dir / "natural.jsonl").write_text(natural)
    (trait_dir / "steering.jsonl").unlink()
    with pytest.raises(TraitDataError, match=r"steering.jsonl: file not found"):
        load_trait(trait_dir)


def test_minimums_are_enforced(trait_dir):
    with pytest.raises(TraitDataError, match=r"need at least 500"):
        load_trait(trait_dir, {"natural.jsonl": 500})
