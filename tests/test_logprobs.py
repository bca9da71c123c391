"""Expected judge scores from top logprobs: whole-number and digit-splitting tokenizers."""

from __future__ import annotations

import math

import pytest

from steerlab.judges.logprobs import expected_score, value_distribution


def lp(*cands: tuple[str, float]) -> list[tuple[str, float]]:
    """Candidates given as probabilities, stored as logprobs like an API returns them."""
    return [(t, math.log(p)) for t, p in cands]


def test_single_token_numbers_are_weighted_by_probability():
    score, mass = expected_score([lp(("85", 0.6), (" 80", 0.3), ("Sorry", 0.1))])
    assert mass == pytest.approx(0.9)
    assert score == pytest.approx((85 * 0.6 + 80 * 0.3) / 0.9)


def test_whole_number_followed_by_end_token():
    positions = [lp(("70", 0.5), ("100", 0.5)), lp(("<|im_end|>", 1.0))]
    assert expected_score(positions) == (pytest.approx(85.0), pytest.approx(1.0))


def test_split_digits_follow_the_greedy_path_exactly():
    # "8" then "5" (0.7) or end (0.3); "85" then end
    positions = [lp(("8", 0.6), ("7", 0.3), ("I", 0.1)), lp(("5", 0.7), ("", 0.3)), lp(("", 1.0))]
    dist = value_distribution(positions)
    assert dist[85] == pytest.approx(0.6 * 0.7)
    assert dist[8] == pytest.approx(0.6 * 0.3)  # a digit followed by a non-digit is one digit
    # the non-greedy "7" borrows the greedy second-digit distribution: 75 / 7
    assert dist[75] == pytest.approx(0.3 * 0.7)
    assert dist[7] == pytest.approx(0.3 * 0.3)
    assert sum(dist.values()) == pytest.approx(0.9)


def test_split_digits_reach_100_and_nothing_above():
    positions = [
        lp(("1", 0.9), ("9", 0.1)),
        lp(("0", 0.9), ("<end>", 0.1)),
        lp(("0", 0.95), ("<end>", 0.05)),
    ]
    dist = value_distribution(positions)
    assert dist[100] == pytest.approx(0.9 * 0.9 * 0.95)
    assert dist[10] == pytest.approx(0.9 * 0.9 * 0.05)
    assert dist[1] == pytest.approx(0.9 * 0.1)
    # off the greedy path "9" grows with the borrowed "0" to 90, which cannot grow further
    assert dist[90] == pytest.approx(0.1 * 0.9)
    assert max(dist) == 100
    score, mass = expected_score(positions)
    assert mass == pytest.approx(1.0)
    assert score == pytest.approx(sum(v * p for v, p in dist.items()))


def test_one_digit_number_with_one_position():
    assert expected_score([lp(("7", 1.0))]) == (pytest.approx(7.0), pytest.approx(1.0))


def test_leading_whitespace_token_before_digits():
    positions = [lp((" ", 0.8), ("I", 0.2)), lp(("4", 1.0)), lp(("2", 1.0))]
    score, mass = expected_score(positions)
    assert score == pytest.approx(42.0)
    assert mass == pytest.approx(0.8)


def test_spaced_digit_ends_the_number():
    # "5" then " 0" is "5 0": the number was 5
    assert expected_score([lp(("5", 1.0)), lp((" 0", 1.0))])[0] == pytest.approx(5.0)


def test_refusal_gets_no_mass():
    positions = [lp(("I", 0.7), ("As", 0.2), ("Sorry", 0.1)), lp((" cannot", 1.0))]
    assert expected_score(positions) == (None, 0.0)


def test_digits_after_a_refusal_are_taken_whole():
    # greedy path is a word, so position 1 says nothing about what follows the "5"
    positions = [lp(("I", 0.5), ("5", 0.5)), lp((" cannot", 1.0))]
    assert value_distribution(positions) == {5: pytest.approx(0.5)}


def test_low_mass_gives_no_score():
    positions = [lp(("The", 0.8), ("50", 0.2))]
    score, mass = expected_score(positions)
    assert score is None and mass == pytest.approx(0.2)
    assert expected_score(positions, min_mass=0.1)[0] == pytest.approx(50.0)


def test_values_above_100_are_invalid():
    score, mass = expected_score([lp(("150", 0.5), ("1000", 0.2), ("60", 0.3))])
    assert score == pytest.approx(60.0) and mass == pytest.approx(0.3)
    # split digits: "2","0","0" is 200 -> no mass; "2","0" end -> 20 keeps its mass
    dist = value_distribution([lp(("2", 1.0)), lp(("0", 1.0)), lp(("0", 0.6), ("", 0.4))])
    assert dist == {20: pytest.approx(0.4)}


def test_negative_and_decimal_tokens():
    assert expected_score([lp(("-", 1.0)), lp(("5", 1.0))]) == (None, 0.0)
    # "7" "." -> 7 (the number ends at the point)
    assert expected_score([lp(("7", 1.0)), lp((".", 1.0)), lp(("5", 1.0))])[0] == 7.0


def test_explicit_chosen_tokens_override_argmax():
    # the API chose "1" although "9" had a higher logprob: continuations belong to "1"
    positions = [lp(("9", 0.5), ("1", 0.4)), lp(("0", 1.0)), lp(("0", 1.0))]
    dist = value_distribution(positions, chosen=["1", "0", "0"])
    assert dist[100] == pytest.approx(0.4)
    assert dist[90] == pytest.approx(0.5)  # off-path "9" + borrowed "0", then whole
