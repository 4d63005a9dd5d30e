"""Opening one raster file lazily, with one error rule for every reader."""
from __future__ import annotations

import warnings
from pathlib import Path

import rioxarray
import xarray as xr
from rasterio.errors import RasterioIOError

from pipeline.errors import InputError


def open_lazy(path: Path | str, chunks: int, what: str = "raster") -> xr.DataArray:
    """``rioxarray.open_rasterio`` chunked one band at a time, raw DN (no mask or scale);
    an unreadable file or one with subdatasets is an InputError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. offsets that differ per band
            da = rioxarray.open_rasterio(path, chunks={"band": 1, "y": chunks, "x": chunks},
                                         mask_and_scale=False, lock=False)
    except (RasterioIOError, OSError) as exc:
        raise InputError(f"{path}: not a readable raster ({exc})") from None
    if not isinstance(da, xr.DataArray):
        raise InputError(f"{path}: has subdatasets; expected one {what}")
    return da
