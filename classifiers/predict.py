"""Prediction, one tile at a time: features (feature, y, x) -> calibrated probability (y, x).

The detect orchestration hands each tile's feature block to :func:`predict_block`; the
estimator travels inside the run's tile context, which enters the dask graph once as a single
delayed object, so a distributed scheduler ships the model to each worker once, not per task.
Pixels whose features are all missing (no data, or masked on every date) get NaN probability.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from classifiers.artifact import Artifact
from classifiers.model import apply_platt
from pipeline.config import SurveyConfig
from pipeline.errors import ModelError


def check_fit(art: Artifact, feature_names: Sequence[str], sensor: str, calendar: str) -> None:
    """Refuse a model whose sensor, calendar or features do not fit the inputs."""
    want, have = art.feature_names, list(feature_names)
    if art.meta["sensor"] != sensor:
        raise ModelError(f"the model was trained for sensor '{art.meta['sensor']}', the images "
                         f"are '{sensor}'; use a model trained on this sensor")
    if art.meta["calendar"] != calendar:
        raise ModelError(f"the model was trained with calendar '{art.meta['calendar']}', the "
                         f"config uses '{calendar}'; use the same calendar or retrain")
    if want != have:
        missing = [f for f in want if f not in have][:3]
        raise ModelError(f"the model's features do not fit the inputs (missing e.g. {missing},"
                         f" {len(want)} expected, {len(have)} computed); check bands and config")


def predict_block(block: np.ndarray, estimator, calibration: dict) -> np.ndarray:
    nf, ny, nx = block.shape
    X = block.reshape(nf, -1).T
    valid = ~np.all(np.isnan(X), axis=1)
    out = np.full(ny * nx, np.nan, dtype="float32")
    if valid.any():
        raw = estimator.predict_proba(X[valid])[:, 1]
        out[valid] = apply_platt(raw, calibration["a"], calibration["b"])
    return out.reshape(ny, nx)


def pixel_threshold(model_threshold: float, cfg: SurveyConfig) -> float:
    """Two-level patch rule: pixels at or above this probability form patches, and a patch is
    kept when its peak reaches the model's threshold (and it passes the minimum mapping unit).
    Never above the model's threshold, so the rule only ever joins pixels to kept patches."""
    return float(min(cfg.patches.pixel_threshold, model_threshold))
