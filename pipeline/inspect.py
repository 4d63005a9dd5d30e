"""``inspect``: what poppyscan reads from the given images, as one JSON-ready dict.

``resolution`` is the pixel width in metres; in a geographic CRS (degrees) it is measured at
the scene centre and ``resolution_note`` says so.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask
import numpy as np
from pyproj import CRS

from pipeline.bands import CANONICAL_BANDS
from pipeline.errors import InputError, SensorNeeded
from pipeline.ingest import clip_to_aoi, open_scene
from pipeline.masks import apply_masks
from pipeline.readers._raster import read_pixels, scene_sources


def _crs_string(crs) -> str:
    epsg = CRS.from_user_input(crs).to_epsg()
    return f"EPSG:{epsg}" if epsg else CRS.from_user_input(crs).to_wkt()


def _resolution_m(scene) -> tuple[float, str | None]:
    """Pixel width in metres, and a note when it is approximate: in a geographic CRS the
    degrees are measured on the CRS's ellipsoid at the scene centre (east-west width; the
    note gives the north-south height too, which differs away from the equator)."""
    crs = CRS.from_user_input(scene.rio.crs)
    tf = scene.rio.transform()
    if not crs.is_geographic:
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return float(abs(tf.a) * unit), None
    lon, lat = tf * (scene.sizes["x"] / 2, scene.sizes["y"] / 2)
    dx, dy = abs(tf.a), abs(tf.e)
    geod = crs.get_geod()
    width = geod.inv(lon - dx / 2, lat, lon + dx / 2, lat)[2]
    height = geod.inv(lon, lat - dy / 2, lon, lat + dy / 2)[2]
    return round(float(width), 3), (
        f"approximate: pixels of {dx:.6g} x {dy:.6g} degrees, {width:.3g} m east-west x "
        f"{height:.3g} m north-south at the scene centre (lat {lat:.4f}, lon {lon:.4f})")


def inspect_images(images: Sequence[Path], *, sensor: str | None = None,
                   aoi: Path | None = None, chunks: int = 1024) -> dict:
    spec = None
    if sensor:
        from pipeline.sensors import load_sensor
        spec = load_sensor(sensor)
    try:
        scene = open_scene(images, spec, chunks=chunks)
    except SensorNeeded as exc:  # inspect, unlike train and detect, has --sensor
        hint = ("the right --sensor" if spec is not None else
                f"--sensor ({' | '.join(exc.sensors)})" if exc.sensors else "--sensor")
        raise InputError(f"{exc}; or give {hint}") from None
    if aoi is not None:
        from pipeline.aoi import read_aoi
        scene = clip_to_aoi(scene, read_aoi(aoi, scene.rio.crs), chunks)
    masked = apply_masks(scene)
    refl = [b for b in masked["band"].values.tolist() if b in CANONICAL_BANDS]
    m = masked.sel(band=refl)
    clear = np.isfinite(m).all("band")
    # a pixel counts when it holds data on some date (outside the swath / AOI it never does)
    valid = np.isfinite(scene.sel(band=refl)).any("band").any("time")
    clear_frac = clear.sum(("y", "x")) / np.maximum(valid.sum(), 1)
    means = m.where(clear).mean(("y", "x"))
    clear_frac, means = read_pixels(lambda: dask.compute(clear_frac, means),
                                    scene_sources(scene))
    dates = [str(t)[:10] for t in scene["time"].values]
    resolution, note = _resolution_m(scene)
    return {
        "sensor": scene.attrs["sensor"],
        "crs": _crs_string(scene.rio.crs),
        "resolution": resolution,                    # metres
        **({"resolution_note": note} if note else {}),
        "shape": [int(v) for v in scene.shape],
        "dates": dates,
        "bands": scene["band"].values.tolist(),
        "clear_fraction": [round(float(v), 4) for v in clear_frac.values],
        "mean_reflectance": [
            {b: (None if not np.isfinite(v) else round(float(v), 5))
             for b, v in zip(refl, means.values[i])}
            for i in range(means.sizes["time"])],
    }
