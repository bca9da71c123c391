"""Markdown tables for reports and command-line summaries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cell(text: Any, limit: int = 300) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, at most `limit` chars."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s.replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table as lines: header, separator, one line per row (cells as given)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out
