"""A per-token view a person can read: one HTML page, each response's tokens coloured by their
projection on the trait vector (red above the centre, blue below, white near it).

Self-contained (inline CSS, no script, no network): it opens from disk or as an MLflow artifact.
The colour scale is shared by every response on the page (the 95th percentile of |value|), so
shades compare across responses; hovering a token shows its value.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLE = """
body{font:14px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
.r{border-top:1px solid #ddd;padding:.6em 0}.h{color:#555;font-size:12px}
.p{color:#777;white-space:pre-wrap}.t{white-space:pre-wrap;font-family:ui-monospace,monospace}
.t span{border-radius:2px}.k{display:inline-block;width:2.5em;text-align:center}
"""


def colour(value: float, scale: float) -> str:
    """Diverging red/blue background: intensity |value| / scale, capped at 1."""
    x = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    fade = round(255 * (1 - abs(x)))
    return f"rgb(255,{fade},{fade})" if x >= 0 else f"rgb({fade},{fade},255)"


def _scale(rows: Sequence[dict[str, Any]]) -> float:
    vals = sorted(abs(v) for r in rows for v in r["per_token"])
    return vals[int(0.95 * (len(vals) - 1))] if vals else 1.0


def render(rows: Sequence[dict[str, Any]], title: str, note: str = "") -> str:
    """The page: one block per response (its keys `prompt`, `tokens`, `per_token`,
    `mean_response`, `last_prompt` and any label, trial or coef it carries)."""
    scale = _scale(rows) or 1.0
    legend = "".join(
        f'<span class="k" style="background:{colour(v * scale, scale)}">{v * scale:+.2g}</span>'
        for v in (-1, -0.5, 0, 0.5, 1)
    )
    out = [
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style><h2>{html.escape(title)}</h2>",
        f"<p>{html.escape(note)}</p><p>scale: {legend}</p>",
    ]
    for i, r in enumerate(rows):
        tags = [f"#{i}"] + [
            f"{k} {r[k]}"
            for k in ("label", "trial", "layer_steered", "coef")
            if r.get(k) is not None
        ]
        head = (
            f"{' · '.join(map(str, tags))} · mean over response {r['mean_response']:+.3f}"
            f" · last prompt token {r['last_prompt']:+.3f}"
        )
        spans = "".join(
            f'<span style="background:{colour(v, scale)}" title="{v:+.3f}">{html.escape(t)}</span>'
            for t, v in zip(r["tokens"], r["per_token"], strict=True)
        )
        out.append(
            f'<div class="r"><div class="h">{html.escape(head)}</div>'
            f'<div class="p">{html.escape(r["prompt"])}</div><div class="t">{spans}</div></div>'
        )
    return "\n".join(out) + "\n"


def write(path: Path, rows: Sequence[dict[str, Any]], title: str, note: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(rows, title, note), encoding="utf-8")
    return path
