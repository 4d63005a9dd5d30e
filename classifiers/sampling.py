"""Sample labelled polygons against the window features -> a training table.

Mixed edge pixels: each polygon is eroded by ``erode_m`` metres before it is rasterised
(pixel centres only), so a sample pixel is not half road, half field; a polygon that erosion
would empty (a sub-pixel garden plot) is kept unreduced with ``all_touched`` so small poppy
plots still contribute, and a poppy polygon that erosion leaves between two rows of pixel
centres (a strip) is sampled by its own centres, so no labelled plot goes unused. Poppy polygons
are burned last so they win where polygons overlap. At most ``max_pixels`` pixels are kept
per polygon (seeded), so big fields do not drown plots. Distances in metres are metres on a
grid in degrees too (``Grid.metres_per_unit``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import dask
import numpy as np
import shapely
from rasterio import features as rfeatures
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely import affinity
from shapely.geometry import box

from classifiers.labels import Labels
from indices.window import Features
from pipeline.errors import InputError
from pipeline.grid import Grid


@dataclass(frozen=True)
class Table:
    X: np.ndarray            # (n, n_features) float32
    y: np.ndarray            # (n,) int8: 1 poppy, 0 other
    polygon: np.ndarray      # (n,) int32 polygon index into Labels
    xy: np.ndarray           # (n, 2) float64 pixel centres in the scene CRS
    feature_names: list[str]
    pixel_m: float = 10.0    # side of a square of one pixel's area, in CRS units (polygon sizes
    #                          in pixels; degree pixels are not square)


def _extract(fblock: np.ndarray, y0: int, x0: int, transform, passes):
    """Pixels of the polygons, burned in the order of ``passes`` ((shapes, all_touched), the
    later winning where they overlap)."""
    _, ny, nx = fblock.shape
    tf = window_transform(Window(x0, y0, nx, ny), transform)
    ids = np.zeros((ny, nx), dtype="int32")
    for shapes, touched in passes:
        if shapes:
            burned = rfeatures.rasterize(shapes, out_shape=(ny, nx), transform=tf,
                                         fill=0, all_touched=touched, dtype="int32")
            ids = np.where(burned > 0, burned, ids)
    rows, cols = np.nonzero(ids)
    X = fblock[:, rows, cols].T
    xs, ys = tf * (cols + 0.5, rows + 0.5)
    return X, ids[rows, cols] - 1, np.column_stack([xs, ys])


def buffer_metres(geom, metres: float, scale: tuple[float, float]):
    """``geom`` grown by ``metres`` (shrunk where negative) on a grid of ``scale`` metres
    per CRS unit along x and y (``Grid.metres_per_unit``): the buffer is drawn in local
    metres, so it is as wide east-west as north-south on a grid in degrees too."""
    sx, sy = scale
    if sx == sy:
        return geom.buffer(metres / sx)
    local = affinity.scale(geom, sx, sy, origin=(0, 0))
    return affinity.scale(local.buffer(metres), 1 / sx, 1 / sy, origin=(0, 0))


def holds_pixel_centre(geom, transform, max_centres: int = 1_000_000) -> bool:
    """Whether ``geom`` holds the centre of a pixel of the grid (what rasterising it without
    ``all_touched`` burns); a shape whose box spans more than ``max_centres`` is taken to."""
    minx, miny, maxx, maxy = geom.bounds
    cols, rows = ~transform * (np.array([minx, maxx, minx, maxx]),
                               np.array([miny, miny, maxy, maxy]))
    c0, c1 = math.floor(cols.min() - 0.5), math.ceil(cols.max() - 0.5)
    r0, r1 = math.floor(rows.min() - 0.5), math.ceil(rows.max() - 0.5)
    if (c1 - c0 + 1) * (r1 - r0 + 1) > max_centres:
        return True
    cc, rr = np.meshgrid(np.arange(c0, c1 + 1) + 0.5, np.arange(r0, r1 + 1) + 0.5)
    xs, ys = transform * (cc.ravel(), rr.ravel())
    return bool(shapely.contains_xy(geom, xs, ys).any())


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
    res = math.sqrt(abs(transform.a * transform.e))  # square side of a pixel's area
    scale = Grid.of(fda).metres_per_unit()
    # (target, small) -> shapes; small: erosion would leave less than a pixel, so every
    # touched pixel is kept (sub-pixel garden plots)
    shapes: dict[tuple[bool, bool], list] = {(t, sm): [] for t in (False, True)
                                            for sm in (False, True)}
    for i, g in enumerate(labels.geometries):
        shrunk = buffer_metres(g, -erode_m, scale) if erode_m > 0 else g
        small = shrunk.is_empty or shrunk.area < abs(transform.a * transform.e)
        shape = g if small else shrunk
        if not small and labels.is_target[i] and not holds_pixel_centre(shrunk, transform):
            # a plot that erosion leaves between two rows of pixel centres: its own centres,
            # else every touched pixel (it gave no sample at all)
            shape, small = g, not holds_pixel_centre(g, transform)
        shapes[(bool(labels.is_target[i]), small)].append((shape, i + 1))
    # poppy wins where polygons overlap: the background first (fields, then small ones with
    # every touched pixel), then poppy the same way
    passes = [(shapes[(t, sm)], sm) for t in (False, True) for sm in (False, True)]
    blocks = fda.data.to_delayed()
    ychunks, xchunks = fda.data.chunks[1], fda.data.chunks[2]
    tasks = []
    y0 = 0
    for bi, ny in enumerate(ychunks):
        x0 = 0
        for bj, nx in enumerate(xchunks):
            tasks.append(dask.delayed(_extract)(blocks[0, bi, bj], y0, x0, transform,
                                                passes))
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


#: class name of the pseudo-polygons that hold the unlabelled background sample
UNLABELLED = "unlabelled"


def _uniform(row: np.ndarray, col: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per scene pixel from a hash of (row, col, seed) (splitmix64):
    the draw does not depend on how the scene is cut into chunks."""
    with np.errstate(over="ignore"):
        z = (row.astype("uint64") << np.uint64(32)) ^ col.astype("uint64")
        z = z + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype("float64") / float(1 << 53)


def _extract_background(fblock: np.ndarray, y0: int, x0: int, transform, exclude, rate: float,
                        seed: int, cell_px: int):
    _, ny, nx = fblock.shape
    tf = window_transform(Window(x0, y0, nx, ny), transform)
    pick = _uniform(np.arange(y0, y0 + ny)[:, None], np.arange(x0, x0 + nx)[None, :],
                    seed) < rate
    if exclude:
        pick &= rfeatures.rasterize(exclude, out_shape=(ny, nx), transform=tf, fill=0,
                                    all_touched=True, dtype="uint8") == 0
    rows, cols = np.nonzero(pick)
    X = fblock[:, rows, cols].T
    ok = ~np.all(np.isnan(X), axis=1)
    rows, cols, X = rows[ok], cols[ok], X[ok]
    cell = np.column_stack([(rows + y0) // cell_px, (cols + x0) // cell_px])
    xs, ys = tf * (cols + 0.5, rows + 0.5)
    return X, cell, np.column_stack([xs, ys])


def sample_background(features: Features, labels: Labels, *, n_pixels: int, buffer_m: float,
                      seed: int, cell_px: int = 16) -> tuple[Table, Labels]:
    """About ``n_pixels`` pixels drawn at random from the scene's unlabelled area, as background.

    Analysts label fields, villages and known plots; the pixels between them (field edges,
    roads, hamlets, mixed pixels) are most of a survey scene and were the source of most false
    targets on held-out scenes (docs/classifier.md). Poppy being rare, a random unlabelled
    pixel is background with high probability; pixels within ``buffer_m`` of a labelled poppy
    polygon are left out (a plot is often bigger than its label). The pixels are grouped into
    square pseudo-polygons of ``cell_px`` pixels (class ``unlabelled``) so that grouped
    cross-validation and the per-class report treat them like labelled polygons."""
    fda = features.data
    transform = fda.rio.transform()
    res = math.sqrt(abs(transform.a * transform.e))  # square side of a pixel's area
    H, W = fda.shape[1:]
    rate = min(1.0, n_pixels / float(H * W))
    scale = Grid.of(fda).metres_per_unit()
    exclude = [(buffer_metres(g, buffer_m, scale) if t else g, 1)
               for g, t in zip(labels.geometries, labels.is_target)]
    blocks = fda.data.to_delayed()
    tasks, y0 = [], 0
    for bi, ny in enumerate(fda.data.chunks[1]):
        x0 = 0
        for bj, nx in enumerate(fda.data.chunks[2]):
            tasks.append(dask.delayed(_extract_background)(blocks[0, bi, bj], y0, x0, transform,
                                                           exclude, rate, seed, cell_px))
            x0 += nx
        y0 += ny
    parts = dask.compute(*tasks)
    X = np.concatenate([p[0] for p in parts]).astype("float32")
    cell = np.concatenate([p[1] for p in parts])
    xy = np.concatenate([p[2] for p in parts])
    cells, poly = np.unique(cell, axis=0, return_inverse=True)
    geoms = tuple(box(*(transform * (c * cell_px, (r + 1) * cell_px)),
                      *(transform * ((c + 1) * cell_px, r * cell_px))) for r, c in cells)
    bg = Labels(geoms, (UNLABELLED,) * len(geoms), f"{labels.source} (unlabelled sample)")
    table = Table(X, np.zeros(len(X), "int8"), poly.ravel().astype("int32"), xy,
                  features.names, float(res))
    return table, bg


def join(a: tuple[Table, Labels], b: tuple[Table, Labels]) -> tuple[Table, Labels]:
    """One table of two from the same scene; ``b``'s polygon ids follow ``a``'s."""
    (ta, la), (tb, lb) = a, b
    table = Table(np.concatenate([ta.X, tb.X]), np.concatenate([ta.y, tb.y]),
                  np.concatenate([ta.polygon, tb.polygon + len(la.geometries)]),
                  np.concatenate([ta.xy, tb.xy]), ta.feature_names, ta.pixel_m)
    return table, Labels(la.geometries + lb.geometries, la.classes + lb.classes, la.source)
