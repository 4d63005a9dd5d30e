"""The model artifact: ``model.skops`` (skops, loaded with an explicit list of trusted types,
never ``trusted=True``), ``model.json`` (sidecar) and ``train_report.json``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io as sio

from pipeline.errors import ModelError

#: Types beyond skops' defaults that a poppyscan model may contain. Anything else is refused.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.tree._tree.Tree",
)
MODEL_FILE, SIDECAR_FILE, REPORT_FILE = "model.skops", "model.json", "train_report.json"


@dataclass(frozen=True)
class Artifact:
    estimator: Any
    meta: dict

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["feature_names"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save(model_dir: Path, estimator: Any, meta: dict, report: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{MODEL_FILE}.tmp"
    sio.dump(estimator, tmp)
    os.replace(tmp, model_dir / MODEL_FILE)
    _atomic_write(model_dir / SIDECAR_FILE, json.dumps(meta, indent=2, sort_keys=True))
    _atomic_write(model_dir / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True))


def load(model_dir: Path) -> Artifact:
    model_dir = Path(model_dir)
    mfile, jfile = model_dir / MODEL_FILE, model_dir / SIDECAR_FILE
    if not mfile.is_file() or not jfile.is_file():
        raise ModelError(f"{model_dir}: not a poppyscan model (needs {MODEL_FILE} and "
                         f"{SIDECAR_FILE}); train one with `run.py train`")
    try:
        untrusted = sio.get_untrusted_types(file=mfile)
    except Exception as exc:
        raise ModelError(f"{mfile}: not a readable skops file ({exc})") from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ModelError(f"{mfile}: contains types poppyscan does not trust {refused}; "
                         "retrain the model with `run.py train`")
    try:
        estimator = sio.load(mfile, trusted=list(untrusted))
        meta = json.loads(jfile.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ModelError(f"{model_dir}: damaged model ({exc}); retrain it") from None
    for key in ("feature_names", "threshold", "sensor", "calendar"):
        if key not in meta:
            raise ModelError(f"{jfile}: missing '{key}'; retrain the model")
    return Artifact(estimator, meta)
