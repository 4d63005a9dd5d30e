"""Masks: bad pixels -> NaN, and the SCL layer removed from the Scene.

SCL classes masked: 0 no data, 1 saturated/defective, 3 cloud shadow, 8/9 medium/high cloud,
10 cirrus, 11 snow.
"""
from __future__ import annotations

import xarray as xr

SCL_MASKED = (0, 1, 3, 8, 9, 10, 11)


def apply_masks(scene: xr.DataArray, *, rescue_flowers: bool = True) -> xr.DataArray:
    if "scl" not in scene["band"].values:
        return scene
    scl = scene.sel(band="scl")
    bad = scl.isin(SCL_MASKED) | scl.isnull()
    out = scene.drop_sel(band="scl").where(~bad)
    out.attrs = dict(scene.attrs)
    return out.astype("float32")
