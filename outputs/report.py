"""Run manifests: file hashes, library versions, atomic JSON."""
from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from outputs.atomic import write_text_atomic

PACKAGES = ("numpy", "rasterio", "xarray", "dask", "rioxarray", "scikit-learn", "skops",
            "shapely", "pyogrio", "pyproj", "odc-geo", "sentinelhub")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def environment() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_json_atomic(path: Path, doc: dict) -> Path:
    return write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True, default=str))
