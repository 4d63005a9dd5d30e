"""The estimator and its probability calibration.

Binary poppy-versus-rest: one tree per boosting iteration instead of one per class, so
prediction over a county stays affordable (see ../shared/docs/ARCHITECTURE.md performance notes);
background classes still matter through the per-class false-alarm table of the report.
Class balance: poppy rows are repeated (seeded) until both classes have as many rows, rather
than weighted: scikit-learn's weighted binning is about 7x slower than the plain one on 2 cores
and repetition gives the same balance for tree models.
Calibration: Platt scaling (a logistic fit on the logit of out-of-fold scores), stored as two
numbers in model.json and applied at prediction, so the skops artifact holds only scikit-learn
types.
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from pipeline.config import ModelConfig

EPS = 1e-6


def make_estimator(cfg: ModelConfig):
    seed = cfg.seed
    if cfg.kind == "hgb":
        return HistGradientBoostingClassifier(
            max_iter=cfg.max_iter, learning_rate=cfg.learning_rate, max_depth=cfg.max_depth,
            min_samples_leaf=cfg.min_samples_leaf, l2_regularization=cfg.l2_regularization,
            early_stopping=False, random_state=seed)
    return RandomForestClassifier(
        n_estimators=cfg.n_estimators, max_depth=max(cfg.max_depth * 2, 8),
        min_samples_leaf=max(1, cfg.min_samples_leaf // 8), max_features="sqrt", n_jobs=2,
        random_state=seed)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    w = np.ones(len(y), dtype="float64")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos and n_neg:
        w[y == 1] = 0.5 / n_pos
        w[y == 0] = 0.5 / n_neg
    return w * len(y)


def balanced_index(y: np.ndarray, seed: int) -> np.ndarray:
    """Row indices in which the minority class is repeated to the size of the majority."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(pos) or not len(neg):
        return np.arange(len(y))
    small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    reps = len(big) // len(small)
    extra = np.random.default_rng(seed).choice(small, len(big) - reps * len(small),
                                               replace=False)
    return np.sort(np.concatenate([big, np.tile(small, reps), extra]))


def fit_balanced(estimator, X: np.ndarray, y: np.ndarray, seed: int):
    """Fit on the balanced rows. A feature without a single value there (a phase no training
    image falls in, or none of this fold's rows) is fitted as a constant: no split can use it,
    which is what a column of missing values meant, but scikit-learn 1.9's gradient boosting
    fails on a column that is entirely NaN. Prediction is unchanged: the trees never read it."""
    idx = balanced_index(y, seed)
    Xb = X[idx]
    empty = np.isnan(Xb).all(axis=0) if len(Xb) else np.zeros(Xb.shape[1], bool)
    if empty.any():
        Xb = Xb.copy()
        Xb[:, empty] = 0
    return estimator.fit(Xb, y[idx])


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def fit_platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) such that calibrated = sigmoid(a * logit(raw) + b), fitted on out-of-fold scores."""
    lr = LogisticRegression(C=1e4)
    lr.fit(logit(raw).reshape(-1, 1), y, sample_weight=balanced_weights(y))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def apply_platt(raw: np.ndarray, a: float, b: float) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-(a * logit(raw) + b)))).astype("float32")
