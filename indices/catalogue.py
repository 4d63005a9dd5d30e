"""TEMPORARY stub until the catalogue lands: NDVI-family indices computed directly."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import xarray as xr

log = logging.getLogger(__name__)

_F = {
    "NDVI": (("nir", "red"), lambda b: (b["nir"] - b["red"]) / (b["nir"] + b["red"])),
    "GNDVI": (("nir", "green"), lambda b: (b["nir"] - b["green"]) / (b["nir"] + b["green"])),
    "NDRE": (("nir", "rededge1"), lambda b: (b["nir"] - b["rededge1"]) / (b["nir"] + b["rededge1"])),
    "NDYI": (("green", "blue"), lambda b: (b["green"] - b["blue"]) / (b["green"] + b["blue"])),
    "NDWI": (("green", "nir"), lambda b: (b["green"] - b["nir"]) / (b["green"] + b["nir"])),
    "BSI": (("swir16", "red", "nir", "blue"), lambda b: ((b["swir16"] + b["red"]) - (b["nir"] + b["blue"])) / ((b["swir16"] + b["red"]) + (b["nir"] + b["blue"]))),
    "PSRI": (("red", "blue", "rededge2"), lambda b: (b["red"] - b["blue"]) / b["rededge2"]),
    "NBR": (("nir", "swir22"), lambda b: (b["nir"] - b["swir22"]) / (b["nir"] + b["swir22"])),
}


def compute_indices(scene: xr.DataArray, names: Sequence[str] | None = None) -> xr.DataArray:
    have = set(scene["band"].values.tolist())
    out = []
    for name in names or list(_F):
        need, f = _F[name]
        if not set(need) <= have:
            log.info("index %s skipped: missing bands %s", name, sorted(set(need) - have))
            continue
        b = {k: scene.sel(band=k, drop=True) for k in need}
        out.append(f(b).expand_dims(band=[name]))
    res = xr.concat(out, dim="band").transpose("time", "band", "y", "x")
    return res.where(abs(res) != float("inf")).astype("float32")
