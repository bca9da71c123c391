"""`evaluate.py` on a tiny random llama: `complete_sentences` (what the judge is shown), and how
`baseline`/`evaluate` turn K configurations x Q questions into K results: rows in question order
with each configuration's own answers, trait/coherence as the means of the row scores, validity
against the coherence threshold, delta against the baseline, and the judge seeing each answer's
complete sentences rather than the raw text. Every search trial is ranked by these numbers.

The judge is a small deterministic class written here (the `Judge` protocol: `identity` and
`score`) whose scores follow a visible rule, so the aggregation can be checked exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import bare_trait, tiny_model
from steerlab.evaluate import (
    Result,
    baseline,
    complete_sentences,
    evaluate,
    steering_questions,
)
from steerlab.generation import GenConfig, generate, prompt_ids
from steerlab.judges.base import JudgeScore
from steerlab.vectors import TraitVectors

QUESTIONS = ["How are you?", "Tell me a story about a cat.", "Why?", "What is 2+2, really?"]
GEN = GenConfig(max_new_tokens=8, batch_size=16)
THRESHOLD = 50.0


def rule(answer: str) -> JudgeScore:
    """trait: length mod 101; coherence: 80 when the text ends a sentence, else 20."""
    coherence = 80.0 if answer.endswith((".", "!", "?")) else 20.0
    return JudgeScore(float(len(answer) % 101), coherence, f"{len(answer)} chars")


class RuleJudge:
    """Scores by `rule` and records every (question, answer) pair it is asked about."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @property
    def identity(self) -> str:
        return "test:rule-judge"

    def score(self, trait, pairs):
        self.seen += list(pairs)
        return [rule(a) for _, a in pairs]


class BlankJudge:
    """A judge that can score nothing (e.g. its endpoint is down)."""

    identity = "test:blank-judge"

    def score(self, trait, pairs):
        return [JudgeScore(None, None, "no score") for _ in pairs]


@pytest.fixture(scope="module")
def model():
    """Tiny llama whose output rows for "_" and " " are swapped: greedy answers to QUESTIONS then
    contain "? " mid-text (random weights alone almost never put a space after a sentence end),
    so some answers have an unfinished tail for `complete_sentences` to drop."""
    m = tiny_model("llama")
    tok = m.tokenizer
    a, b = tok.convert_tokens_to_ids("_"), tok.convert_tokens_to_ids("Ġ")
    w = m.model.lm_head.weight
    with torch.no_grad():
        w[[a, b]] = w[[b, a]]
    return m


@pytest.fixture(scope="module")
def configs(model):
    """Unsteered, zero-coefficient and strongly steered configurations from a vector file's
    directions (relative units: coef x the layer's norm)."""
    torch.manual_seed(3)
    v = torch.nn.functional.normalize(torch.randn(model.n_layers, model.hidden_size), dim=-1)
    vectors = TraitVectors(v, {"component": "residual", "norms": [4.0] * model.n_layers})
    return {
        "none": (),
        "zero": (vectors.term(1, 0.0),),
        "strong": (vectors.term(1, 12.0), vectors.term(2, -6.0)),
    }


def answers_alone(model, config):
    prompts = [prompt_ids(model, q) for q in QUESTIONS]
    return [s.text for s in generate(model, prompts, GEN, [config] * len(prompts))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is easy. Here's how:\n\n1. **", "It is easy."),
        ("Here's how:\n\n1. **", "Here's how:\n\n1. **"),  # no sentence end: kept whole
        ("It costs 3.5 dollars. Then", "It costs 3.5 dollars."),
        ("It costs 3.5 dollars", "It costs 3.5 dollars"),
        ('He said "stop." and then', 'He said "stop."'),
        ("(See above.) More", "(See above.)"),
        ("Done [really!]) and", "Done [really!])"),
        ("Why? Because. And the", "Why? Because."),
        ("Wait... what", "Wait..."),
        ("One.\nTwo", "One."),
        ("All done!", "All done!"),
        ("Is it 'yes?'", "Is it 'yes?'"),
        ("no sentence end at all", "no sentence end at all"),
        ("", ""),
    ],
)
def test_complete_sentences(text, expected):
    assert complete_sentences(text) == expected


def test_the_model_gives_answers_with_a_tail_to_drop(model):
    """Precondition of the judge tests below."""
    raw = answers_alone(model, ())
    cut = [complete_sentences(a) for a in raw]
    assert any(c != a and c for c, a in zip(cut, raw, strict=True)), raw


def test_evaluate_rows_and_means_per_configuration(model, configs, tmp_path):
    judge, trait = RuleJudge(), bare_trait()
    base = baseline(model, judge, trait, QUESTIONS, GEN, tmp_path, coherence_min=THRESHOLD)
    names = list(configs)
    results = evaluate(
        model,
        judge,
        trait,
        [configs[n] for n in names],
        QUESTIONS,
        GEN,
        tmp_path,
        base=base,
        coherence_min=THRESHOLD,
    )
    assert len(results) == len(names)
    for name, res in zip(names, results, strict=True):
        assert isinstance(res, Result)
        assert [r["question"] for r in res.rows] == QUESTIONS
        assert [r["answer"] for r in res.rows] == answers_alone(model, configs[name]), name
        want = [rule(complete_sentences(r["answer"])) for r in res.rows]
        assert [r["trait"] for r in res.rows] == [s.trait for s in want]
        assert [r["coherence"] for r in res.rows] == [s.coherence for s in want]
        assert [r["note"] for r in res.rows] == [s.note for s in want]
        assert res.trait == sum(s.trait for s in want) / len(want)
        assert res.coherence == sum(s.coherence for s in want) / len(want)
        assert res.valid is (res.coherence >= THRESHOLD)
        assert res.baseline == base.trait
        assert res.delta == res.trait - base.trait


def test_zero_coefficient_equals_baseline_and_strong_steering_differs(model, configs, tmp_path):
    judge, trait = RuleJudge(), bare_trait()
    base = baseline(model, judge, trait, QUESTIONS, GEN, tmp_path)
    none, zero, strong = evaluate(
        model, judge, trait, list(configs.values()), QUESTIONS, GEN, tmp_path, base=base
    )
    base_answers = [r["answer"] for r in base.rows]
    assert [r["answer"] for r in none.rows] == base_answers
    assert [r["answer"] for r in zero.rows] == base_answers
    assert (zero.trait, zero.coherence, zero.delta) == (base.trait, base.coherence, 0.0)
    assert [r["answer"] for r in strong.rows] != base_answers


def test_baseline_has_no_delta_and_evaluate_without_base_neither(model, configs, tmp_path):
    judge, trait = RuleJudge(), bare_trait()
    base = baseline(model, judge, trait, QUESTIONS, GEN, tmp_path)
    assert (base.baseline, base.delta) == (None, None)
    (res,) = evaluate(model, judge, trait, [configs["strong"]], QUESTIONS, GEN, tmp_path)
    assert (res.baseline, res.delta) == (None, None)


def test_valid_iff_coherence_reaches_the_threshold(model, configs, tmp_path):
    judge, trait = RuleJudge(), bare_trait()
    cfgs = list(configs.values())
    first = evaluate(model, judge, trait, cfgs, QUESTIONS, GEN, tmp_path)
    for k, res in enumerate(first):
        at = evaluate(
            model, judge, trait, cfgs, QUESTIONS, GEN, tmp_path, coherence_min=res.coherence
        )
        above = math.nextafter(res.coherence, math.inf)
        over = evaluate(model, judge, trait, cfgs, QUESTIONS, GEN, tmp_path, coherence_min=above)
        assert at[k].valid is True
        assert over[k].valid is False
        assert (at[k].coherence, over[k].coherence) == (res.coherence, res.coherence)


def test_judge_sees_complete_sentences_once_each(model, configs, tmp_path):
    judge, trait = RuleJudge(), bare_trait()
    base = baseline(model, judge, trait, QUESTIONS, GEN, tmp_path)
    results = evaluate(model, judge, trait, list(configs.values()), QUESTIONS, GEN, tmp_path)
    rows = base.rows + [r for res in results for r in res.rows]
    expected = {(r["question"], complete_sentences(r["answer"])) for r in rows}
    assert set(judge.seen) == expected
    assert len(judge.seen) == len(expected)  # repeated answers hit the score cache
    raw = {(r["question"], r["answer"]) for r in rows}
    tails = raw - expected
    assert tails, "no answer had an unfinished tail (see the model fixture)"
    assert not tails & set(judge.seen)
    # and the rows carry the raw answer but the score of its complete sentences
    row = next(r for r in base.rows if complete_sentences(r["answer"]) != r["answer"])
    assert (
        row["trait"] == rule(complete_sentences(row["answer"])).trait != rule(row["answer"]).trait
    )
    # a second evaluation is judged entirely from the cache
    n = len(judge.seen)
    evaluate(model, judge, trait, list(configs.values()), QUESTIONS, GEN, tmp_path)
    assert len(judge.seen) == n


def test_a_judge_that_scores_nothing_is_an_error_not_a_nan_result(model, configs, tmp_path):
    """No score for any answer is the judge's failure (InfraError: the trials are given back),
    never a NaN trait or coherence that would reach MLflow as a number."""
    from steerlab.errors import InfraError

    trait = bare_trait()
    with pytest.raises(InfraError, match=f"scored none of {len(QUESTIONS)} answers.*no score"):
        baseline(model, BlankJudge(), trait, QUESTIONS, GEN, tmp_path)
    base = baseline(model, RuleJudge(), trait, QUESTIONS, GEN, tmp_path)
    with pytest.raises(InfraError, match="scored none"):
        evaluate(model, BlankJudge(), trait, [configs["strong"]], QUESTIONS, GEN, tmp_path, base)


def test_steering_questions_takes_the_first_n():
    trait = bare_trait()
    trait.steering_questions[:] = ["a?", "b?", "c?"]
    assert steering_questions(trait, None) == ["a?", "b?", "c?"]
    assert steering_questions(trait, 2) == ["a?", "b?"]
    assert steering_questions(trait, 10) == ["a?", "b?", "c?"]


def test_held_out_questions_are_never_searched():
    from steerlab.evaluate import held_out_questions

    trait = bare_trait()
    trait.steering_questions[:] = ["a?", "b?", "c?", "d?", "e?"]
    assert held_out_questions(trait, 2) == ["d?", "e?"] and held_out_questions(trait, 0) == []
    assert steering_questions(trait, None, held_out=2) == ["a?", "b?", "c?"]
    assert steering_questions(trait, 2, held_out=2) == ["a?", "b?"]
    assert steering_questions(trait, None, held_out=0) == ["a?", "b?", "c?", "d?", "e?"]
