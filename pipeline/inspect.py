"""``inspect``: what poppyscan reads from the given images, as one JSON-ready dict."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask
import numpy as np
from pyproj import CRS

from pipeline.bands import CANONICAL_BANDS
from pipeline.ingest import open_scene
from pipeline.masks import apply_masks
from pipeline.readers._raster import read_pixels


def _crs_string(crs) -> str:
    epsg = CRS.from_user_input(crs).to_epsg()
    return f"EPSG:{epsg}" if epsg else CRS.from_user_input(crs).to_wkt()


def inspect_images(images: Sequence[Path], *, sensor: str | None = None,
                   aoi: Path | None = None, chunks: int = 1024) -> dict:
    spec = None
    if sensor:
        from pipeline.sensors import load_sensor
        spec = load_sensor(sensor)
    scene = open_scene(images, spec, chunks=chunks)
    if aoi is not None:
        from pipeline.aoi import read_aoi
        scene = open_scene(images, spec, chunks=chunks, aoi=read_aoi(aoi, scene.rio.crs))
    masked = apply_masks(scene)
    refl = [b for b in masked["band"].values.tolist() if b in CANONICAL_BANDS]
    m = masked.sel(band=refl)
    clear = np.isfinite(m).all("band")
    # a pixel counts when it holds data on some date (outside the swath / AOI it never does)
    valid = np.isfinite(scene.sel(band=refl)).any("band").any("time")
    clear_frac = clear.sum(("y", "x")) / np.maximum(valid.sum(), 1)
    means = m.where(clear).mean(("y", "x"))
    sources = [s for v in scene["source"].values for s in str(v).split("; ")]
    clear_frac, means = read_pixels(lambda: dask.compute(clear_frac, means), sources)
    dates = [str(t)[:10] for t in scene["time"].values]
    return {
        "sensor": scene.attrs["sensor"],
        "crs": _crs_string(scene.rio.crs),
        "resolution": float(abs(scene.rio.transform().a)),
        "shape": [int(v) for v in scene.shape],
        "dates": dates,
        "bands": scene["band"].values.tolist(),
        "clear_fraction": [round(float(v), 4) for v in clear_frac.values],
        "mean_reflectance": [
            {b: (None if not np.isfinite(v) else round(float(v), 5))
             for b, v in zip(refl, means.values[i])}
            for i in range(means.sizes["time"])],
    }
