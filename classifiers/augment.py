"""Augmented copies of a training scene: the radiometric and optical variation between flights.

A drone model learns one flight: its gains, its sharpness, its band-to-band registration. Other
flights differ in all three (the irradiance sensor's and the camera's gains, focus and motion
blur, the residual misregistration of a multi-camera rig), and a model trained on one flight
found 0.60-0.93 of another flight's plots depending on which flight it learnt from
(docs/drone.md, "Augmented training flights"). ``train`` can add copies of each training
scene with such variation drawn at random, sampled like the original, so the model cannot lean
on one flight's levels and sharpness. Per copy, drawn once (seeded):

- a gain: x exp(N(0, 0.1)) for the whole image, x exp(N(0, 0.05)) per band;
- a sub-pixel shift per band, uniform in +-0.4 px on each axis;
- a Gaussian blur of sigma uniform in 0-0.7 px.

A class layer (Sentinel-2's SCL) is copied unchanged, so the copy is masked as the original.

Lazy: the copy is a dask graph over the scene's chunks with a halo of ``HALO_PX`` pixels, so
training memory stays bounded as with the original scene.
"""
from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from pipeline.bands import CATEGORICAL_BANDS

GAIN_SD, BAND_GAIN_SD, MAX_SHIFT_PX, MAX_BLUR_PX = 0.1, 0.05, 0.4, 0.7
#: halo read around each chunk: the shift (< 1 px) plus the blur's kernel (4 sigma)
HALO_PX = 4


def _planes(block: np.ndarray, gains: np.ndarray, shifts: np.ndarray,
            sigma: float) -> np.ndarray:
    out = np.empty_like(block)
    for t in range(block.shape[0]):
        for b in range(block.shape[1]):
            x = block[t, b]
            ok = np.isfinite(x)
            # normalised filtering: masked pixels carry no weight, so they neither bleed into
            # their neighbours nor make the result depend on the chunk
            num, den = np.where(ok, x * gains[b], 0.0), ok.astype(x.dtype)
            num = ndimage.shift(num, shifts[b], order=1, mode="nearest")
            den = ndimage.shift(den, shifts[b], order=1, mode="nearest")
            if sigma > 0.05:
                num = ndimage.gaussian_filter(num, sigma, mode="nearest")
                den = ndimage.gaussian_filter(den, sigma, mode="nearest")
            with np.errstate(invalid="ignore", divide="ignore"):
                out[t, b] = np.where(ok & (den > 1e-3), num / den, np.nan)
    return out


def augmented(scene: xr.DataArray, seed: int) -> xr.DataArray:
    """One augmented copy of a Scene (time, band, y, x), lazy; same coordinates and attrs."""
    rng = np.random.default_rng(seed)
    nb = scene.sizes["band"]
    gains = (np.exp(rng.normal(0, GAIN_SD)) *
             np.exp(rng.normal(0, BAND_GAIN_SD, nb))).astype("float32")
    shifts = rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX, (nb, 2))
    sigma = float(rng.uniform(0, MAX_BLUR_PX))
    data = da.asarray(scene.data).rechunk({0: -1, 1: -1})   # a Scene is dask already
    out = data.map_overlap(_planes, depth={0: 0, 1: 0, 2: HALO_PX, 3: HALO_PX},
                           boundary="none", dtype=data.dtype, gains=gains, shifts=shifts,
                           sigma=sigma)
    if "band" in scene.coords:
        # a class layer (SCL) is copied as it is: scaled or blurred, its codes mask nothing
        cat = np.isin(scene["band"].values, CATEGORICAL_BANDS)
        if cat.any():
            out = da.where(cat[None, :, None, None], data, out)
    return scene.copy(data=out)
