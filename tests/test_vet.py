"""Vetting of elicited responses (`extraction.vet` with `config.VetConfig`): which positives and
negatives survive the judge's trait scores, pairing, empty or unscored answers, and the error when
too few survive. Vetting decides which activations a vector is extracted from, so a wrong keep
mask silently changes every vector.
"""

from __future__ import annotations

import re

import pytest

from steerlab.config import VetConfig
from steerlab.extraction import Elicited, VettingError, vet
from steerlab.generation import Sample
from steerlab.judges.base import JudgeScore


def elicited(labels, pairs, empty=()):
    """Real Elicited records; sample i has an empty response when i is in `empty`."""
    samples = [
        Sample([1, 2, 3], [] if i in empty else [40 + i, 41], "" if i in empty else f"answer {i}")
        for i in range(len(labels))
    ]
    return Elicited(samples, list(labels), list(pairs), [f"q{p}" for p in pairs], "instruction")


def scores(*traits):
    return [JudgeScore(t, 90.0) for t in traits]


CFG = VetConfig(pos_min=60.0, neg_max=40.0, min_per_side=1)


def test_positives_kept_iff_at_least_pos_min():
    e = elicited([1, 1, 1, 1, 0], [0, 1, 2, 3, 4])
    keep = vet(e, scores(59.99, 60.0, 60.01, 100.0, 0.0), CFG)
    assert keep == [False, True, True, True, True]


def test_negatives_kept_iff_at_most_neg_max():
    e = elicited([0, 0, 0, 0, 1], [0, 1, 2, 3, 4])
    keep = vet(e, scores(0.0, 40.0, 40.01, 75.0, 90.0), CFG)
    assert keep == [True, True, False, False, True]


def test_a_score_between_the_thresholds_keeps_neither_side():
    e = elicited([1, 0, 1, 0], [0, 0, 1, 1])
    keep = vet(e, scores(50.0, 50.0, 80.0, 10.0), CFG)
    assert keep == [False, False, True, True]


def test_unscored_and_empty_answers_are_dropped():
    """A None trait (judge could not score) and an empty response never survive, whatever the
    other score says."""
    e = elicited([1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2], empty={4, 5})
    sc = [
        JudgeScore(None, 90.0),
        JudgeScore(None, None),
        JudgeScore(95.0, None),  # coherence is not part of vetting
        JudgeScore(5.0, 90.0),
        JudgeScore(95.0, 90.0),  # empty answer, even with a passing score
        JudgeScore(5.0, 90.0),
    ]
    assert vet(e, sc, CFG) == [False, False, True, True, False, False]


def test_disabled_keeps_every_non_empty_answer_regardless_of_score():
    e = elicited([1, 0, 1, 0], [0, 0, 1, 1], empty={3})
    cfg = VetConfig(enabled=False, pos_min=60.0, neg_max=40.0, min_per_side=10)
    sc = [
        JudgeScore(0.0, 0.0),
        JudgeScore(100.0, 0.0),
        JudgeScore(None, None),
        JudgeScore(50.0, 50.0),
    ]
    keep = vet(e, sc, cfg)
    # no threshold applies, and min_per_side is not enforced when vetting is off
    assert keep == [True, True, True, False]


def test_unpaired_keeps_each_side_on_its_own():
    e = elicited([1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2])
    keep = vet(e, scores(80.0, 70.0, 30.0, 10.0, 90.0, 5.0), CFG)
    assert keep == [True, False, False, True, True, True]


def test_paired_drops_a_pair_unless_both_sides_survive():
    e = elicited([1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2])
    cfg = VetConfig(pos_min=60.0, neg_max=40.0, paired=True, min_per_side=1)
    keep = vet(e, scores(80.0, 70.0, 30.0, 10.0, 90.0, 5.0), cfg)
    assert keep == [False, False, False, False, True, True]


def test_paired_with_rollouts_needs_one_survivor_per_side_and_still_drops_failures():
    """Rollouts repeat each pair index: a pair stays when some positive and some negative of it
    survive; its failing samples are still dropped."""
    e = elicited([1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])
    cfg = VetConfig(pos_min=60.0, neg_max=40.0, paired=True, min_per_side=1)
    keep = vet(e, scores(80.0, 20.0, 10.0, 90.0, 70.0, 75.0, 50.0, 60.0), cfg)
    assert keep == [True, False, True, False, False, False, False, False]


def test_paired_pairs_are_matched_by_pair_index_not_position():
    e = elicited([1, 1, 0, 0], [0, 1, 1, 0])
    cfg = VetConfig(pos_min=60.0, neg_max=40.0, paired=True, min_per_side=1)
    # pair 0: positive at 0 passes, negative at 3 fails; pair 1: both pass
    assert vet(e, scores(90.0, 90.0, 10.0, 90.0), cfg) == [False, True, True, False]


def test_too_few_survivors_raise_with_counts_and_thresholds():
    e = elicited([1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2])
    cfg = VetConfig(pos_min=60.0, neg_max=40.0, min_per_side=2)
    with pytest.raises(VettingError) as err:
        vet(e, scores(80.0, 10.0, 30.0, 50.0, 90.0, 45.0), cfg)
    msg = str(err.value)
    assert msg.startswith(
        "vetting kept 2/3 positives (trait >= 60.0) and 1/3 negatives (trait <= 40.0); "
        "need 2 per side."
    )
    for knob in ("pos_min/neg_max", "min_per_side", "extraction.vet.enabled=false"):
        assert knob in msg


def test_exactly_min_per_side_survivors_is_enough():
    e = elicited([1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2])
    cfg = VetConfig(pos_min=60.0, neg_max=40.0, min_per_side=2)
    keep = vet(e, scores(80.0, 10.0, 30.0, 20.0, 90.0, 45.0), cfg)
    assert keep == [True, True, False, True, True, False]


def test_pairing_counts_towards_the_minimum():
    """Both sides pass 2 of 3 on their own, but only one pair survives whole."""
    e = elicited([1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2])
    scored = scores(80.0, 10.0, 90.0, 50.0, 30.0, 20.0)
    assert vet(e, scored, VetConfig(min_per_side=2)) == [True, True, True, False, False, True]
    with pytest.raises(
        VettingError,
        match=re.escape("kept 1/3 positives (trait >= 60.0) and 1/3 negatives (trait <= 40.0)"),
    ):
        vet(e, scored, VetConfig(paired=True, min_per_side=2))


def test_default_config_needs_ten_per_side():
    e = elicited([1, 0] * 9, [p for p in range(9) for _ in (0, 1)])
    with pytest.raises(VettingError, match=re.escape("kept 9/9 positives")):
        vet(e, scores(*[100.0, 0.0] * 9), VetConfig())
    e = elicited([1, 0] * 10, [p for p in range(10) for _ in (0, 1)])
    assert vet(e, scores(*[100.0, 0.0] * 10), VetConfig()) == [True] * 20


def test_mismatched_lengths_are_an_error():
    e = elicited([1, 0], [0, 0])
    with pytest.raises(ValueError):
        vet(e, scores(80.0), CFG)
