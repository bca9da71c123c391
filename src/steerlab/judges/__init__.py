"""Judges score (question, answer) pairs: trait 0-100 for a rubric, and coherence 0-100.

Backends: `offline` (no LLM: text-encoder classifier + the model's own perplexity), `openai`
(any OpenAI-compatible endpoint, logprob-weighted), `hf` (a local transformers model, same
logprob method). `factory.make_judge` builds one from the `judge` config group (typed per backend
by `config`); `cached_scores` puts an on-disk score cache keyed by the judge's identity and the
exact texts in front of any judge. The validation CLI is `steerlab.judge_validation`.
"""

from steerlab.judges.base import Judge, JudgeScore, cached_scores

__all__ = ["Judge", "JudgeScore", "cached_scores"]
