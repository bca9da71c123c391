"""An offline judge with no LLM: a small sentence encoder, the unsteered model's own likelihood of
the answer and repetition measures, mapped to 0-100 by small models fitted on labelled rows.

Trait score (one model per trait, fitted on that trait's `calibration.jsonl` only)
    Stage 1: a ridge regression on the 0-100 `trait_score` labels over
    [all-MiniLM-L6-v2 embedding of the answer, of its first sentence, mean embedding of its
    sentences, w x TF-IDF of its word 1-2-grams (vocabulary: terms in >= 2 calibration
    answers)]. The ridge penalty and the TF-IDF block weight w are picked by 5-fold
    cross-validation (Spearman) on the calibration rows. Sentence-level embeddings matter: a
    whole-answer embedding is dominated by the topic, while stance ("I don't agree", "Great
    plan!", "I have no record of...") lives in single sentences and words.
    Stage 2: a linear model over the stage-1 score and question-answer relevance r (encoder
    cosine), with the hinge terms s*clip(r, 0, 0.4) and min(r, 0.3), fitted on out-of-fold
    stage-1 scores: an answer that ignores the question is not enacting the trait whatever its
    vocabulary. A monotone two-parameter sigmoid fitted on out-of-fold outputs maps to the 0-100
    label scale (ridge shrinks extremes towards the mean; the sigmoid undoes that).

Coherence score (one model, fitted on every registered trait's calibration rows pooled)
    Features: hinges of the unsteered LM's mean per-token negative log-likelihood (NLL) of the
    answer after the chat-templated question, at the 50/75/90th percentiles of the calibration
    answers' NLL (only unusually *surprising* text counts: word salad); the share of tokens
    with NLL > 8 nats; distinct-1/2/3 ratios; the share of words covered by the longest run of
    one repeated n-gram; max(0, 0.5 - zlib compression ratio) (only strong compressibility,
    i.e. repetition, counts: above 0.5 the ratio mostly tracks length); the share of letters
    among characters; and the question-answer encoder cosine (relevance). Features are clipped
    to the range seen in calibration, standardised, and fed to a ridge regression on the 0-100
    `coherence` labels whose coefficients are sign-constrained (more surprising, more
    repetitive or less relevant text can only score lower), penalty by cross-validation, then
    the same sigmoid mapping. The constraint matters for the real use: a model's own greedy
    answers are far *less* surprising to it than human-written calibration text, and low NLL
    must not read as "repetition loop". Answer length is deliberately not a feature: it
    predicts the labels of hand-written calibration data, not of generations cut at a fixed
    token budget. NLL depends on the LM, so the coherence model is refitted, and cached
    separately, per LM ref.

What it is calibrated on
    Only the `calibration.jsonl` rows of the registered trait folders (by default every
    `traits/*/` folder that has one): a few hundred short English chat answers to each trait's
    questions, with fluent answers at both ends of the trait scale and deliberately broken ones
    (word salad, repetition loops, off-topic answers), labelled 0-100 for trait and coherence.
    Scores are meaningful in that regime: English answers of a sentence to a few paragraphs.

What it cannot see
    Factual truth: a fluent fabrication and a correct answer look alike to every feature here
    (hallucination scores follow the calibration rows' *style* of confident specifics versus
    hedging and "I have no record of that"). Subtle sarcasm or irony, malice expressed in
    innocuous words, whether praise is deserved, long-range logical consistency, and negation
    the encoder misses. The encoder reads 256 word pieces per text and the mean over at most
    `MAX_SENTENCES` sentences; the LM reads at most `max_answer_tokens` answer tokens. Vocabulary
    from outside the calibration answers carries no TF-IDF signal. Non-English text is scored but
    the encoder, TF-IDF and labels are English, so such scores are unreliable (flagged in the
    note). Empty answers get trait 0 and coherence 0 by rule, not by a fitted model.

Fitted parameters are cached as JSON (never pickle) under `<cache_dir>/offline_judge/`, keyed by
the calibration data hash, the encoder id, the LM ref (coherence only) and `VERSION`.

Code: the features in `offline_features`, the fitted models in `offline_models`, the judge here.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from steerlab.cache import digest
from steerlab.data import TRAITS_DIR, Labelled, TraitData, data_path, read_labelled
from steerlab.judges.base import JudgeScore, clip_answer
from steerlab.judges.config import OfflineJudgeConfig
from steerlab.judges.offline_features import (
    COHERENCE_BASE,
    ENCODER_ID,
    Encoded,
    Encoder,
    JudgeSetupError,
    answer_nll,
    encode_pairs,
    nll_stats,
    non_english,
    text_stats,
)
from steerlab.judges.offline_models import (
    FOLDS,
    CoherenceModel,
    TraitModel,
    fit_coherence_model,
    fit_trait_model,
)

if TYPE_CHECKING:
    from steerlab.models import LoadedModel

log = logging.getLogger(__name__)

BAR_MIN = 64  # answers scored at once from which the passes over them show progress bars
VERSION = "offline-judge/4"  # 4: TF-IDF stored as scikit-learn's vocabulary_ + idf_


# --------------------------------------------------------------------------- calibration data


def labelled_hash(rows: Sequence[Labelled]) -> str:
    return digest([[r.question, r.answer, r.trait_score, r.coherence] for r in rows])


def _trait_name(folder: Path) -> str:
    meta = folder / "trait.yaml"
    if meta.is_file():
        data = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict) and data.get("name"):
            return str(data["name"])
    return folder.name


def discover_calibration(dirs: Sequence[str | Path] | None = None) -> dict[str, list[Labelled]]:
    """trait name -> calibration rows, from the given trait folders or every `traits/*/` one."""
    if dirs is None:
        folders = sorted(p.parent for p in TRAITS_DIR.glob("*/calibration.jsonl"))
    else:
        folders = [data_path(d) for d in dirs]
    return {_trait_name(d): read_labelled(d / "calibration.jsonl") for d in folders}


# --------------------------------------------------------------------------- the judge


class OfflineJudge:
    """Trait and coherence scores without an LLM judge (see the module docstring).

    `model` must be the unsteered LM: its likelihood of an answer measures fluency.
    `calibration` maps trait name -> labelled rows (default: every `traits/*/calibration.jsonl`);
    the coherence model pools all of them. A trait is scored with the registered rows of its
    name; a trait with no registered rows is fitted on its own `calibration` and registered,
    which changes `identity`: register every trait up front so cached scores stay keyed right.
    """

    def __init__(
        self,
        model: LoadedModel,
        cache_dir: Path,
        calibration: Mapping[str, Sequence[Labelled]] | None = None,
        encoder_batch_size: int = 64,
        max_answer_tokens: int = 256,
        token_budget: int = 2048,
    ) -> None:
        self.lm = model
        self.cache_dir = Path(cache_dir) / "offline_judge"
        source = discover_calibration() if calibration is None else calibration
        self.calibration = {k: list(v) for k, v in source.items()}
        self.encoder = Encoder(encoder_batch_size)
        self.max_answer_tokens = int(max_answer_tokens)
        self.token_budget = int(token_budget)
        self._trait_models: dict[str, TraitModel] = {}
        self._coherence: CoherenceModel | None = None
        self._pool = [r for k in sorted(self.calibration) for r in self.calibration[k]]
        self._pool_hash = labelled_hash(self._pool)

    @classmethod
    def from_options(
        cls, model: LoadedModel, cache_dir: Path, options: Mapping[str, Any] | None = None
    ) -> OfflineJudge:
        opts = dict(options or {})
        valid = OfflineJudgeConfig.OPTIONS
        unknown = set(opts) - set(valid)
        if unknown:
            raise ValueError(
                f"unknown offline judge option(s) {sorted(unknown)}; valid: {', '.join(valid)}"
            )
        dirs = opts.pop("calibration_dirs", None)
        return cls(model, cache_dir, discover_calibration(dirs), **opts)

    @property
    def identity(self) -> str:
        hashes = ",".join(f"{k}:{labelled_hash(v)}" for k, v in sorted(self.calibration.items()))
        return (
            f"offline {VERSION} encoder={ENCODER_ID} lm={self.lm.ref} "
            f"max_answer_tokens={self.max_answer_tokens} "
            f"coherence_calibration={self._pool_hash} trait_calibration={hashes}"
        )

    # -- features

    def _coherence_base(
        self,
        questions: Sequence[str],
        answers: Sequence[str],
        enc: Encoded,
        desc: str | None = None,
    ) -> np.ndarray:
        nlls = answer_nll(
            self.lm, questions, answers, self.max_answer_tokens, self.token_budget, desc
        )
        rows = []
        for i, a in enumerate(answers):
            f = nll_stats(nlls[i]) | text_stats(a) | {"qa_cosine": float(enc.relevance[i])}
            rows.append([f[k] for k in COHERENCE_BASE])
        return np.asarray(rows, dtype=np.float64).reshape(len(answers), len(COHERENCE_BASE))

    # -- fitted models: lazily, once, cached on disk

    def _load_or_fit(self, path: Path, cls: Any, fit: Callable[[], Any]) -> Any:
        if path.is_file():
            try:
                return cls.from_json(path.read_text(encoding="utf-8"))
            except (ValueError, TypeError, KeyError):
                log.warning("%s: unreadable fitted judge parameters; refitting", path)
        model = fit()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(model.to_json(), encoding="utf-8")
        tmp.replace(path)
        return model

    def trait_model(self, name: str, rows: Sequence[Labelled]) -> TraitModel:
        calib = labelled_hash(rows)
        key = digest(VERSION, ENCODER_ID, "trait", calib)
        if key not in self._trait_models:

            def fit() -> TraitModel:
                if len(rows) < 2 * FOLDS:
                    raise JudgeSetupError(
                        f"trait {name!r}: the offline judge needs at least {2 * FOLDS} labelled "
                        f"calibration rows to fit a trait model; found {len(rows)}"
                    )
                qs, ans = [r.question for r in rows], [r.answer for r in rows]
                log.info(
                    "offline judge: fitting the trait model for %r on %d labelled calibration "
                    "rows (sentence embeddings, then a cross-validated grid; once, then cached "
                    "in %s)",
                    name,
                    len(rows),
                    self.cache_dir,
                )
                started = time.monotonic()
                enc = encode_pairs(self.encoder, qs, ans, desc=f"judge: embed {name} calibration")
                m = fit_trait_model(enc, ans, np.array([r.trait_score for r in rows]))
                m.meta |= {"trait": name, "calibration": calib, "encoder": ENCODER_ID}
                log.info(
                    "offline judge: fitted trait model %r in %.0fs %s",
                    name,
                    time.monotonic() - started,
                    m.meta,
                )
                return m

            path = self.cache_dir / f"trait-{_safe(name)}-{key}.json"
            self._trait_models[key] = self._load_or_fit(path, TraitModel, fit)
        return self._trait_models[key]

    def coherence_model(self) -> CoherenceModel:
        if self._coherence is None:
            pool = self._pool
            key = digest(VERSION, ENCODER_ID, self.lm.ref, self.max_answer_tokens, self._pool_hash)

            def fit() -> CoherenceModel:
                if len(pool) < 2 * FOLDS:
                    raise JudgeSetupError(
                        f"the offline judge needs labelled calibration rows to fit its coherence "
                        f"model; found {len(pool)} (add traits/<trait>/calibration.jsonl)"
                    )
                qs, ans = [r.question for r in pool], [r.answer for r in pool]
                log.info(
                    "offline judge: fitting the coherence model on %d calibration rows of %d "
                    "trait(s) (embeddings, the LM's likelihood of each answer, then a "
                    "cross-validated fit; once per LM, then cached in %s)",
                    len(pool),
                    len(self.calibration),
                    self.cache_dir,
                )
                started = time.monotonic()
                enc = encode_pairs(self.encoder, qs, ans, desc="judge: embed calibration")
                base = self._coherence_base(qs, ans, enc, desc="judge: LM likelihood")
                m = fit_coherence_model(base, np.array([r.coherence for r in pool]))
                m.meta |= {"calibration": self._pool_hash, "lm": self.lm.ref, "encoder": ENCODER_ID}
                log.info(
                    "offline judge: fitted coherence model in %.0fs %s",
                    time.monotonic() - started,
                    m.meta,
                )
                return m

            path = self.cache_dir / f"coherence-{key}.json"
            self._coherence = self._load_or_fit(path, CoherenceModel, fit)
        return self._coherence

    # -- scoring

    def score(self, trait: TraitData, pairs: Sequence[tuple[str, str]]) -> list[JudgeScore]:
        """Score every pair in batched passes; a bad answer gets a defined score and a note."""
        if trait.name not in self.calibration and trait.calibration:
            log.warning(
                "trait %r is not among the offline judge's calibration traits %s; fitting on its "
                "own calibration rows and registering them (identity changes: list its folder in "
                "judge.options.calibration_dirs)",
                trait.name,
                sorted(self.calibration),
            )
            self.calibration[trait.name] = list(trait.calibration)
        rows = self.calibration.get(trait.name, [])
        notes: list[list[str]] = [[] for _ in pairs]
        live, questions, answers = [], [], []
        for i, (q, a) in enumerate(pairs):
            q = q if isinstance(q, str) else ("" if q is None else str(q))
            a = a if isinstance(a, str) else ("" if a is None else str(a))
            a, clipped = clip_answer(a)
            if clipped:
                notes[i].append(clipped)
            if not a.strip():
                notes[i].append("empty answer")
                continue
            if non_english(a):
                notes[i].append("non-English text: encoder and calibration are English-only")
            live.append(i)
            questions.append(q)
            answers.append(a)
        results: list[tuple[float | None, float | None, str]] = []
        if live:
            if not rows:
                for i in live:
                    notes[i].append(f"no calibration rows for trait {trait.name!r}: no trait score")
            tmodel = self.trait_model(trait.name, rows) if rows else None
            many = len(answers) >= BAR_MIN  # e.g. every elicited answer: a bar per pass
            desc = f"judge {trait.name}: {len(answers)} answers" if many else None
            if many:
                log.info(
                    "offline judge: scoring %d %s answers (embeddings, then the LM's likelihood)",
                    len(answers),
                    trait.name,
                )
            results = self._score_batch(tmodel, self.coherence_model(), questions, answers, desc)
        out = [JudgeScore(0.0, 0.0, "; ".join(n)) for n in notes]
        for (t, c, err), i in zip(results, live, strict=True):
            out[i] = JudgeScore(t, c, "; ".join(notes[i] + ([err] if err else [])))
        return out

    def _score_batch(
        self,
        tmodel: TraitModel | None,
        cmodel: CoherenceModel,
        questions: Sequence[str],
        answers: Sequence[str],
        desc: str | None = None,
    ) -> list[tuple[float | None, float | None, str]]:
        """Batched features and scores; if a batch fails, its halves are retried so one answer
        that breaks the encoder or the LM costs only its own score (None, with the error).
        `desc`: label of the progress bars of a large batch."""
        try:
            enc = encode_pairs(self.encoder, questions, answers, desc and f"{desc}, embed")
            t = tmodel.predict(enc, answers) if tmodel is not None else [None] * len(answers)
            c = cmodel.predict(
                self._coherence_base(questions, answers, enc, desc and f"{desc}, LM likelihood")
            )
        except JudgeSetupError:
            raise
        except Exception as e:  # noqa: BLE001 - isolate the failing answer, keep the rest
            if len(answers) == 1:
                log.warning("offline judge: could not score an answer: %r", e)
                return [(None, None, f"judge error: {type(e).__name__}: {e}"[:300])]
            mid = len(answers) // 2
            return self._score_batch(
                tmodel, cmodel, questions[:mid], answers[:mid]
            ) + self._score_batch(tmodel, cmodel, questions[mid:], answers[mid:])
        return [
            (None if tv is None else round(float(tv), 2), round(float(cv), 2), "")
            for tv, cv in zip(t, c, strict=True)
        ]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
