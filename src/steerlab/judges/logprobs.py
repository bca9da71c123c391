"""Logprob-weighted scores: a judge's expected number 0-100 from its first few tokens' top-k.

Input: one list per generated position of (token string, logprob) candidates, as an API returns
them: position k+1 is conditioned on the token actually chosen at position k (the greedy token at
temperature 0), so continuations are only known along the greedy path.

Numbers are read as a tree of token concatenations: a number token may be followed by digit
tokens ("1", "0", "0" -> 100; "8", "5" -> 85), and it ends at the first non-digit token (end of
text, punctuation, a space, a word) or when the positions run out. Whole-number tokenizers
("85", " 85") are the one-level case of the same tree.

Approximation off the greedy path: a candidate at position k that is not the chosen token is
expanded with the *chosen* token's continuation distribution at k+1 (the next digit is assumed
independent of the digits before it), but only while one more digit could still give a valid
number; an off-path prefix that cannot grow ("95", "80") is taken as complete. This is exact along
the greedy path, and turns a non-greedy first digit "7" into ~"7x" with the greedy branch's
second-digit mix (not into 7, badly wrong for digit-splitting tokenizers). When the chosen token
is not part of a number (e.g. a refusal word), later positions say nothing about digits, so
numeric candidates there are taken as complete numbers. Probability the top-k lists do not cover,
words, refusals and values > 100 carry no mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TopLogprobs = Sequence[Sequence[tuple[str, float]]]
MAX_VALUE = 100


def _digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _greedy_path(
    positions: TopLogprobs, chosen: Sequence[str] | None
) -> tuple[list[str], list[bool]]:
    """The chosen tokens (given, else each top candidate) and whether each is inside a number."""
    taken = (
        list(chosen)
        if chosen is not None
        else [max(cands, key=lambda c: c[1])[0] if cands else "" for cands in positions]
    )
    inside, prefix = [], ""
    for tok in taken[: len(positions)]:
        if not prefix and tok and not tok.strip():
            inside.append(True)  # a leading whitespace token ("▁", " ") before the digits
            continue
        body = tok.lstrip() if not prefix else tok
        if not (_digits(body) and int(prefix + body) <= MAX_VALUE):
            break
        prefix += body
        inside.append(True)
    return taken, inside + [False] * (len(positions) - len(inside))


def value_distribution(
    positions: TopLogprobs, chosen: Sequence[str] | None = None
) -> dict[int, float]:
    """Probability of each valid integer 0-100 as the judge's answer (see the module docstring)."""
    taken, inside = _greedy_path(positions, chosen)
    out: dict[int, float] = {}

    def add(prefix: str, p: float) -> None:
        if prefix:
            out[int(prefix)] = out.get(int(prefix), 0.0) + p

    def walk(k: int, prefix: str, p: float, on_path: bool) -> None:
        if k >= len(positions):  # ran out of generated tokens: the number is complete
            add(prefix, p)
            return
        # position k+1 continues the candidates at k only if the greedy path is in a number
        more = k + 1 < len(positions) and inside[k]
        for tok, lp in positions[k]:
            q = p * math.exp(lp)
            path = on_path and k < len(taken) and tok == taken[k]
            if not prefix and tok and not tok.strip():
                if more:
                    walk(k + 1, "", q, path)
                continue
            body = tok.lstrip() if not prefix else tok  # " 85" starts a number; " 5" ends one
            stem = body.rstrip()
            if not _digits(stem):
                add(prefix, q)  # a non-digit token ends the number (or, with no prefix, no mass)
                continue
            value = prefix + stem
            if int(value) > MAX_VALUE:
                continue
            # off the greedy path the continuation is borrowed: use it only where a next digit
            # could still give a valid number (so "9" grows like "1" -> "10", but "95" is whole)
            grows = path or int(value + "0") <= MAX_VALUE
            if more and stem == body and grows:
                walk(k + 1, value, q, path)
            else:  # trailing whitespace ends it, or nothing is known about what follows
                add(value, q)

    walk(0, "", 1.0, True)
    return out


def expected_score(
    positions: TopLogprobs, min_mass: float = 0.25, chosen: Sequence[str] | None = None
) -> tuple[float | None, float]:
    """(sum v p(v) / sum p(v), mass) over valid integers; score None if mass < `min_mass`."""
    dist = value_distribution(positions, chosen)
    mass = sum(dist.values(), 0.0)
    if mass <= 0 or mass < min_mass:
        return None, mass
    return sum(v * p for v, p in dist.items()) / mass, mass
