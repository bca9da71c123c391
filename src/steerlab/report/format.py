"""Formatting of the report's numbers, run ids and layer lists (coefficients and layer labels
are `records.fmt_coef` and `records.layer_label`)."""

from __future__ import annotations

from collections.abc import Iterable


def short(run_id: str | None) -> str:
    """A run id as the report shows it: its first 8 characters, in backticks."""
    return f"`{run_id[:8]}`" if run_id else "—"


def fmt_delta(x: float | None) -> str:
    return "—" if x is None else f"{x:+.1f}"


def fmt_score(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def layer_ranges(layers: Iterable[int]) -> str:
    """[12, 13, 14, 15, 17] -> 'L12-15, L17'."""
    xs = sorted(set(layers))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(f"L{xs[i]}" if i == j else f"L{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(parts) or "—"


def missing(text: str) -> list[str]:
    """The italic line a section shows instead of its tables."""
    return [f"_{text}_", ""]
