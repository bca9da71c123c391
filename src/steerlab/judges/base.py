"""The judge interface and the on-disk score cache shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from steerlab import timing
from steerlab.cache import KeyedJsonlStore, digest
from steerlab.data import TraitData

MAX_ANSWER_CHARS = 20_000  # longer answers are truncated before judging (and flagged)


@dataclass(frozen=True)
class JudgeScore:
    """None means the judge could not score (e.g. too little probability on numbers)."""

    trait: float | None
    coherence: float | None
    note: str = ""  # e.g. "truncated", "empty answer", "no score: mass 0.12"


class Judge(Protocol):
    """Anything that scores answers; `identity` must change whenever its scores could."""

    @property
    def identity(self) -> str: ...

    def score(self, trait: TraitData, pairs: Sequence[tuple[str, str]]) -> list[JudgeScore]:
        """Score (question, answer) pairs in one batch, never raising for a single bad answer."""
        ...


def clip_answer(answer: str) -> tuple[str, str]:
    """Truncate huge answers so a judge's context is never exceeded; say so in the note."""
    if len(answer) > MAX_ANSWER_CHARS:
        return answer[:MAX_ANSWER_CHARS], f"truncated from {len(answer)} chars"
    return answer, ""


def cached_scores(
    judge: Judge, trait: TraitData, pairs: Sequence[tuple[str, str]], cache_dir: Path
) -> list[JudgeScore]:
    """Score with a per-text cache: pairs already scored by the same judge cost nothing."""
    store = KeyedJsonlStore(
        cache_dir / "judge" / f"{digest(judge.identity, trait.name, trait.rubric.text())}.jsonl",
        ("k", "trait", "coherence"),
    )
    known = {
        k: JudgeScore(r["trait"], r["coherence"], r.get("note", ""))
        for k, r in store.records.items()
    }
    keys = [digest(q, a, n=24) for q, a in pairs]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
    if todo:
        with timing.stage("judge"):
            fresh = judge.score(trait, [pairs[i] for i in todo])
        for i, s in zip(todo, fresh, strict=True):
            known[keys[i]] = s
        store.add(
            {"k": keys[i], "trait": s.trait, "coherence": s.coherence, "note": s.note}
            for i, s in zip(todo, fresh, strict=True)
            if not (s.trait is None and s.coherence is None)  # nothing scored: retry next time
        )
    return [known[k] for k in keys]
