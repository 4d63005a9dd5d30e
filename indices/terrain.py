"""Topographic illumination correction: slope/aspect from a DEM, cos(i), C and SCS+C.

On a hillside the sun strikes the ground at the local incidence angle ``i`` rather than at the
solar zenith ``sz``, so the same crop is brighter on slopes facing the sun and darker on slopes
facing away. The corrections here rescale each reflective band towards what flat ground would
show:

* ``"c"``: C-correction (Teillet, Guindon & Goodenough 1982, Can. J. Remote Sens. 8(2)),
  ``L_corr = L * (cos(sz) + c) / (cos(i) + c)``;
* ``"scs+c"``: Sun-Canopy-Sensor + C (Soenen, Peddle & Coburn 2005, IEEE TGRS 43(9)),
  ``L_corr = L * (cos(slope) * cos(sz) + c) / (cos(i) + c)``, which keeps the canopy's own
  geometry (trees and crops grow vertically, not normal to the slope);
* ``"none"``: the scene unchanged (the default for ESA L2A, see docs/terrain.md).

``c = a / b`` comes from the per-date, per-band linear regression ``L = a + b * cos(i)`` over
valid pixels (a regular subsample). ``cos(i)`` is clipped from below at :data:`COS_I_MIN` so
pixels in deep or self shadow get a bounded correction instead of a blow-up or a sign flip.
Everything except that small regression stays lazy.
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import date as date_type
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pyproj import CRS as ProjCRS

from pipeline.bands import CANONICAL_BANDS, SCENE_DIMS, check_scene
from pipeline.errors import ConfigError, CRSError, InputError

__all__ = [
    "COS_I_MIN",
    "METHODS",
    "correct_terrain",
    "cos_incidence",
    "estimate_c",
    "overpass_sun_position",
    "slope_aspect",
    "sun_position",
]

logger = logging.getLogger(__name__)

#: Lower clip of cos(i): incidence angles beyond ~84.3 deg (and self-shadow, cos(i) <= 0) are
#: corrected as if the incidence were 84.3 deg. Also the threshold for pixels in the regression.
COS_I_MIN: float = 0.1
#: Largest regular subsample (pixels per date) used to fit c.
MAX_SAMPLES: int = 250_000
#: On a chunked scene the sample is drawn from at most this many chunks per axis (evenly spread),
#: so the fit reads a fraction of the scene rather than all of it before the real computation.
MAX_SAMPLE_CHUNKS_PER_AXIS: int = 6
#: Fewest valid sunlit pixels needed to fit c for a date and band; fewer -> band left as is.
MIN_SAMPLES: int = 200
#: Local mean solar time assumed for the sun position when the scene carries no sun angles
#: (Sentinel-2 descending node crosses the equator at 10:30).
OVERPASS_SOLAR_HOUR: float = 10.5

METHODS: tuple[str, ...] = ("none", "c", "scs+c")


# --- slope and aspect ---------------------------------------------------------------------------

def _horn(z: np.ndarray, axis: int) -> np.ndarray:
    """Horn (1981) 3x3 finite difference of ``z`` per pixel step along ``axis`` (0 rows, 1 cols).

    Edges are padded by odd reflection (``2 z[0] - z[1]``), which gives one-sided differences
    at the border and keeps a plane's gradient exact; the result has the shape of ``z``.
    """
    p = np.pad(np.asarray(z, dtype=np.float64), 1, mode="reflect", reflect_type="odd")
    a, b, c = p[:-2, :-2], p[:-2, 1:-1], p[:-2, 2:]
    d, f = p[1:-1, :-2], p[1:-1, 2:]
    g, h, i = p[2:, :-2], p[2:, 1:-1], p[2:, 2:]
    if axis == 1:
        return ((c + 2 * f + i) - (a + 2 * d + g)) / 8.0
    return ((g + 2 * h + i) - (a + 2 * b + c)) / 8.0


def _grid_spacing(arr: xr.DataArray, what: str) -> tuple[float, float]:
    """Signed coordinate step along x and y (y is negative on a north-up grid)."""
    for dim in ("y", "x"):
        if dim not in arr.dims or arr.sizes[dim] < 2:
            raise InputError(f"{what} needs 'y' and 'x' dimensions with at least 2 pixels each")
    crs = arr.rio.crs if hasattr(arr, "rio") else None
    x, y = arr["x"].values.astype(float), arr["y"].values.astype(float)
    dx, dy = (x[-1] - x[0]) / (x.size - 1), (y[-1] - y[0]) / (y.size - 1)
    if dx == 0 or dy == 0 or not (np.isfinite(dx) and np.isfinite(dy)):
        raise InputError(f"{what} has degenerate x/y coordinates; give it a regular grid")
    if crs is not None and crs.is_geographic:
        # a grid in degrees (images in EPSG:4326): one step's ground length at the centre
        geod = ProjCRS.from_user_input(crs.to_wkt()).get_geod()
        lon, lat = float(np.mean(x)), float(np.mean(y))
        mx = geod.inv(lon, lat, lon + abs(dx), lat)[2]
        my = geod.inv(lon, lat, lon, lat + abs(dy))[2]
        dx, dy = float(np.copysign(mx, dx)), float(np.copysign(my, dy))
    return dx, dy


def _gradient(dem: xr.DataArray, axis: int) -> Any:
    # a partial, not a closure: the graph is pickled to worker processes (--scheduler processes)
    func: Callable[[np.ndarray], np.ndarray] = functools.partial(_horn, axis=axis)
    if isinstance(dem.data, da.Array):
        # 1-pixel halos between chunks; no halo at the outer border, where _horn pads each block
        # itself exactly as it pads a whole in-memory DEM: chunked and eager results agree.
        return da.map_overlap(func, dem.data, depth=1, boundary="none", dtype=np.float64)
    return func(dem.values)


def slope_aspect(dem: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Slope and aspect in degrees from a DEM (y, x) in metres on a projected grid.

    Horn's (1981) 3x3 gradient, one-sided at the edges. Slope is 0 (flat) to 90. Aspect is the
    direction the slope faces (downhill), clockwise from grid north: 0 N, 90 E, 180 S, 270 W;
    on flat ground it is meaningless (cos(i) ignores it there because sin(slope) = 0). NaN in
    the DEM gives NaN in its 3x3 neighbourhood. Lazy via ``dask.array.map_overlap`` when
    ``dem`` is chunked. Both outputs are float32 with the DEM's coordinates.
    """
    dem = _as_2d(dem)
    dx, dy = _grid_spacing(dem, "DEM")
    dzdx = _gradient(dem, axis=1) / dx  # rise per metre towards +x (east)
    dzdy = _gradient(dem, axis=0) / dy  # rise per metre towards +y (north)
    slope = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    aspect = np.mod(np.degrees(np.arctan2(-dzdx, -dzdy)), 360.0)
    coords = {k: v for k, v in dem.coords.items() if set(v.dims) <= {"y", "x"}}
    make = lambda data, name: xr.DataArray(
        data.astype(np.float32), dims=("y", "x"), coords=coords, name=name,
        attrs={"units": "degree"})
    return make(slope, "slope"), make(aspect, "aspect")


def _as_2d(dem: xr.DataArray) -> xr.DataArray:
    if "band" in dem.dims and dem.sizes["band"] == 1:
        dem = dem.isel(band=0, drop=True)
    if set(dem.dims) != {"y", "x"}:
        raise InputError(f"DEM dims are {tuple(dem.dims)}; expected (y, x)")
    return dem.transpose("y", "x")


# --- illumination -------------------------------------------------------------------------------

def cos_incidence(slope: Any, aspect: Any, sun_zenith_deg: Any, sun_azimuth_deg: Any) -> Any:
    """cos of the local solar incidence angle on a slope (all angles in degrees).

    ``cos(i) = cos(slope) cos(sz) + sin(slope) sin(sz) cos(saz - aspect)``. Works on numbers,
    numpy, dask and xarray (sun angles may be DataArrays along ``time``; xarray broadcasts).
    Returns float32 for array inputs; values below 0 mean the pixel is in self-shadow.
    """
    s, a = np.deg2rad(slope), np.deg2rad(aspect)
    z, az = np.deg2rad(sun_zenith_deg), np.deg2rad(sun_azimuth_deg)
    out = np.cos(s) * np.cos(z) + np.sin(s) * np.sin(z) * np.cos(az - a)
    return out.astype(np.float32) if hasattr(out, "astype") else out


def sun_position(date: datetime, lon: float, lat: float) -> tuple[float, float]:
    """Solar zenith and azimuth (degrees, azimuth clockwise from north) at a UTC instant.

    NOAA general solar position formulae with Spencer's (1971) Fourier series for the
    equation of time and declination; accurate to a few tenths of a degree, enough for a
    terrain correction when product metadata lacks the angles. Naive datetimes are UTC.
    """
    if isinstance(date, datetime):
        if date.tzinfo is not None:
            date = date.astimezone(UTC).replace(tzinfo=None)
    elif isinstance(date, date_type):
        date = datetime(date.year, date.month, date.day)
    hour = date.hour + date.minute / 60 + (date.second + date.microsecond / 1e6) / 3600
    doy = date.timetuple().tm_yday
    year_days = 366 if (date.year % 4 == 0 and (date.year % 100 != 0 or date.year % 400 == 0)) \
        else 365
    gamma = 2 * math.pi / year_days * (doy - 1 + (hour - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(gamma) - 0.032077 * math.sin(gamma)
                       - 0.014615 * math.cos(2 * gamma) - 0.040849 * math.sin(2 * gamma))
    decl = (0.006918 - 0.399912 * math.cos(gamma) + 0.070257 * math.sin(gamma)
            - 0.006758 * math.cos(2 * gamma) + 0.000907 * math.sin(2 * gamma)
            - 0.002697 * math.cos(3 * gamma) + 0.00148 * math.sin(3 * gamma))
    true_solar_minutes = hour * 60 + eqtime + 4 * lon
    ha = math.radians(true_solar_minutes / 4 - 180)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_zen))))
    azimuth = math.degrees(math.atan2(
        math.sin(ha), math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi))) + 180.0
    return zenith, azimuth % 360.0


def overpass_sun_position(day: date_type | datetime | np.datetime64, lon: float, lat: float,
                          solar_hour: float = OVERPASS_SOLAR_HOUR) -> tuple[float, float]:
    """Sun zenith/azimuth at ``day``'s time of day (UTC) when it has one (a drone flight at
    15:00 local was given the 10:30 sun: the correction then found no dependence on cos(i)
    and did nothing), else on ``day`` at ``solar_hour`` local mean solar time (default 10:30,
    Sentinel-2's descending node)."""
    ts = pd.Timestamp(day)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts != ts.normalize():
        return sun_position(ts.to_pydatetime(), lon, lat)
    midnight = datetime(ts.year, ts.month, ts.day)
    return sun_position(midnight + timedelta(hours=solar_hour - lon / 15.0), lon, lat)


def _scene_centre_lonlat(scene: xr.DataArray) -> tuple[float, float]:
    crs = scene.rio.crs
    if crs is None:
        raise CRSError("scene has no CRS and no sun angles; terrain correction needs one of "
                       "them: write the CRS (rio.write_crs) or the sun_zenith/sun_azimuth coords")
    from pyproj import Transformer

    x = float(scene["x"].values.mean())
    y = float(scene["y"].values.mean())
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    return float(lon), float(lat)


def _sun_angles(scene: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Per-time sun zenith/azimuth from the scene coords, NaN filled from the date and centre."""
    n = scene.sizes["time"]
    nan = np.full(n, np.nan)
    raw = [scene[k].data if k in scene.coords else nan for k in ("sun_zenith", "sun_azimuth")]
    sz, saz = (np.asarray(v, dtype=float).reshape(n).copy() for v in dask.compute(*raw))
    missing = ~(np.isfinite(sz) & np.isfinite(saz))
    if missing.any():
        lon, lat = _scene_centre_lonlat(scene)
        for t in np.flatnonzero(missing):
            sz[t], saz[t] = overpass_sun_position(scene["time"].values[t], lon, lat)
        logger.info("sun angles missing for %d date(s); using the sun position at the "
                    "acquisition time, or at %02d:%02d local solar time for a date without "
                    "one, at lon %.3f lat %.3f", int(missing.sum()),
                    int(OVERPASS_SOLAR_HOUR), int(OVERPASS_SOLAR_HOUR % 1 * 60), lon, lat)
    return sz, saz


# --- C estimation and correction ----------------------------------------------------------------

def estimate_c(reflectance: np.ndarray, cos_i: np.ndarray,
               valid: np.ndarray | None = None) -> float:
    """Fit ``L = a + b cos(i)`` and return ``c = a / b`` (Teillet et al. 1982), eagerly.

    Uses finite pixels with ``cos(i) >= COS_I_MIN`` (and ``valid`` if given). Returns NaN when
    the fit is meaningless (fewer than :data:`MIN_SAMPLES` pixels, no spread in cos(i), or
    ``b <= 0``: reflectance does not rise with illumination); ``c`` below 0 is raised to 0.
    """
    L = np.asarray(reflectance, dtype=np.float64).ravel()
    ci = np.asarray(cos_i, dtype=np.float64).ravel()
    ok = np.isfinite(L) & np.isfinite(ci) & (ci >= COS_I_MIN)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).ravel()
    if ok.sum() < MIN_SAMPLES:
        return float("nan")
    L, ci = L[ok], ci[ok]
    ci_mean = ci.mean()
    var = np.mean((ci - ci_mean) ** 2)
    if var < 1e-6:  # flat: no terrain signal to fit
        return float("nan")
    b = np.mean((ci - ci_mean) * (L - L.mean())) / var
    if not b > 0:
        return float("nan")
    a = L.mean() - b * ci_mean
    return max(float(a / b), 0.0)


def _sample_positions(size: int, chunks: tuple[int, ...] | None, target: int) -> np.ndarray:
    """Indices along one axis for the c fit: evenly spread chunks, then a regular stride.

    Without chunks (or with few) every position is a candidate, so an in-memory scene and a
    lightly chunked one draw the same sample.
    """
    if chunks is None or len(chunks) <= MAX_SAMPLE_CHUNKS_PER_AXIS:
        candidates = np.arange(size)
    else:
        starts = np.concatenate([[0], np.cumsum(chunks)[:-1]])
        keep = np.unique(np.linspace(0, len(chunks) - 1, MAX_SAMPLE_CHUNKS_PER_AXIS).round())
        candidates = np.concatenate([np.arange(starts[k], starts[k] + chunks[k])
                                     for k in keep.astype(int)])
    step = max(1, math.ceil(candidates.size / target))
    return candidates[::step]


def _check_grid(scene: xr.DataArray, dem: xr.DataArray) -> xr.DataArray:
    dem = _as_2d(dem)
    if dem.sizes["y"] != scene.sizes["y"] or dem.sizes["x"] != scene.sizes["x"]:
        raise InputError(
            f"DEM is {dem.sizes['y']}x{dem.sizes['x']} px but the scene is "
            f"{scene.sizes['y']}x{scene.sizes['x']}; resample the DEM onto the scene grid "
            "(dem.rio.reproject_match(scene)) first")
    dx, dy = _grid_spacing(scene, "scene")
    if not (np.allclose(dem["x"].values, scene["x"].values, atol=abs(dx) / 2)
            and np.allclose(dem["y"].values, scene["y"].values, atol=abs(dy) / 2)):
        raise InputError("DEM coordinates do not match the scene grid; resample the DEM onto the "
                         "scene grid (dem.rio.reproject_match(scene)) first")
    dem = dem.reset_coords(drop=True).assign_coords(y=scene["y"], x=scene["x"])
    dem = dem.astype(np.float32)
    if scene.chunks is not None:
        dem = dem.chunk({"y": scene.chunksizes["y"], "x": scene.chunksizes["x"]})
    return dem


@dataclass(frozen=True)
class TerrainFit:
    """The scene-wide parameters of a correction: ``c`` per (time, band) (NaN = leave the band
    uncorrected), sun angles per time, and the method. Fitted once per scene so that tiles
    corrected one by one agree with a correction of the whole scene."""
    method: str
    bands: tuple[str, ...]
    c: np.ndarray            # (time, band)
    sun_zenith: np.ndarray   # (time,)
    sun_azimuth: np.ndarray  # (time,)


def fit_terrain(scene: xr.DataArray, dem: xr.DataArray, method: str = "scs+c", *,
                valid_mask: xr.DataArray | None = None) -> TerrainFit | None:
    """Fit ``c`` per date and reflective band on a regular subsample (one small compute).

    Returns None when ``method`` is "none" or the scene has no reflective band.
    """
    if method not in METHODS:
        raise ConfigError(f"terrain correction method {method!r} is unknown; use one of {METHODS}")
    if method == "none":
        return None
    check_scene(scene, "terrain")
    dem = _check_grid(scene, dem)
    bands = scene["band"].values.tolist()
    reflective = [b for b in bands if b in CANONICAL_BANDS]
    if not reflective:
        logger.info("terrain correction: no reflective bands in the scene; nothing to correct")
        return None
    slope, aspect = slope_aspect(dem)
    sz, saz = _sun_angles(scene)
    cos_i = _cos_i(slope, aspect, sz, saz, scene["time"].values)

    per_axis = max(1, int(math.sqrt(MAX_SAMPLES)))
    chunks = scene.chunksizes if scene.chunks is not None else {}
    sub = {dim: _sample_positions(scene.sizes[dim], chunks.get(dim), per_axis)
           for dim in ("y", "x")}
    refl_s = scene.sel(band=reflective).isel(sub).transpose("time", "band", "y", "x")
    cos_s = cos_i.isel(sub)
    mask_s: Any = True
    if valid_mask is not None:
        vm = valid_mask.reset_coords(drop=True).assign_coords(y=scene["y"], x=scene["x"])
        mask_s = vm.isel(sub).broadcast_like(cos_s).transpose("time", "y", "x").data
    refl_np, cos_np, mask_np = dask.compute(refl_s.data, cos_s.data, mask_s)
    mask_np = np.broadcast_to(np.asarray(mask_np, dtype=bool), cos_np.shape)

    c = np.full((scene.sizes["time"], len(bands)), np.nan)
    for t in range(scene.sizes["time"]):
        for j, band in enumerate(reflective):
            c[t, bands.index(band)] = estimate_c(refl_np[t, j], cos_np[t], mask_np[t])
    fitted = np.isfinite(c)
    days = [str(d)[:10] for d in scene["time"].values]
    skipped = [f"{bands[j]} {days[t]}" for t, j in zip(*np.nonzero(~fitted), strict=True)
               if bands[j] in reflective]
    if skipped:
        logger.info("terrain correction: no usable c fit for %s (flat, too few pixels or no "
                    "illumination dependence); those bands are left uncorrected", skipped)
    logger.info("terrain correction %s: c per date and band %s", method,
                {bands[j]: np.round(c[:, j], 4).tolist() for j in range(len(bands))
                 if bands[j] in reflective})
    return TerrainFit(method, tuple(bands), c, np.asarray(sz, float), np.asarray(saz, float))


def _cos_i(slope, aspect, sz, saz, times) -> xr.DataArray:
    sz_da = xr.DataArray(np.asarray(sz, float), dims="time", coords={"time": times})
    saz_da = xr.DataArray(np.asarray(saz, float), dims="time", coords={"time": times})
    return cos_incidence(slope, aspect, sz_da, saz_da).transpose("time", "y", "x")


def apply_terrain(scene: xr.DataArray, slope: xr.DataArray, aspect: xr.DataArray,
                  fit: TerrainFit) -> xr.DataArray:
    """Apply a fitted C or SCS+C correction to ``scene`` (the whole scene or one tile of it,
    with ``slope``/``aspect`` of the same pixels); lazy if the inputs are."""
    bands = scene["band"].values.tolist()
    times = scene["time"].values
    c = np.full((len(times), len(bands)), np.nan)
    for j, b in enumerate(bands):
        if b in fit.bands:
            c[:, j] = fit.c[:, fit.bands.index(b)]
    fitted = np.isfinite(c)
    cos_i = _cos_i(slope, aspect, fit.sun_zenith, fit.sun_azimuth, times)
    c_da = xr.DataArray(np.where(fitted, c, 0.0), dims=("time", "band"),
                        coords={"time": times, "band": bands})
    cos_i_clipped = cos_i.clip(min=COS_I_MIN)
    cos_sz = np.cos(np.deg2rad(xr.DataArray(fit.sun_zenith, dims="time",
                                            coords={"time": times})))
    if fit.method == "c":
        numerator = cos_sz + c_da
    else:
        numerator = np.cos(np.deg2rad(slope)) * cos_sz + c_da
    factor = numerator / (cos_i_clipped + c_da)
    use = xr.DataArray(fitted, dims=("time", "band"), coords={"time": times, "band": bands})
    factor = xr.where(use & np.isfinite(factor), factor, 1.0).astype(np.float32)
    out = (scene * factor).transpose(*SCENE_DIMS).astype(np.float32)
    out = out.assign_coords({k: v for k, v in scene.coords.items()})
    out.attrs = {**scene.attrs, "terrain_correction": fit.method}
    out.name = scene.name
    return out


def correct_terrain(
    scene: xr.DataArray,
    dem: xr.DataArray,
    method: Literal["none", "c", "scs+c"] = "scs+c",
    *,
    valid_mask: xr.DataArray | None = None,
) -> xr.DataArray:
    """Topographic correction of the reflective bands of a Scene: :func:`fit_terrain` then
    :func:`apply_terrain`.

    ``scene`` (time, band, y, x) float32; ``dem`` (y, x) in metres on the same projected grid.
    Per date and reflective canonical band, ``c`` is fitted on a regular subsample (from at
    most :data:`MAX_SAMPLE_CHUNKS_PER_AXIS` chunks per axis when chunked) of valid sunlit
    pixels (``valid_mask`` (y, x) or (time, y, x), True = use; NaN pixels are never used), in
    one small ``dask.compute``; then C or SCS+C is applied lazily. Sun angles come from the
    ``sun_zenith``/``sun_azimuth`` coords, or where NaN from :func:`overpass_sun_position` at
    the scene centre. ``cos(i)`` is clipped below at :data:`COS_I_MIN`. Bands whose fit is
    meaningless (see :func:`estimate_c`), ``scl`` and index bands are returned unchanged, as are
    pixels where the DEM is NaN. NaN stays NaN; result float32, lazy if the scene is.
    """
    fit = fit_terrain(scene, dem, method, valid_mask=valid_mask)
    if fit is None:
        return scene
    slope, aspect = slope_aspect(_check_grid(scene, dem))
    return apply_terrain(scene, slope, aspect, fit)
