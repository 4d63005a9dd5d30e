"""Prediction, one tile at a time: features (feature, y, x) -> calibrated probability (y, x).

The detect orchestration hands each tile's feature block to :func:`predict_block`; the
estimator travels inside the run's tile context, which enters the dask graph once as a single
delayed object, so a distributed scheduler ships the model to each worker once, not per task.
Pixels without a clear image in any phase (no data, or masked on every date) get NaN
probability, also where neighbourhood features of their surroundings are finite (drone).
"""
from __future__ import annotations

import copy
import json
import logging
import weakref
from collections.abc import Sequence

import numpy as np

from classifiers.artifact import Artifact, ReducedModel, feature_phases
from classifiers.model import apply_platt
from indices.catalogue import load_catalogue
from indices.texture import LEAF_INDEX, split_var
from indices.window import phase_window
from pipeline.bands import ALL_BANDS, S2_BANDS
from pipeline.config import PHASES, Calendar, SurveyConfig
from pipeline.errors import ModelError
from pipeline.sensors import drone_cameras

log = logging.getLogger(__name__)


def _sensor_mismatch(trained: str, read: str) -> str:
    """The refusal for a model of another sensor; between two drone cameras it says how the
    camera was told (band names, file name, pixel size) and how to name a flight's bands."""
    cameras = {c.name: c for c in drone_cameras()}
    if "rgb" in (trained, read) and trained in cameras and read in cameras:
        # no file name makes an RGB orthomosaic: its layout does (3 bands of 8 bits, or
        # 16 bits named red, green, blue); the advice to put 'rgb' in the name did nothing
        what = {"rgb": "RGB orthomosaics (red, green, blue)"}
        return (f"the model was trained on {what.get(trained, trained + ' flights')}, the "
                f"images were read as {what.get(read, read + ' bands')}; use a model trained "
                f"on {what.get(read, read + ' flights')}")
    if trained in cameras and read in cameras:
        names = ", ".join(b.name for b in cameras[trained].bands)
        return (f"the model was trained for camera '{trained}', the images were read as "
                f"'{read}' (from their band names, file name or pixel size); if they are "
                f"{trained} flights, name the bands as the {trained} does ({names}) or put "
                f"'{trained}' in the file name, else use a model trained on {read}")
    return (f"the model was trained for sensor '{trained}', the images are '{read}'; use a "
            "model trained on this sensor")


def _season(definition: dict) -> str:
    """A calendar's phases and elevation rule, without its name and notes."""
    keep = ("phases", "elevation_shift_days_per_100m", "reference_elevation_m")
    return json.dumps({k: definition.get(k) for k in keep}, sort_keys=True)


def check_calendar(art: Artifact, calendar: Calendar) -> None:
    """Refuse a calendar of another region than the ones the model's scenes were sampled
    with. A calendar fits by its name (the region's calendar, its dates perhaps shifted to
    this year's spring, as docs/classifier.md advises: said in the log) or by its phases (a
    copy of a training calendar under another name). Checked before the images are read, so
    the refusal names the calendar, not a phase without images."""
    trained = art.meta.get("calendars") or {art.meta["calendar"]: None}
    season = _season(calendar.model_dump(mode="json"))
    if any(d is not None and _season(d) == season for d in trained.values()):
        return
    if calendar.name in trained:
        if trained[calendar.name] is not None:
            log.info("calendar '%s' has other phases than at training (shifted to this "
                     "season?): the features are taken in the config's phases", calendar.name)
        return
    names = ", ".join(f"'{n}'" for n in trained)
    raise ModelError(f"the model was trained with calendar {names}, the config uses "
                     f"'{calendar.name}'; use the same calendar or retrain")


def check_fit(art: Artifact, feature_names: Sequence[str], sensor: str,
              dropped_bands: dict[str, list[str]] | None = None,
              bands: Sequence[str] | None = None,
              terrain_correction: str | None = None) -> list[int] | None:
    """Refuse a model whose sensor, terrain correction or features do not fit the inputs
    (the calendar: :func:`check_calendar`). Returns where the model's features are among
    ``feature_names`` when the inputs give more (a band the training scene lacked: B12, or
    the 10 m bands only) or another order, None when they are the same.

    ``dropped_bands``: bands some images lack (band -> those images; a band must be on every
    date), named in the refusal as the likely cause; ``bands``: the scene's bands, so that a
    band no image has is named too."""
    want, have = art.feature_names, list(feature_names)
    if art.meta["sensor"] != sensor:
        raise ModelError(_sensor_mismatch(art.meta["sensor"], sensor))
    trained_tc = art.meta.get("config", {}).get("terrain_correction")
    if terrain_correction is not None and trained_tc is not None and \
            trained_tc != terrain_correction:
        # the features are reflectances after the correction: another one shifts all of them
        raise ModelError(f"the model was trained with terrain_correction '{trained_tc}', the "
                         f"config uses '{terrain_correction}'; use the same or retrain")
    if want != have and dropped_bands:
        needed = _bands_of([f for f in want if f not in have]) & set(dropped_bands)
        if needed:
            band = min(needed)
            files = dropped_bands[band]
            who = f"{files[0]} lacks" if len(files) == 1 else \
                f"{files[0]} and {len(files) - 1} other image(s) lack"
            raise ModelError(f"{who} band '{band}', which the model uses on every date "
                             "(a band missing on one date is dropped from all); give images "
                             "with every band the model was trained on")
    if want != have and bands is not None:
        absent = sorted(_bands_of([f for f in want if f not in have]) & set(ALL_BANDS)
                        - set(bands), key=ALL_BANDS.index)
        if absent:
            s2 = {c: n for n, c in S2_BANDS.items()} if sensor == "sentinel2" else {}
            named = ", ".join(f"'{b}'" + (f" ({s2[b]})" if b in s2 else "") for b in absent)
            raise ModelError(f"no image has band {named}, which the model uses; give images "
                             "with every band the model was trained on")
    if want == have:
        return None
    if set(want) <= set(have):
        extra = [f for f in have if f not in set(want)]
        if extra:
            log.info("the inputs give %d feature(s) the model does not use (e.g. %s): left "
                     "out", len(extra), extra[:3])
        at = {f: i for i, f in enumerate(have)}
        return [at[f] for f in want]
    missing = [f for f in want if f not in have][:3]
    raise ModelError(f"the model's features do not fit the inputs (missing e.g. {missing},"
                     f" {len(want)} expected, {len(have)} computed); check bands and config")


def check_phases(art: Artifact, phase_dates: dict[str, list[str]], calendar: Calendar,
                 dates: Sequence[str], shifts: tuple[int, int] | None = None) -> None:
    """Refuse inputs without a date in a phase the model learnt from, unless the model holds
    a missing-phase model trained without exactly the absent phases (then a warning).
    ``shifts``: the calendar's shift over the scene (a calendar that moves with elevation),
    so that the refusal quotes the dates the phase takes there.

    Its features of that phase would be missing on every pixel, where the model only ever saw
    them missing under a cloud: on the independent simulator, a full-season model surveying
    scenes that end on 20 May flagged a quarter of the ground or found 15 % of the plots
    (docs/classifier.md, "A survey before the post phase")."""
    named = set().union(*map(feature_phases, art.feature_names))
    used = {p for scene in art.meta.get("phase_dates", []) for p, d in scene.items() if d}
    used &= named
    absent = tuple(p for p in PHASES if p in used and not phase_dates.get(p))
    if absent and "flowering" not in absent and any(set(r.missing) == set(absent)
                                                    for r in art.reduced):
        log.warning("no image in the %s phase: every pixel is scored by the model's "
                    "missing-phase model trained without it", " and ".join(absent))
        return
    for p in sorted(PHASES, key=lambda q: q != "flowering"):   # no bloom: say that first
        if p in used and not phase_dates.get(p):
            what = (f"the model uses the {p} phase ({phase_window(calendar, p, shifts)} in "
                    f"calendar {calendar.name}) but no image falls in it (dates: "
                    f"{', '.join(dates)})"
                    if p in calendar.phases else
                    f"the model uses the {p} phase but calendar {calendar.name} has none")
            if p == "flowering":
                raise ModelError(f"{what}; poppy is found in bloom: give images from that "
                                 "window, or a calendar whose flowering phase covers them")
            keep = [q for q in PHASES if q in used and q != p]
            raise ModelError(f"{what}; add an image from that window, or train a model "
                             f"without it (features.phases: [{', '.join(keep)}] in the "
                             "config)")


def _bands_of(feature_names: Sequence[str]) -> set[str]:
    """Bands the features are computed from (``<phase>.<stat>.<variable>``: a band, or an index
    of the catalogue, optionally ``@leaf`` or ``@rel``)."""
    cat = load_catalogue()
    out: set[str] = set()
    for name in feature_names:
        var, leaf = split_var(name.rsplit(".", 1)[-1])
        for v in (var, LEAF_INDEX) if leaf else (var,):
            out |= set(cat[v].bands) if v in cat else {v}
    return out


class BinnedHGB:
    """Exact poppy probabilities of a fitted HistGradientBoostingClassifier, 3-5x faster than
    its ``predict_proba`` on our feature matrices.

    scikit-learn predicts from raw float features, node by node; it also keeps each split's
    bin, and ``x <= threshold`` holds exactly when ``bin(x) <= bin_threshold`` (bins come from
    the same thresholds, NaN has its own bin and follows the same missing-value branch). So
    only the features the trees use are binned (``np.searchsorted`` on the thresholds of their
    splits) and the trees walk uint8 bins, summed in scikit-learn's order.
    Uses private scikit-learn attributes: :func:`scorer` checks the result against
    ``predict_proba`` once per process and falls back to it on any difference."""

    def __init__(self, est) -> None:
        bm = est._bin_mapper
        splits: dict[int, set[int]] = {}   # feature -> bin thresholds its splits use
        for (pred,) in est._predictors:
            nodes = pred.nodes
            inner = nodes["is_leaf"] == 0
            for f, b in zip(nodes["feature_idx"][inner], nodes["bin_threshold"][inner]):
                splits.setdefault(int(f), set()).add(int(b))
        self.used = sorted(splits)
        # Each feature is binned on the thresholds its splits use, not on all of its ~255
        # bins (a binary search of 3 levels instead of 8): with T the sorted split values of
        # a feature, c(x) = searchsorted(T, x) <= j exactly when x <= T[j], and x <= T[j] is
        # the split's own test bin(x) <= bin_threshold. The nodes get the index j instead.
        remap: dict[int, dict[int, int]] = {}
        self.thresholds = []
        for f in self.used:
            bins = sorted(splits[f])
            remap[f] = {b: j for j, b in enumerate(bins)}
            # a split on the last bin sends every value left (missing values aside): +inf
            edges = np.append(np.asarray(bm.bin_thresholds_[f], dtype="float64"), np.inf)
            self.thresholds.append(edges[np.minimum(bins, len(edges) - 1)])
        self.missing_bin = int(bm.missing_values_bin_idx_)
        self.n_features = int(est.n_features_in_)
        self.baseline = float(np.ravel(est._baseline_prediction)[0])
        self.predictors = []
        for (pred,) in est._predictors:
            new = copy.copy(pred)
            new.nodes = pred.nodes.copy()
            nodes = new.nodes
            for i in np.flatnonzero(nodes["is_leaf"] == 0):
                f, b = int(nodes["feature_idx"][i]), int(nodes["bin_threshold"][i])
                nodes["bin_threshold"][i] = remap[f][b]
            self.predictors.append(new)
        self.loss = est._loss

    def __call__(self, Xt: np.ndarray) -> np.ndarray:
        """``Xt``: (feature, pixel), feature-major as tiles hold them (rows bin contiguously)."""
        n = Xt.shape[1]
        Xb = np.zeros((self.n_features, n), dtype="uint8")
        for f, thr in zip(self.used, self.thresholds):
            row = Xt[f]
            b = np.searchsorted(thr, row, side="left")   # compared in float64, as sklearn
            b[np.isnan(row)] = self.missing_bin
            Xb[f] = b
        raw = np.full(n, self.baseline, dtype="float64")
        for pred in self.predictors:
            raw += pred.predict_binned(Xb.T, self.missing_bin, 1)
        return self.loss.predict_proba(raw)[:, 1]


#: the binned scorer per estimator object and process, or None where predict_proba is used
#: (values never refer back to the estimator, so an entry goes with its estimator)
_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scorer(estimator):
    """``Xt (feature, pixel) -> P(poppy)`` for ``estimator``: :class:`BinnedHGB` when it
    reproduces ``predict_proba`` exactly on a check sample (values on and next to the split
    thresholds, missing values), else ``predict_proba``."""
    def fn(Xt: np.ndarray) -> np.ndarray:
        return estimator.predict_proba(np.ascontiguousarray(Xt.T))[:, 1]

    if estimator not in _SCORERS:
        _SCORERS[estimator] = _binned_or_none(estimator, fn)
    return _SCORERS[estimator] or fn


def _binned_or_none(estimator, reference) -> BinnedHGB | None:
    if type(estimator).__name__ != "HistGradientBoostingClassifier" or \
            len(getattr(estimator, "classes_", ())) != 2:
        return None
    try:
        fast = BinnedHGB(estimator)
        rng = np.random.default_rng(0)
        thr = np.concatenate(fast.thresholds or [np.zeros(1)])
        X = rng.choice(thr, size=(fast.n_features, 512)) + \
            rng.choice([-1e-6, 0.0, 1e-6], size=(fast.n_features, 512))
        X[rng.random(X.shape) < 0.1] = np.nan
        X = X.astype("float32")
        if np.array_equal(fast(X), reference(X)):
            return fast
        log.info("binned prediction differs from predict_proba: using predict_proba")
    except Exception as exc:  # noqa: BLE001 - a private attribute changed: public path
        log.info("binned prediction unavailable (%s): using predict_proba", exc)
    return None


def predict_block(block: np.ndarray, estimator, calibration: dict,
                  missing: dict[str, np.ndarray] | None = None,
                  reduced: Sequence[ReducedModel] = ()) -> np.ndarray:
    """Calibrated P(poppy) of a feature block (feature, y, x). ``missing``: per phase, the
    pixels (y, x) without any clear image in it; a pixel missing exactly the phases of one of
    the ``reduced`` models is scored by that model, every other pixel by ``estimator``; a
    pixel missing every phase is not scored (NaN)."""
    nf, ny, nx = block.shape
    Xt = block.reshape(nf, -1)
    valid = ~np.all(np.isnan(Xt), axis=0)
    if missing:
        valid &= ~np.logical_and.reduce([m.reshape(-1) for m in missing.values()])
    out = np.full(ny * nx, np.nan, dtype="float32")
    if not valid.any():
        return out.reshape(ny, nx)
    which = np.zeros(ny * nx, dtype="int8")          # 0: the main model, k: reduced[k - 1]
    if reduced and missing:
        gone = {p: m.reshape(-1) for p, m in missing.items()}
        for k, r in enumerate(reduced, start=1):
            sel = valid.copy()
            for p, m in gone.items():
                sel &= m if p in r.missing else ~m
            which[sel] = k
    main = valid & (which == 0)
    if main.any():
        raw = scorer(estimator)(Xt if main.all() else Xt[:, main])
        out[main] = apply_platt(raw, calibration["a"], calibration["b"])
    for k, r in enumerate(reduced, start=1):
        sel = which == k
        if sel.any():
            raw = scorer(r.estimator)(Xt[np.ix_(r.columns, np.flatnonzero(sel))])
            out[sel] = apply_platt(raw, r.a, r.b)
    return out.reshape(ny, nx)


def pixel_threshold(model_threshold: float, cfg: SurveyConfig) -> float:
    """Two-level patch rule: pixels at or above this probability form patches, and a patch is
    kept when its peak reaches the model's threshold (and it passes the minimum mapping unit).
    Never above the model's threshold, so the rule only ever joins pixels to kept patches."""
    return float(min(cfg.patches.pixel_threshold, model_threshold))
