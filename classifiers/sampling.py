"""Sample labelled polygons against the window features -> a training table.

Mixed edge pixels: each polygon is eroded by ``erode_m`` metres before it is rasterised
(pixel centres only), so a sample pixel is not half road, half field; a polygon that erosion
would empty (a sub-pixel garden plot) is kept unreduced with ``all_touched`` so small poppy
plots still contribute. Poppy polygons are burned last so they win where polygons overlap.
At most ``max_pixels`` pixels are kept per polygon (seeded), so big fields do not drown plots.
"""
from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np
from rasterio import features as rfeatures
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from classifiers.labels import Labels
from indices.window import Features
from pipeline.errors import InputError


@dataclass(frozen=True)
class Table:
    X: np.ndarray            # (n, n_features) float32
    y: np.ndarray            # (n,) int8: 1 poppy, 0 other
    polygon: np.ndarray      # (n,) int32 polygon index into Labels
    xy: np.ndarray           # (n, 2) float64 pixel centres in the scene CRS
    feature_names: list[str]
    pixel_m: float = 10.0    # pixel side in the scene CRS units (polygon sizes in pixels)


def _extract(fblock: np.ndarray, y0: int, x0: int, transform, shapes_small, shapes_big):
    _, ny, nx = fblock.shape
    tf = window_transform(Window(x0, y0, nx, ny), transform)
    ids = np.zeros((ny, nx), dtype="int32")
    for shapes, touched in ((shapes_big, False), (shapes_small, True)):
        if shapes:
            burned = rfeatures.rasterize(shapes, out_shape=(ny, nx), transform=tf,
                                         fill=0, all_touched=touched, dtype="int32")
            ids = np.where(burned > 0, burned, ids)
    rows, cols = np.nonzero(ids)
    X = fblock[:, rows, cols].T
    xs, ys = tf * (cols + 0.5, rows + 0.5)
    return X, ids[rows, cols] - 1, np.column_stack([xs, ys])


def check_classes(y: np.ndarray, source: str) -> None:
    if y.sum() == 0:
        raise InputError(f"{source}: no 'poppy' polygon overlaps clear pixels of the "
                         "images; check the labels' CRS and extent")
    if (y == 0).sum() == 0:
        raise InputError(f"{source}: no background polygon overlaps clear pixels")


def sample(features: Features, labels: Labels, *, erode_m: float, max_pixels: int,
           seed: int, require_both: bool = True) -> Table:
    fda = features.data
    transform = fda.rio.transform()
    res = abs(transform.a)
    order = np.argsort(labels.is_target, kind="stable")  # background first, poppy last
    small, big = [], []
    for i in order:
        g = labels.geometries[i]
        shrunk = g.buffer(-erode_m) if erode_m > 0 else g
        if shrunk.is_empty or shrunk.area < res * res:
            small.append((g, int(i) + 1))
        else:
            big.append((shrunk, int(i) + 1))
    # poppy last within each pass: sub-pixel plots rasterised all_touched after the fields
    blocks = fda.data.to_delayed()
    ychunks, xchunks = fda.data.chunks[1], fda.data.chunks[2]
    tasks = []
    y0 = 0
    for bi, ny in enumerate(ychunks):
        x0 = 0
        for bj, nx in enumerate(xchunks):
            tasks.append(dask.delayed(_extract)(blocks[0, bi, bj], y0, x0, transform,
                                                small, big))
            x0 += nx
        y0 += ny
    parts = dask.compute(*tasks)
    X = np.concatenate([p[0] for p in parts]).astype("float32")
    poly = np.concatenate([p[1] for p in parts]).astype("int32")
    xy = np.concatenate([p[2] for p in parts])
    valid = ~np.all(np.isnan(X), axis=1)
    X, poly, xy = X[valid], poly[valid], xy[valid]
    rng = np.random.default_rng(seed)
    keep = []
    for pid in np.unique(poly):
        idx = np.flatnonzero(poly == pid)
        if idx.size > max_pixels:
            idx = np.sort(rng.choice(idx, max_pixels, replace=False))
        keep.append(idx)
    sel = np.concatenate(keep) if keep else np.array([], dtype=int)
    y = labels.is_target[poly[sel]].astype("int8")
    if require_both:
        check_classes(y, labels.source)
    return Table(X[sel], y, poly[sel], xy[sel], features.names, float(res))
