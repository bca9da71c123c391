"""Steer the instruct model on held-out questions and judge the answers.

K configurations x Q questions run in ONE batched generate (per-row steering), and all answers
are judged in one cached call. A configuration is valid when mean coherence >= the threshold; its
delta is the trait mean minus the unsteered baseline's.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from steerlab.errors import InfraError
from steerlab.generation import GenConfig, cached_generate, generate, prompt_ids
from steerlab.judges.base import Judge, JudgeScore, cached_scores

if TYPE_CHECKING:
    from steerlab.data import TraitData
    from steerlab.models import LoadedModel
    from steerlab.steering import Terms


_SENTENCE_END = re.compile(r"(?<![0-9])[.!?][\"')\]]*(?=\s|$)")


def complete_sentences(text: str) -> str:
    """Drop the unfinished tail a token limit leaves (e.g. "Here's how:\n\n1. **"), so the
    judge rates what the model said, not where generation stopped. Text without any sentence end
    is kept whole (degenerate output stays visible)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


@dataclass
class Result:
    """Aggregate of one configuration over the steering questions."""

    trait: float
    coherence: float
    valid: bool
    baseline: float | None = None
    rows: list[dict] = field(default_factory=list)  # question, answer, trait, coherence, note

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None else self.trait - self.baseline


def _mean(xs: Sequence[float | None]) -> float:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else float("nan")


def _aggregate(
    questions: Sequence[str],
    answers: Sequence[str],
    scores: Sequence,
    coherence_min: float,
    baseline: float | None,
) -> Result:
    rows = [
        {"question": q, "answer": a, "trait": s.trait, "coherence": s.coherence, "note": s.note}
        for q, a, s in zip(questions, answers, scores, strict=True)
    ]
    trait, coh = _mean([s.trait for s in scores]), _mean([s.coherence for s in scores])
    if not (math.isfinite(trait) and math.isfinite(coh)):  # never a NaN result
        if not any(a.strip() for a in answers):
            raise ValueError(
                f"all {len(answers)} answers are empty: this steering breaks generation"
            )
        notes = "; ".join(sorted({s.note for s in scores if s.note}))[:300] or "no note"
        raise InfraError(f"the judge scored none of {len(answers)} answers ({notes})")
    return Result(trait, coh, coh >= coherence_min, baseline, rows)


def joined(rows: Sequence[dict], coherence_min: float, baseline: float | None) -> Result:
    """One configuration's result from the rows of its passes (in the questions' order): what
    one pass over all the questions gives."""
    trait, coh = _mean([r["trait"] for r in rows]), _mean([r["coherence"] for r in rows])
    return Result(trait, coh, coh >= coherence_min, baseline, list(rows))


def _judge(
    judge: Judge, trait: TraitData, questions: Sequence[str], answers: Sequence[str], cache: Path
) -> list[JudgeScore]:
    """Cached scores of each answer's complete sentences."""
    pairs = [(q, complete_sentences(a)) for q, a in zip(questions, answers, strict=True)]
    return cached_scores(judge, trait, pairs, cache)


def steering_questions(trait: TraitData, n: int | None, held_out: int = 0) -> list[str]:
    """The first `n` steering questions (None: all) of those the confirmation does not hold
    out (the last `held_out`)."""
    pool = trait.steering_questions[: len(trait.steering_questions) - held_out]
    return pool[:n] if n else list(pool)


def held_out_questions(trait: TraitData, held_out: int) -> list[str]:
    """The last `held_out` steering questions: never asked by a search, so a confirmation on
    them re-measures a chosen configuration without the winner's curse."""
    return trait.steering_questions[len(trait.steering_questions) - held_out :] if held_out else []


def baseline(
    model: LoadedModel,
    judge: Judge,
    trait: TraitData,
    questions: Sequence[str],
    gen: GenConfig,
    cache: Path,
    coherence_min: float = 70.0,
) -> Result:
    """Unsteered answers, generated and judged once; later calls hit the caches."""
    prompts = [prompt_ids(model, q) for q in questions]
    answers = [s.text for s in cached_generate(model, prompts, gen, cache, desc="baseline")]
    scores = _judge(judge, trait, questions, answers, cache)
    return _aggregate(questions, answers, scores, coherence_min, None)


def evaluate(
    model: LoadedModel,
    judge: Judge,
    trait: TraitData,
    configs: Sequence[Terms],
    questions: Sequence[str],
    gen: GenConfig,
    cache: Path,
    base: Result | None = None,
    coherence_min: float = 70.0,
) -> list[Result]:
    """Every configuration on every question in one batched generate, then one judge call."""
    prompts = [prompt_ids(model, q) for q in questions]
    rows = [cfg for cfg in configs for _ in prompts]
    samples = generate(
        model, [p for _ in configs for p in prompts], gen, rows, desc=f"steer x{len(configs)}"
    )
    answers = [s.text for s in samples]
    scores = _judge(judge, trait, [q for _ in configs for q in questions], answers, cache)
    n = len(questions)
    return [
        _aggregate(
            questions,
            answers[k * n : (k + 1) * n],
            scores[k * n : (k + 1) * n],
            coherence_min,
            base.trait if base else None,
        )
        for k in range(len(configs))
    ]
