"""What the LLM judges share: prompt templates and the trait/coherence/relevance flow.

A backend only turns rendered prompts into `Reading`s (expected number + probability mass);
everything else (empty answers, clipping, the relevance cap on coherence, notes, identity) lives
here so the `openai` and `hf` backends score identically given the same next-token logprobs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from steerlab.cache import digest
from steerlab.data import TraitData
from steerlab.judges.base import JudgeScore, clip_answer

KINDS = ("trait", "coherence", "relevance")
_FIELD = re.compile(r"\{(rubric|question|answer|trait)\}")
RELEVANCE_THRESHOLD = 50.0  # relevance below this marks an answer off-topic...
OFF_TOPIC_CAP = 50.0  # ...and caps its coherence here


@dataclass(frozen=True)
class Prompts:
    """Judge prompt templates with {rubric}, {question}, {answer} (and optional {trait})."""

    trait: str
    coherence: str
    relevance: str

    @classmethod
    def from_mapping(cls, m: Mapping[str, str] | None) -> Prompts:
        m = dict(m or {})
        missing = [k for k in KINDS if not isinstance(m.get(k), str) or not m[k].strip()]
        unknown = sorted(set(m) - set(KINDS))
        if missing or unknown:
            raise ValueError(
                f"judge prompts need exactly the templates {list(KINDS)}; "
                f"missing {missing}, unknown {unknown}"
            )
        for k in KINDS:
            if "{answer}" not in m[k]:
                raise ValueError(f"judge prompt {k!r} has no {{answer}} placeholder")
        return cls(**{k: m[k] for k in KINDS})

    def render(self, kind: str, trait: TraitData, question: str, answer: str) -> str:
        """Fill placeholders in one pass, so braces inside answers or rubrics stay literal."""
        fields = {
            "rubric": trait.rubric.text(),
            "question": question,
            "answer": answer,
            "trait": trait.name,
        }
        return _FIELD.sub(lambda m: fields[m.group(1)], getattr(self, kind))

    def version(self, *extra: object) -> str:
        """Hash of the templates and any scoring settings: part of every judge identity."""
        return digest(self.trait, self.coherence, self.relevance, *extra, n=12)


@dataclass(frozen=True)
class Reading:
    """One prompt's outcome: `failed` means no usable HTTP response (not just a low mass)."""

    score: float | None
    mass: float = 0.0
    note: str = ""
    failed: bool = False


def low_mass_note(mass: float) -> str:
    return f"no score: mass {mass:.2f}"


class LLMJudge:
    """Trait + coherence (grammar rubric, then relevance) from a backend's `read` of prompts."""

    backend = "llm"

    def __init__(self, prompts: Prompts, min_mass: float = 0.25, max_tokens: int = 3) -> None:
        if not 1 <= max_tokens <= 3:
            raise ValueError(f"max_tokens must be 1-3 (a number 0-100), got {max_tokens}")
        self.prompts = prompts
        self.min_mass = float(min_mass)
        self.max_tokens = int(max_tokens)

    def _where(self) -> str:
        """Backend-specific identity part (endpoint + model, or model reference)."""
        raise NotImplementedError

    def read(self, texts: Sequence[str]) -> list[Reading]:
        """One `Reading` per rendered prompt, in order (the backend's next-token logprobs)."""
        raise NotImplementedError

    @property
    def identity(self) -> str:
        version = self.prompts.version(
            self.min_mass, self.max_tokens, RELEVANCE_THRESHOLD, OFF_TOPIC_CAP
        )
        return f"{self.backend}:{self._where()}:prompts-{version}"

    def score(self, trait: TraitData, pairs: Sequence[tuple[str, str]]) -> list[JudgeScore]:
        """Round 1 reads trait + coherence; round 2 reads relevance only where it can cap."""
        todo: list[tuple[int, str, str]] = []  # (pair index, question, clipped answer)
        notes: list[list[str]] = [[] for _ in pairs]
        out: list[JudgeScore | None] = [None] * len(pairs)
        for i, (q, a) in enumerate(pairs):
            if not a.strip():
                out[i] = JudgeScore(None, 0.0, "empty answer")
                continue
            a, clip_note = clip_answer(a)
            notes[i] += [clip_note] if clip_note else []
            todo.append((i, q, a))
        first = self.read(
            [
                self.prompts.render(k, trait, q, a)
                for _, q, a in todo
                for k in ("trait", "coherence")
            ]
        )
        trait_r, coh_r = first[0::2], first[1::2]
        ask = [j for j, r in enumerate(coh_r) if r.score is not None and r.score > OFF_TOPIC_CAP]
        rel = (
            self.read(
                [self.prompts.render("relevance", trait, todo[j][1], todo[j][2]) for j in ask]
            )
            if ask
            else []
        )
        rel_r: dict[int, Reading] = dict(zip(ask, rel, strict=True))
        for j, (i, _, _) in enumerate(todo):
            out[i] = _combine(trait_r[j], coh_r[j], rel_r.get(j), notes[i])
        return [s for s in out if s is not None]


def _combine(t: Reading, c: Reading, r: Reading | None, notes: list[str]) -> JudgeScore:
    failed = [x.note for x in (t, c, r) if x is not None and x.failed]
    if failed:  # a request that never got an answer: report the reason, score nothing
        return JudgeScore(None, None, "; ".join(notes + failed[:1]))
    notes = notes + [f"{k}: {x.note}" for k, x in (("trait", t), ("coherence", c)) if x.note]
    coherence = c.score
    if coherence is not None and r is not None:
        if r.score is None:
            notes.append(f"relevance: {r.note or 'no score'} (coherence not capped)")
        elif r.score < RELEVANCE_THRESHOLD:
            coherence = min(coherence, OFF_TOPIC_CAP)
            notes.append(f"off-topic: relevance {r.score:.0f}, coherence capped")
    return JudgeScore(t.score, coherence, "; ".join(notes))
