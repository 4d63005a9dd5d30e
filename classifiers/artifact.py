"""The model artifact: ``model.skops`` (skops, loaded with an explicit list of trusted types,
never ``trusted=True``), ``model.json`` (sidecar) and ``train_report.json``; with
missing-phase models also ``reduced.skops`` (their estimators, in ``model.json`` order)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io as sio

from outputs.atomic import temp_path_for, uninterrupted
from outputs.report import file_digest
from pipeline.errors import ModelError

#: Types beyond skops' defaults that a poppyscan model may contain. Anything else is refused.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.tree._tree.Tree",
)
MODEL_FILE, SIDECAR_FILE, REPORT_FILE = "model.skops", "model.json", "train_report.json"
REDUCED_FILE, TEXT_REPORT_FILE = "reduced.skops", "train_report.txt"
#: the estimator classes ``train`` writes (config ``model.kind``: hgb, rf)
ESTIMATOR_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._forest.RandomForestClassifier",
)
#: model.json's key holding the sha256 of each skops file written with it
SHA_KEY = "artifact_sha256"
_PHASES = {"pre", "flowering", "post"}


def feature_phases(name: str) -> set[str]:
    """The phases a feature is computed from (``pre.median.NDVI`` -> pre,
    ``flowering-pre.median.NDVI`` -> flowering and pre)."""
    return set(name.split(".", 1)[0].split("-"))


def columns_without(names: list[str], missing: tuple[str, ...] | list[str]) -> list[int]:
    """Indices of the features that use none of the ``missing`` phases."""
    return [i for i, n in enumerate(names) if not feature_phases(n) & set(missing)]


@dataclass(frozen=True)
class ReducedModel:
    """A model for pixels without any clear image in the ``missing`` phases (a cloud or the
    swath edge on their only dates, or a survey that ends before a phase): trained on the
    same pixels without those phases' features. Its probability is calibrated (``a``, ``b``:
    Platt) on its own out-of-fold scores; the main model's threshold applies to it."""
    missing: tuple[str, ...]
    columns: tuple[int, ...]
    estimator: Any
    a: float
    b: float


@dataclass(frozen=True)
class Artifact:
    estimator: Any
    meta: dict
    reduced: tuple[ReducedModel, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["feature_names"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def save(model_dir: Path, estimator: Any, meta: dict, report: dict,
         reduced: list[Any] | None = None, report_text: str | None = None) -> None:
    """``reduced``: the estimators of ``meta["missing_phase_models"]``, in that order;
    ``report_text``: train_report.txt."""
    model_dir.mkdir(parents=True, exist_ok=True)
    # every file under a temporary name first, then all swapped in at once: an interrupted
    # save never pairs a new model.skops with an old model.json (threshold, features)
    ready: dict[str, Path] = {}
    try:
        for obj, name in ((estimator, MODEL_FILE), (reduced, REDUCED_FILE)):
            if obj is not None:
                sio.dump(obj, ready.setdefault(name, temp_path_for(model_dir / name)))
        # model.json names the skops files it goes with: a model.skops copied in from another
        # model was used silently (48 drone features read as the first 48 of 326)
        meta = {**meta, SHA_KEY: {name: file_digest(tmp) for name, tmp in ready.items()}}
        for doc, name in ((meta, SIDECAR_FILE), (report, REPORT_FILE)):
            ready.setdefault(name, temp_path_for(model_dir / name)).write_text(
                json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")
        if report_text is not None:
            ready.setdefault(TEXT_REPORT_FILE, temp_path_for(
                model_dir / TEXT_REPORT_FILE)).write_text(report_text, encoding="utf-8")
        with uninterrupted():
            if reduced is None:
                (model_dir / REDUCED_FILE).unlink(missing_ok=True)
            for name, tmp in ready.items():
                os.replace(tmp, model_dir / name)
    finally:
        for tmp in ready.values():
            tmp.unlink(missing_ok=True)


def load(model_dir: Path) -> Artifact:
    model_dir = Path(model_dir)
    mfile, jfile = model_dir / MODEL_FILE, model_dir / SIDECAR_FILE
    if not mfile.is_file() or not jfile.is_file():
        raise ModelError(f"{model_dir}: not a poppyscan model (needs {MODEL_FILE} and "
                         f"{SIDECAR_FILE}); train one with `run.py train`")
    try:
        meta = json.loads(jfile.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ModelError(f"{model_dir}: damaged model ({exc}); retrain it") from None
    _check_meta(meta, jfile)
    _check_hash(meta, mfile, jfile)
    estimator = _load_trusted(mfile, model_dir)
    names = list(meta["feature_names"])
    _check_estimator(estimator, len(names), mfile)
    specs = meta["missing_phase_models"]
    if not specs:
        return Artifact(estimator, meta)
    rfile = model_dir / REDUCED_FILE
    if not rfile.is_file():
        raise ModelError(f"{model_dir}: model.json names missing-phase models but "
                         f"{REDUCED_FILE} is missing; copy the whole model folder or retrain")
    _check_hash(meta, rfile, jfile)
    ests = _load_trusted(rfile, model_dir)
    if not isinstance(ests, list) or len(ests) != len(specs):
        raise ModelError(f"{rfile}: does not hold the {len(specs)} models model.json names; "
                         "retrain the model")
    reduced = []
    for sp, est in zip(specs, ests):
        columns = tuple(columns_without(names, sp["missing"]))
        _check_estimator(est, len(columns), rfile)
        reduced.append(ReducedModel(tuple(sp["missing"]), columns, est,
                                    float(sp["calibration"]["a"]),
                                    float(sp["calibration"]["b"])))
    return Artifact(estimator, meta, tuple(reduced))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _platt(cal: Any) -> bool:
    return isinstance(cal, dict) and _finite(cal.get("a")) and _finite(cal.get("b"))


def _check_meta(meta: Any, jfile: Path) -> None:
    """model.json as ``train`` writes it: an edited or damaged value (a threshold of 1.5 gave
    a silent empty target list, -0.2 one target over the whole scene, "high" a traceback) is
    refused with one line."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{jfile}: {what}; retrain the model (or copy the whole model "
                          "folder again)")
    if not isinstance(meta, dict):
        raise bad("not a JSON object")
    for key in ("feature_names", "threshold", "sensor", "calendar", "calibration", "config",
                "missing_phase_models"):
        if key not in meta:
            raise bad(f"missing '{key}'")
    names = meta["feature_names"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise bad("'feature_names' is not a list of names")
    t = meta["threshold"]
    if not (_finite(t) and 0 < t < 1):
        raise bad(f"threshold {t!r} is not a probability between 0 and 1")
    if not _platt(meta["calibration"]):
        raise bad("'calibration' is not two numbers a and b")
    if not isinstance(meta["config"], dict):
        raise bad("'config' is not the settings the model was trained with")
    calendars = meta.get("calendars", {})
    if not isinstance(calendars, dict):
        raise bad("'calendars' is not the calendars the model was trained with")
    from pydantic import ValidationError

    from pipeline.config import Calendar
    for name, definition in calendars.items():
        try:
            Calendar.model_validate(definition)
        except ValidationError:
            raise bad(f"calendar '{name}' is not a calendar (phases with MM-DD dates)") \
                from None
    specs = meta["missing_phase_models"]
    if not isinstance(specs, list) or not all(
            isinstance(sp, dict) and isinstance(sp.get("missing"), list) and sp["missing"]
            and set(sp["missing"]) <= _PHASES and _platt(sp.get("calibration"))
            for sp in specs):
        raise bad("'missing_phase_models' is not a list of phases (pre, flowering, post) "
                  "with their calibration")


def _check_hash(meta: dict, path: Path, jfile: Path) -> None:
    want = (meta.get(SHA_KEY) or {}).get(path.name)
    if want is None:        # a model written before the hashes were recorded
        return
    if file_digest(path) != want:
        raise ModelError(f"{path}: not the file {jfile.name} was written with (copied from "
                         "another model, or damaged); copy the whole model folder or retrain")


def _check_estimator(est: Any, n_features: int, path: Path) -> None:
    """A fitted two-class estimator of a kind ``train`` writes, on ``n_features`` features:
    another scikit-learn object (a constant DummyClassifier, a regressor, an unfitted model,
    a dict) is refused, not run."""
    kind = f"{type(est).__module__}.{type(est).__qualname__}"
    if kind not in ESTIMATOR_TYPES:
        raise ModelError(f"{path}: holds a {type(est).__name__}, not a model poppyscan "
                         "trains; retrain the model with `run.py train`")
    classes = getattr(est, "classes_", None)
    if classes is None or len(classes) != 2:
        raise ModelError(f"{path}: not a fitted poppy-versus-rest model; retrain it")
    if getattr(est, "n_features_in_", n_features) != n_features:
        raise ModelError(f"{path}: a model of {est.n_features_in_} features, model.json "
                         f"lists {n_features}; copy the whole model folder or retrain")


def _load_trusted(path: Path, model_dir: Path) -> Any:
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable skops file ({exc})") from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ModelError(f"{path}: contains types poppyscan does not trust {refused}; "
                         "retrain the model with `run.py train`")
    try:
        return sio.load(path, trusted=list(untrusted))
    except Exception as exc:
        raise ModelError(f"{model_dir}: damaged model ({exc}); retrain it") from None
