"""Masks: bad pixels -> NaN (never zero), and the SCL layer removed from the Scene.

With a Sentinel-2 scene classification (SCL, Sen2Cor) per pixel:

* always masked: 0 no data, 1 saturated/defective, 3 cloud shadow, 10 cirrus;
* 8/9 medium/high cloud and 11 snow are masked unless the *flower rescue* keeps them.

Flower rescue (``rescue_flowers=True``): Sen2Cor marks some bright white flowering fields as
cloud or snow, and masking them deletes exactly the flowering signal. On each date the 8/9/11
pixels are grouped into connected components (8-connectivity); a component is kept as land when
all of these hold:

* its area is below ``max_flower_px`` pixels (default 50 px = 0.5 ha at 10 m; clouds are large);
* its mean ``swir16`` is at most ``flower_swir16_max`` (default 0.30, the SWIR bound of the
  spectral cloud test below: what that test would not call cloud can be a flowering field;
  green or flowering canopies 0.15-0.30, petals over soil at the top of that range);
* its mean ``coastal`` (B01, the cirrus/haze-sensitive band in L2A) is below
  ``flower_coastal_max`` (default 0.30), when the band is present;
* its NDSI ``(green - swir16) / (green + swir16)`` from the component means is below
  ``snow_ndsi_min`` (default 0.4), when green is present: small snow patches are bright in the
  visible and dark in the SWIR like flowers, but their NDSI is high (snow ~0.9, canopy ~0).

Without ``swir16`` nothing can be rescued and 8/9/11 are masked (a warning says so).

Laziness: the masks are computed chunk by chunk with ``dask.array.map_overlap``; the overlap
depth equals ``max_flower_px``, so every component smaller than the area limit is seen whole
and judged exactly, and a larger one cut by a chunk border is still seen as at least
``max_flower_px`` pixels, i.e. as large. (Component means of large clouds are not needed.)

Pixels without an SCL value (no SCL band, or NaN in it) get a spectral test instead:

* Sentinel-2-like scenes (``blue`` and ``swir16`` present): cloud where ``blue > 0.25`` and
  ``swir16 > 0.30`` (bright in the visible *and* the SWIR, unlike flowers and snow); shadow where
  ``nir < 0.05`` and ``swir16 < 0.05`` (deep shadow; also open water, where poppy cannot grow).
  This is deliberately crude: thin cloud and soft shadow pass.
* drone scenes (no SWIR): no cloud test (flights are under the clouds); saturated or implausible
  pixels (any band > 1.5 reflectance) are masked.

Everywhere: a pixel NaN in any reflective band is NaN in all of them, so every band of a date
has the same valid pixels.
"""
from __future__ import annotations

import logging

import dask.array as darr
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from scipy import ndimage

log = logging.getLogger(__name__)

#: SCL classes always masked: no data, saturated/defective, cloud shadow, cirrus.
SCL_ALWAYS: tuple[int, ...] = (0, 1, 3, 10)
#: SCL classes masked unless rescued as small, SWIR-dark flowering fields: cloud med/high, snow.
SCL_BRIGHT: tuple[int, ...] = (8, 9, 11)

CLOUD_BLUE_MIN = 0.25
CLOUD_SWIR16_MIN = 0.30
SHADOW_NIR_MAX = 0.05
SHADOW_SWIR16_MAX = 0.05
SATURATION_MAX = 1.5

_EIGHT = np.ones((3, 3), dtype=bool)


def apply_masks(scene: xr.DataArray, *, rescue_flowers: bool = True, max_flower_px: int = 50,
                flower_swir16_max: float = CLOUD_SWIR16_MIN, flower_coastal_max: float = 0.30,
                snow_ndsi_min: float = 0.4,
                window: tuple[slice, slice] | None = None) -> xr.DataArray:
    """The Scene without the ``scl`` band, masked pixels NaN; lazy (nothing is computed).

    ``window`` (y, x slices): only that part of the result; the rest of ``scene`` is the
    context the white-flower rescue judges SCL patches in (a tile reads a halo for it), and
    no masked copy of it is made."""
    bands = scene["band"].values.tolist()
    if "scl" not in bands:
        refl = scene
    elif bands[-1] == "scl":  # the canonical order puts it last: a view, not a copy
        refl = scene.isel(band=slice(0, len(bands) - 1))
    else:
        refl = scene.drop_sel(band="scl")
    names = refl["band"].values.tolist()
    if not names:
        raise ValueError("scene has no reflective band")

    def layer(name: str) -> darr.Array | None:
        if name not in bands:
            return None
        return darr.asarray(scene.sel(band=name).data).astype("float32")

    template = layer(names[0])
    assert template is not None
    scl = layer("scl")
    if scl is None:
        scl = darr.full_like(template, np.nan)
    swir, coastal, green = layer("swir16"), layer("coastal"), layer("green")
    blue, nir = layer("blue"), layer("nir")
    if "scl" in bands and rescue_flowers and swir is None:
        log.warning("no swir16 band: SCL cloud/snow (8, 9, 11) cannot be checked for "
                    "flowering fields and is masked as it is")
    satellite = blue is not None and swir is not None
    missing = darr.full_like(template, np.nan)
    inputs = [a if a is not None else missing for a in (scl, swir, coastal, green, blue, nir)]
    depth: dict[int, int] = {0: 0}
    for axis in (1, 2):
        d = max(1, int(max_flower_px))
        if template.shape[axis] <= d or len(template.chunks[axis]) == 1:
            # the whole axis fits in one block: no overlap needed
            inputs = [a.rechunk({axis: -1}) for a in inputs]
            d = 0
        depth[axis] = d
    bad = darr.map_overlap(
        _bad_block, *inputs, depth=depth, boundary="none", dtype=bool, trim=True,
        rescue=bool(rescue_flowers) and swir is not None, satellite=satellite,
        max_px=int(max_flower_px), swir_max=float(flower_swir16_max),
        coastal_max=float(flower_coastal_max), ndsi_min=float(snow_ndsi_min))
    bad_da = xr.DataArray(bad, dims=("time", "y", "x"),
                          coords={"time": scene["time"], "y": scene["y"], "x": scene["x"]})
    if window is not None:
        bad_da = bad_da.isel(y=window[0], x=window[1])
        refl = refl.isel(y=window[0], x=window[1])
    invalid = refl.isnull().any("band") | bad_da
    if not satellite:
        invalid = invalid | (refl > SATURATION_MAX).any("band")
    out = refl.where(~invalid).astype("float32")
    out.attrs = dict(scene.attrs)
    if scene.rio.crs is not None:
        out = out.rio.write_crs(scene.rio.crs).rio.write_transform(refl.rio.transform(recalc=True))
    return out


def _component_mean(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    idx = labels.ravel()
    v = values.ravel()
    ok = np.isfinite(v) & (idx > 0)
    total = np.bincount(idx[ok], weights=v[ok], minlength=n + 1)
    count = np.bincount(idx[ok], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _bad_block(scl: np.ndarray, swir: np.ndarray, coastal: np.ndarray, green: np.ndarray,
               blue: np.ndarray, nir: np.ndarray, *, rescue: bool, satellite: bool,
               max_px: int, swir_max: float, coastal_max: float,
               ndsi_min: float) -> np.ndarray:
    """Boolean 'masked' for one (time, y, x) block (with overlap)."""
    has_scl = np.isfinite(scl)
    bad = has_scl & np.isin(scl, SCL_ALWAYS)
    bright = has_scl & np.isin(scl, SCL_BRIGHT)
    if rescue:
        for t in range(scl.shape[0]):
            labels, n = ndimage.label(bright[t], structure=_EIGHT)
            if n == 0:
                continue
            area = np.bincount(labels.ravel(), minlength=n + 1)
            mswir = _component_mean(labels, swir[t], n)
            keep = (area < max_px) & (mswir <= swir_max)
            mcoastal = _component_mean(labels, coastal[t], n)
            keep &= ~(mcoastal >= coastal_max)          # NaN (no coastal band) does not veto
            mgreen = _component_mean(labels, green[t], n)
            with np.errstate(invalid="ignore", divide="ignore"):
                ndsi = (mgreen - mswir) / (mgreen + mswir)
            keep &= ~(ndsi >= ndsi_min)
            keep[0] = False
            bright[t] &= ~keep[labels]
    bad |= bright
    if satellite:
        with np.errstate(invalid="ignore"):
            cloud = (blue > CLOUD_BLUE_MIN) & (swir > CLOUD_SWIR16_MIN)
            shadow = (nir < SHADOW_NIR_MAX) & (swir < SHADOW_SWIR16_MAX)
        bad |= ~has_scl & (cloud | shadow)
    return bad
