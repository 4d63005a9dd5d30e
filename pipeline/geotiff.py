"""Write one acquisition as a multi-band GeoTIFF in the poppyscan input contract.

The contract (read back by ``pipeline/readers/multiband.py``):

* one file per acquisition, tiled 256 x 256, deflate;
* band descriptions name the bands: Sentinel-2 names (``B01``..``B12``, ``B8A``, ``SCL``) or
  canonical names (``blue``, ``nir``, ...);
* per-band GDAL scale/offset: reflectance = DN * scale + offset, applied after masking nodata;
* ``nodata`` set (0 for uint16 DN, NaN for float32);
* tags: ``ACQUISITION_DATE`` (ISO date or date-time), optional ``SENSOR``, ``SUN_ZENITH`` and
  ``SUN_AZIMUTH`` (degrees), ``PROCESSING_BASELINE``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def write_multiband(
    path: Path,
    data: np.ndarray,
    band_names: Sequence[str],
    transform: Affine,
    crs: str,
    *,
    acquisition_date: str,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
    nodata: float | None = 0,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write ``data`` (band, y, x) to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    if data.ndim != 3 or data.shape[0] != len(band_names):
        raise ValueError(f"data shape {data.shape} does not match {len(band_names)} band names")
    count, height, width = data.shape
    profile = {
        "driver": "GTiff", "dtype": data.dtype.name, "count": count, "height": height,
        "width": width, "crs": crs, "transform": transform, "nodata": nodata,
        "compress": "deflate", "predictor": 2, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "interleave": "band",
    }
    if width < 256 or height < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize")
        profile.pop("blockysize")
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(band_names, start=1):
            dst.set_band_description(i, name)
        if scales is not None:
            dst.scales = tuple(float(s) for s in scales)
        if offsets is not None:
            dst.offsets = tuple(float(o) for o in offsets)
        dst.update_tags(ACQUISITION_DATE=acquisition_date, **dict(tags or {}))
    os.replace(tmp, path)
    return path
