"""Token windows over a (prompt, response) sequence: `response[:10]`, `prompt[-1]`, `all[:]`.

A window is chosen per sample from its prompt and response lengths, so one spec serves samples of
any length. Python slice semantics apply inside the chosen span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPANS = ("response", "prompt", "all")
_SLICE = re.compile(r"^(response|prompt|all)\[(-?\d*):(-?\d*)\]$")
_INDEX = re.compile(r"^(response|prompt|all)\[(-?\d+)\]$")
EXAMPLES = (
    "response[:10], response[2:8], response[:], prompt[-1], all[:], or the shorthands 10, all"
)


class PositionError(ValueError):
    """An invalid position spec; the message lists valid examples."""


@dataclass(frozen=True)
class Position:
    """A slice of one span of the sequence; `index` set means a single token."""

    span: str
    start: int | None = None
    stop: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.span}[{self.index}]"
        a = "" if self.start is None else str(self.start)
        b = "" if self.stop is None else str(self.stop)
        return f"{self.span}[{a}:{b}]"

    @property
    def slug(self) -> str:
        """A filesystem-safe name: response[:10] -> response__10."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", str(self)).rstrip("_") or "all"

    @property
    def tag(self) -> str:
        """A short folder name: the shorthands `10` and `all` where they apply, else the slug."""
        if self.span == "response" and self.start is None and self.index is None:
            return "all" if self.stop is None else str(self.stop)
        return self.slug

    def bounds(self, prompt_len: int, response_len: int) -> tuple[int, int]:
        """Absolute [start, stop) token indices in prompt + response; may be empty."""
        offset, length = {
            "response": (prompt_len, response_len),
            "prompt": (0, prompt_len),
            "all": (0, prompt_len + response_len),
        }[self.span]
        if self.index is not None:
            i = self.index + length if self.index < 0 else self.index
            return (offset + i, offset + i + 1) if 0 <= i < length else (offset, offset)
        a, b, _ = slice(self.start, self.stop).indices(length)
        return offset + a, offset + max(a, b)


def parse_position(spec: str | int) -> Position:
    """Parse a window spec; `10` means `response[:10]` and `all` means `response[:]`."""
    text = str(spec).strip()
    if text.isdigit():
        if int(text) == 0:
            raise PositionError(f"position {spec!r} selects no tokens; valid: {EXAMPLES}")
        return Position("response", None, int(text))
    if text == "all":
        return Position("response")
    if m := _INDEX.match(text):
        return Position(m[1], index=int(m[2]))
    if m := _SLICE.match(text):
        to_int = lambda s: int(s) if s else None  # noqa: E731
        start, stop = to_int(m[2]), to_int(m[3])
        if start is not None and stop is not None and (start < 0) == (stop < 0) and stop <= start:
            raise PositionError(
                f"position {spec!r} is an empty window ({start} >= {stop}: no token of any "
                f"sample); valid: {EXAMPLES}"
            )
        if stop == 0:
            raise PositionError(f"position {spec!r} selects no tokens; valid: {EXAMPLES}")
        return Position(m[1], start, stop)
    raise PositionError(f"invalid position {spec!r}; valid: {EXAMPLES}")
