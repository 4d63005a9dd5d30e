"""The model artifact: ``model.skops`` (skops, loaded with an explicit list of trusted types,
never ``trusted=True``), ``model.json`` (sidecar) and ``train_report.json``; with
missing-phase models also ``reduced.skops`` (their estimators, in ``model.json`` order)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io as sio

from outputs.atomic import temp_path_for, uninterrupted
from pipeline.errors import ModelError

#: Types beyond skops' defaults that a poppyscan model may contain. Anything else is refused.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.tree._tree.Tree",
)
MODEL_FILE, SIDECAR_FILE, REPORT_FILE = "model.skops", "model.json", "train_report.json"
REDUCED_FILE = "reduced.skops"


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
         reduced: list[Any] | None = None) -> None:
    """``reduced``: the estimators of ``meta["missing_phase_models"]``, in that order."""
    model_dir.mkdir(parents=True, exist_ok=True)
    # every file under a temporary name first, then all swapped in at once: an interrupted
    # save never pairs a new model.skops with an old model.json (threshold, features)
    ready: dict[str, Path] = {}
    try:
        for obj, name in ((estimator, MODEL_FILE), (reduced, REDUCED_FILE)):
            if obj is not None:
                sio.dump(obj, ready.setdefault(name, temp_path_for(model_dir / name)))
        for doc, name in ((meta, SIDECAR_FILE), (report, REPORT_FILE)):
            ready.setdefault(name, temp_path_for(model_dir / name)).write_text(
                json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")
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
    estimator = _load_trusted(mfile, model_dir)
    try:
        meta = json.loads(jfile.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ModelError(f"{model_dir}: damaged model ({exc}); retrain it") from None
    for key in ("feature_names", "threshold", "sensor", "calendar"):
        if key not in meta:
            raise ModelError(f"{jfile}: missing '{key}'; retrain the model")
    specs = meta.get("missing_phase_models") or []
    if not specs:
        return Artifact(estimator, meta)
    rfile = model_dir / REDUCED_FILE
    if not rfile.is_file():
        raise ModelError(f"{model_dir}: model.json names missing-phase models but "
                         f"{REDUCED_FILE} is missing; copy the whole model folder or retrain")
    ests = _load_trusted(rfile, model_dir)
    if not isinstance(ests, list) or len(ests) != len(specs):
        raise ModelError(f"{rfile}: does not hold the {len(specs)} models model.json names; "
                         "retrain the model")
    names = list(meta["feature_names"])
    reduced = tuple(
        ReducedModel(tuple(sp["missing"]), tuple(columns_without(names, sp["missing"])), est,
                     float(sp["calibration"]["a"]), float(sp["calibration"]["b"]))
        for sp, est in zip(specs, ests))
    return Artifact(estimator, meta, reduced)


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
