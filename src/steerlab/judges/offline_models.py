"""The offline judge's fitted models: ridge regressions with cross-validated penalties, a monotone
sigmoid to the 0-100 label scale, and their JSON form (never pickle).

See `steerlab.judges.offline` for what they are fitted on and how they are used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from steerlab.judges.metrics import spearman
from steerlab.judges.offline_features import COHERENCE_BASE, Encoded, Tfidf

NLL_KNOTS = (0.5, 0.75, 0.9)  # calibration quantiles of mean NLL: only NLL above them counts
ZLIB_CAP = 0.5  # compression ratio below this counts as repetition; above it tracks length
ALPHAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
TFIDF_WEIGHTS = (1.0, 2.0, 3.0)
FOLDS = 5


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def fit_sigmoid(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the squared error of 100*sigmoid(a*(raw-50)/50 + b) against y."""
    from scipy.optimize import least_squares

    x = (np.asarray(raw) - 50.0) / 50.0

    def resid(p: np.ndarray) -> np.ndarray:
        return 100.0 * _sigmoid(p[0] * x + p[1]) - y

    res = least_squares(resid, x0=np.array([4.0, 0.0]), bounds=([0.05, -20.0], [200.0, 20.0]))
    return float(res.x[0]), float(res.x[1])


def to_score(raw: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.clip(100.0 * _sigmoid(a * (np.asarray(raw) - 50.0) / 50.0 + b), 0.0, 100.0)


def _cv_rho(pred: np.ndarray, y: np.ndarray) -> float:
    """Spearman for model selection: an undefined rho (e.g. constant predictions) ranks last."""
    rho = spearman(pred, y)
    return -1.0 if math.isnan(rho) else rho


def _folds(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    return list(KFold(max(2, min(FOLDS, n)), shuffle=True, random_state=seed).split(np.arange(n)))


def _oof(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int, seed: int = 0):
    out = np.zeros(n)
    for tr, te in _folds(n, seed):
        out[te] = fit_predict(tr, te)
    return out


@dataclass
class Linear:
    """clip to [lo, hi] -> standardise -> dot coef + intercept (empty lists: skip that step)."""

    coef: list[float]
    intercept: float
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.lo:
            x = np.clip(x, self.lo, self.hi)
        if self.mean:
            x = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return x @ np.asarray(self.coef) + self.intercept

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        alpha: float,
        standardise: bool = False,
        clip: bool = False,
        signs: np.ndarray | None = None,
    ) -> Linear:
        """Ridge; with `signs`, coefficient j is constrained to have sign signs[j] (or be 0)."""
        from sklearn.linear_model import Ridge

        x = np.asarray(x, dtype=np.float64)
        extra: dict[str, list[float]] = {}
        if clip:
            extra |= {"lo": x.min(0).tolist(), "hi": x.max(0).tolist()}
        if standardise:
            mean, scale = x.mean(0), x.std(0)
            scale[scale < 1e-8] = 1.0
            x = (x - mean) / scale
            extra |= {"mean": mean.tolist(), "scale": scale.tolist()}
        if signs is None:
            reg = Ridge(alpha=alpha).fit(x, y)
            return cls(reg.coef_.tolist(), float(reg.intercept_), **extra)
        sg = np.asarray(signs, dtype=np.float64)
        reg = Ridge(alpha=alpha, positive=True).fit(x * sg, y)
        return cls((reg.coef_ * sg).tolist(), float(reg.intercept_), **extra)


def _stage2_features(s: np.ndarray, rel: np.ndarray) -> np.ndarray:
    return np.stack([s, rel, s * np.clip(rel, 0.0, 0.4), np.minimum(rel, 0.3)], axis=1)


@dataclass
class TraitModel:
    tfidf: Tfidf
    tfidf_weight: float
    stage1: Linear
    stage2: Linear
    a: float
    b: float
    meta: dict[str, Any] = field(default_factory=dict)

    def features(self, enc: Encoded, answers: Sequence[str]) -> np.ndarray:
        return stage1_features(enc, self.tfidf.transform(answers), self.tfidf_weight)

    def predict(self, enc: Encoded, answers: Sequence[str]) -> np.ndarray:
        if not len(answers):
            return np.zeros(0)
        s = self.stage1(self.features(enc, answers))
        return to_score(self.stage2(_stage2_features(s, enc.relevance)), self.a, self.b)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TraitModel:
        d = json.loads(text)
        return cls(
            Tfidf(**d.pop("tfidf")),
            stage1=Linear(**d.pop("stage1")),
            stage2=Linear(**d.pop("stage2")),
            **d,
        )


def stage1_features(enc: Encoded, tfidf: np.ndarray, weight: float) -> np.ndarray:
    return np.concatenate([enc.answer, enc.first, enc.sent_mean, weight * tfidf], axis=1)


def fit_trait_model(enc: Encoded, answers: Sequence[str], y: np.ndarray) -> TraitModel:
    """Stage 1 (penalty and TF-IDF weight by CV), stage 2 on out-of-fold stage-1 scores,
    sigmoid on out-of-fold stage-2 outputs. Uses only the rows given."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    folds = _folds(n)
    # TF-IDF vocabulary per fold, so the CV score does not see held-out words
    fold_tfidf = []
    for tr, te in folds:
        tf = Tfidf.fit([answers[i] for i in tr])
        fold_tfidf.append(
            (tr, te, tf.transform([answers[i] for i in tr]), tf.transform([answers[i] for i in te]))
        )
    best: tuple[float, float, float, np.ndarray] | None = None
    for w in TFIDF_WEIGHTS:
        for alpha in ALPHAS:
            oof = np.zeros(n)
            for tr, te, xtr, xte in fold_tfidf:
                m = Linear.fit(stage1_features(_rows(enc, tr), xtr, w), y[tr], alpha)
                oof[te] = m(stage1_features(_rows(enc, te), xte, w))
            rho = _cv_rho(oof, y)
            if best is None or rho > best[0]:
                best = (rho, w, alpha, oof)
    assert best is not None
    rho1, w, alpha, oof1 = best
    tfidf = Tfidf.fit(answers)
    stage1 = Linear.fit(stage1_features(enc, tfidf.transform(answers), w), y, alpha)
    z = _stage2_features(oof1, enc.relevance)
    oof2 = _oof(lambda tr, te: Linear.fit(z[tr], y[tr], 1.0)(z[te]), n, seed=1)
    stage2 = Linear.fit(z, y, 1.0)
    a, b = fit_sigmoid(oof2, y)
    meta = {
        "n": n,
        "alpha": alpha,
        "tfidf_weight": w,
        "vocab": len(tfidf.vocabulary),
        "cv_spearman_stage1": rho1,
        "cv_spearman": _cv_rho(oof2, y),
    }
    return TraitModel(tfidf, w, stage1, stage2, a, b, meta)


def _rows(enc: Encoded, idx: np.ndarray) -> Encoded:
    return Encoded(enc.answer[idx], enc.first[idx], enc.sent_mean[idx], enc.relevance[idx])


@dataclass
class CoherenceModel:
    """A monotone linear model over coherence features: each feature may only push the score
    in its sensible direction (more surprising, more repetitive, less relevant: lower)."""

    knots: list[float]  # mean-NLL hinge points (calibration quantiles)
    model: Linear
    a: float
    b: float
    meta: dict[str, Any] = field(default_factory=dict)

    def expand(self, base: np.ndarray) -> np.ndarray:
        f = {k: base[:, [i]] for i, k in enumerate(COHERENCE_BASE)}
        return np.concatenate(
            [
                np.maximum(0.0, f["nll_mean"] - np.asarray(self.knots)[None]),
                f["nll_high_frac"],
                f["distinct_1"],
                f["distinct_2"],
                f["distinct_3"],
                f["repeat_cover"],
                np.maximum(0.0, ZLIB_CAP - f["zlib_ratio"]),
                f["alpha_frac"],
                f["qa_cosine"],
            ],
            axis=1,
        )

    def signs(self) -> np.ndarray:
        return np.array([-1.0] * len(self.knots) + [-1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0])

    def predict(self, base: np.ndarray) -> np.ndarray:
        if not len(base):
            return np.zeros(0)
        return to_score(self.model(self.expand(base)), self.a, self.b)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CoherenceModel:
        d = json.loads(text)
        return cls(model=Linear(**d.pop("model")), **d)


def fit_coherence_model(base: np.ndarray, y: np.ndarray) -> CoherenceModel:
    """Sign-constrained ridge (penalty by CV) on the expanded features, sigmoid on its
    out-of-fold outputs. Uses only the rows given."""
    y = np.asarray(y, dtype=np.float64)
    knots = np.quantile(base[:, COHERENCE_BASE.index("nll_mean")], NLL_KNOTS).tolist()
    probe = CoherenceModel(knots, Linear([], 0.0), 1.0, 0.0)
    x, signs = probe.expand(base), probe.signs()

    def fit(rows: np.ndarray, alpha: float) -> Linear:
        return Linear.fit(x[rows], y[rows], alpha, standardise=True, clip=True, signs=signs)

    best: tuple[float, float, np.ndarray] | None = None
    for alpha in ALPHAS:
        oof = _oof(lambda tr, te, a=alpha: fit(tr, a)(x[te]), len(y))
        rho = _cv_rho(oof, y)
        if best is None or rho > best[0]:
            best = (rho, alpha, oof)
    assert best is not None
    rho, alpha, oof = best
    a, b = fit_sigmoid(oof, y)
    meta = {"n": len(y), "alpha": alpha, "cv_spearman": rho, "features": list(COHERENCE_BASE)}
    return CoherenceModel(knots, fit(np.arange(len(y)), alpha), a, b, meta)
