"""Rasters assembled from the saved tile results, written tile by tile (tiled, deflate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window


def write_tiles_raster(path: Path, tdir: Path, tiles, key: str, height: int, width: int, crs,
                       transform, dtype: str, nodata, description: str) -> Path:
    """Write the ``key`` array of every saved tile into one GeoTIFF on the scene grid."""
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, compress="deflate",
                   predictor=3 if dtype.startswith("float") else 2, BIGTIFF="IF_SAFER")
    # tiled at any size (a grid under 256 px was written in strips): square blocks of 256 px
    # or the largest power of two under the width (readers such as rasterio take a block as
    # wide as the raster for a strip)
    block = next((b for b in (256, 128, 64, 32) if b < width), 16)
    profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as dst:
        dst.set_band_description(1, description)
        for name, ys, xs in tiles:
            with np.load(Path(tdir) / f"{name}.npz") as z:
                block = z[key]
            dst.write(block.astype(dtype), 1,
                      window=Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start))
    return path
