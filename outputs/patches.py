"""Probability raster -> candidate patches, chunk by chunk, stitched across chunk borders.

Each chunk vectorises its pixels at or above the threshold (4-connected, exact pixel-edge
polygons) and sums the statistics of each piece. Pieces from different chunks that share an
edge are merged by a union of their polygons, and their sums are added, so a patch cut by
chunk borders comes out as one patch with the same geometry (the same vertices: collinear ones
left on a border are removed and the order normalised) and statistics at any chunk size.
Sums are taken in float64 and added with ``math.fsum``, so scores (and the ranking that breaks
ties on them) do not change in the last float32 digit with the chunking. Blind areas (no clear
observation in the flowering phase) are vectorised the same way; their pixels are never
candidates (an empty list there means "not seen", which the blind areas say).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from affine import Affine
from rasterio import features as rfeatures
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely import affinity
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree


@dataclass
class Piece:
    geometry: BaseGeometry
    n: int
    sum_p: float
    max_p: float
    min_ev: float
    sum_elev: float = 0.0
    n_elev: int = 0
    sum_slope: float = 0.0
    n_slope: int = 0         # slope is NaN next to a DEM void or edge, where elevation is not
    feat_sum: np.ndarray | None = None
    n_feat: np.ndarray | None = None
    seen: int = -1           # bit t: some pixel clear on the scene's date t (-1: not known)


def either_seen(values) -> int:
    """The dates any of ``values`` (``seen`` bit sets) was clear on; -1 when one is unknown."""
    out = 0
    for v in values:
        if v < 0:
            return -1
        out |= v
    return out


@dataclass
class CandidateFeatures:
    """The feature vectors of a tile's candidate pixels only (probability at or above the
    pixel threshold): a piece's feature means need no other pixel, and the dense features of
    a 512 px tile are 190 MB (182 features) where its candidates are a few per cent of it."""
    index: np.ndarray    # (y, x) int32: row of the pixel in ``values``, -1 if not a candidate
    values: np.ndarray   # (candidate, feature) float32

    def of(self, box: tuple[slice, slice], sel: np.ndarray) -> np.ndarray:
        """(feature, pixel) values of the pixels ``sel`` of the window ``box``."""
        return self.values[self.index[box][sel]].T


@dataclass
class Patch:
    geometry: BaseGeometry
    n: int
    score: float
    score_max: float
    flowering_obs: int
    elevation_m: float | None
    slope_deg: float | None
    feat_mean: np.ndarray | None = field(default=None)
    n_elev: int = 0          # pixels behind elevation_m and slope_deg, to weight a merge
    n_slope: int = 0
    seen: int = -1           # as Piece.seen


def _polygons(mask: np.ndarray, y0: int, x0: int,
              transform) -> tuple[list[BaseGeometry], np.ndarray]:
    """4-connected polygons of ``mask`` (a tile at row ``y0``, column ``x0``) in the scene CRS,
    and a label raster of the same pieces.

    Polygons are traced in whole scene pixel coordinates (exact integers) and only then mapped
    through the scene transform, so a vertex shared by two tiles gets bit-identical world
    coordinates in both and the union across tile borders closes (with a per-tile transform
    the two sides could differ in the last bits and a patch stayed split in two)."""
    lab, n = ndimage.label(mask)
    geoms: list[BaseGeometry] = [None] * n  # type: ignore[list-item]
    if n:
        # traced one pixel off (x + 1, y + 1): the first tile's transform would otherwise be
        # the identity, which rasterio warns about ("not georeferenced") from a filter that is
        # not thread-safe, so the warning reached users of `detect` now and then
        for geom, val in rfeatures.shapes(lab.astype("int32"), mask=mask,
                                          transform=Affine.translation(x0 + 1, y0 + 1),
                                          connectivity=4):
            i = int(val) - 1
            g = shape(geom)
            geoms[i] = g if geoms[i] is None else geoms[i].union(g)
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, \
        transform.f
    world = [shapely.transform(g, lambda xy: np.column_stack(
        (a * (xy[:, 0] - 1) + b * (xy[:, 1] - 1) + c,
         d * (xy[:, 0] - 1) + e * (xy[:, 1] - 1) + f))) for g in geoms]
    return world, lab


def chunk_pieces(prob: np.ndarray, evidence: np.ndarray, dem: np.ndarray | None,
                 slope: np.ndarray | None, feats: CandidateFeatures | None, y0: int, x0: int,
                 transform, threshold: float, clear: np.ndarray | None = None
                 ) -> tuple[list[Piece], list[BaseGeometry]]:
    """The pieces of the chunk's pixels at or above ``threshold`` and its blind areas.
    ``clear`` (date, y, x): where each date is clear, so that a piece records the dates it
    was seen on (a target of one of two adjacent flights listed both flights' dates)."""
    blind_mask = np.isfinite(evidence) & (evidence <= 0)
    with np.errstate(invalid="ignore"):
        # a blind pixel (no clear flowering observation) has a probability only where a model
        # trained without the flowering phase scored it (pipeline.survey.process_tile)
        mask = np.isfinite(prob) & (prob >= threshold)
    geoms, lab = _polygons(mask, y0, x0, transform)
    pieces: list[Piece] = []
    # each piece's statistics from its bounding box only (a whole-tile mask per piece made
    # this stage quadratic: thousands of pieces x 182 features x the tile's pixels)
    boxes = ndimage.find_objects(lab)
    for i, g in enumerate(geoms, start=1):
        bb = boxes[i - 1]
        sel = lab[bb] == i
        p = prob[bb][sel]
        ev = evidence[bb][sel]
        piece = Piece(g, int(sel.sum()), float(p.sum(dtype=np.float64)), float(p.max()),
                      float(np.nanmin(ev)) if np.isfinite(ev).any() else 0.0)
        if dem is not None and slope is not None:
            e = dem[bb][sel]
            ok = np.isfinite(e)
            piece.sum_elev, piece.n_elev = float(e[ok].sum(dtype=np.float64)), int(ok.sum())
            sl = slope[bb][sel]
            sl_ok = np.isfinite(sl)
            piece.sum_slope = float(sl[sl_ok].sum(dtype=np.float64))
            piece.n_slope = int(sl_ok.sum())
        if feats is not None:
            f = feats.of(bb, sel)
            piece.feat_sum = np.nansum(f, axis=1, dtype=np.float64)
            piece.n_feat = np.isfinite(f).sum(axis=1).astype(np.int32)
        if clear is not None:
            on = clear[(slice(None), *bb)][:, sel].any(axis=1)
            piece.seen = sum(1 << int(t) for t in np.flatnonzero(on))
        pieces.append(piece)
    blind, _ = _polygons(blind_mask, y0, x0, transform)
    return pieces, blind


def _linked(geoms: np.ndarray, **query) -> list[list[int]]:
    """Indices of ``geoms`` grouped by the STRtree ``query`` (predicate, distance), directly
    or through a chain of others; groups in the order of their first member."""
    a, b = STRtree(geoms).query(geoms, **query)
    n = len(geoms)
    _, comp = connected_components(coo_matrix((np.ones(len(a), bool), (a, b)), shape=(n, n)),
                                   directed=False)
    members_of: dict[int, list[int]] = {}
    for i, c in enumerate(comp.tolist()):
        members_of.setdefault(c, []).append(i)
    return list(members_of.values())


def merge_pieces(pieces: list[Piece]) -> list[Patch]:
    """Patches from the pieces of all chunks: pieces that touch (they were cut by a chunk
    border) are merged, in the order of their first piece.

    Only pieces in contact go through a polygon union: a union of every piece of a county
    (tens of thousands) was the slowest step of the assembly, where a few per cent of the
    pieces touch a chunk border.
    """
    if not pieces:
        return []
    geoms = np.array([p.geometry for p in pieces], dtype=object)
    groups: list[tuple[int, BaseGeometry, list[Piece]]] = []   # (first piece, geometry, pieces)
    for idx in _linked(geoms, predicate="intersects"):
        if len(idx) == 1:
            groups.append((idx[0], geoms[idx[0]], [pieces[idx[0]]]))
            continue
        # touching at a corner only, two pieces stay two patches (as in one chunk)
        merged = shapely.union_all(geoms[idx])
        parts = list(getattr(merged, "geoms", [merged]))
        if len(parts) == 1:
            groups.append((idx[0], parts[0], [pieces[i] for i in idx]))
            continue
        tree = STRtree(parts)
        by_part: dict[int, list[int]] = {}
        for i in idx:
            hit = tree.query(geoms[i].representative_point(), predicate="intersects")
            by_part.setdefault(int(hit[0]), []).append(i)
        groups += [(m[0], parts[k], [pieces[i] for i in m]) for k, m in by_part.items()]
    groups.sort(key=lambda g: g[0])
    return [_patch(g, m) for _, g, m in groups]


def _patch(geometry: BaseGeometry, members: list[Piece]) -> Patch:
    n = sum(m.n for m in members)
    n_elev = sum(m.n_elev for m in members)
    n_slope = sum(m.n_slope for m in members)
    feat_mean = None
    if members[0].feat_sum is not None:
        fs = np.sum([m.feat_sum for m in members], axis=0, dtype=np.float64)
        fn = np.sum([m.n_feat for m in members], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            feat_mean = np.where(fn > 0, fs / np.maximum(fn, 1), np.nan).astype("float32")
    return Patch(
        # the same vertices whether or not the patch went through a union (it met a piece
        # across a tile border): no collinear vertex left on the border, normalised order
        geometry=shapely.normalize(shapely.simplify(shapely.make_valid(geometry), 0.0)),
        n=n,
        score=math.fsum(m.sum_p for m in members) / n,
        score_max=max(m.max_p for m in members),
        flowering_obs=int(min(m.min_ev for m in members)),
        elevation_m=(math.fsum(m.sum_elev for m in members) / n_elev) if n_elev else None,
        slope_deg=(math.fsum(m.sum_slope for m in members) / n_slope) if n_slope else None,
        feat_mean=feat_mean,
        n_elev=n_elev,
        n_slope=n_slope,
        seen=either_seen(m.seen for m in members),
    )


def nearby_groups(items: list, distance: float) -> list[list[int]]:
    """Indices of ``items`` (each with a ``geometry``) grouped when at most ``distance`` (CRS
    units) apart, directly or through a chain of others; in the order of each group's first
    item. ``distance`` 0: every item alone (patches touching at a corner stay apart)."""
    if distance <= 0 or len(items) < 2:
        return [[i] for i in range(len(items))]
    geoms = np.array([p.geometry for p in items], dtype=object)
    # "at most" includes a gap of exactly ``distance`` (one whole pixel between two patches),
    # whatever the last bits of the coordinates say
    return _linked(geoms, predicate="dwithin", distance=distance * (1 + 1e-9))


def merge_nearby(patches: list[Patch], distance: float) -> list[Patch]:
    """Patches at most ``distance`` (CRS units) apart, directly or through a
    chain of others, become one patch: the union of their geometries, pixel-weighted mean
    score, highest peak, fewest flowering observations. Order: that of each group's first
    patch. ``distance`` 0 returns the patches unchanged."""
    return [merged([patches[i] for i in idx]) for idx in nearby_groups(patches, distance)]


def merged(members: list[Patch]) -> Patch:
    """One patch of ``members`` (itself when alone)."""
    return members[0] if len(members) == 1 else _merged(members)


def _merged(members: list[Patch]) -> Patch:
    n = sum(m.n for m in members)
    with_elev = [m for m in members if m.elevation_m is not None]
    with_slope = [m for m in members if m.slope_deg is not None]
    n_elev, n_slope = sum(m.n_elev for m in with_elev), sum(m.n_slope for m in with_slope)
    feat_mean = None
    if all(m.feat_mean is not None for m in members):
        fm = np.array([m.feat_mean for m in members], dtype=np.float64)
        w = np.array([m.n for m in members], dtype=np.float64)[:, None] * np.isfinite(fm)
        with np.errstate(invalid="ignore", divide="ignore"):
            feat_mean = (np.nansum(fm * w, axis=0) / w.sum(axis=0)).astype("float32")
    return Patch(
        geometry=shapely.normalize(shapely.union_all([m.geometry for m in members])),
        n=n,
        score=math.fsum(m.score * m.n for m in members) / n,
        score_max=max(m.score_max for m in members),
        flowering_obs=min(m.flowering_obs for m in members),
        # weighted by the pixels each mean rests on
        elevation_m=(math.fsum(m.elevation_m * m.n_elev for m in with_elev)  # type: ignore
                     / n_elev if n_elev else None),
        slope_deg=(math.fsum(m.slope_deg * m.n_slope for m in with_slope)  # type: ignore
                   / n_slope if n_slope else None),
        feat_mean=feat_mean,
        n_elev=n_elev,
        n_slope=n_slope,
        seen=either_seen(m.seen for m in members),
    )


def gap_polygons(mask: np.ndarray, y0: int, x0: int, transform) -> list[BaseGeometry]:
    """Polygons of a chunk's pixels without data on any date (``mask``), for the gaps the
    assembly keeps as blind areas (:func:`enclosed`)."""
    return _polygons(mask, y0, x0, transform)[0]


def enclosed(gaps: list[BaseGeometry], transform, height: int,
             width: int) -> list[BaseGeometry]:
    """The parts of the union of ``gaps`` that do not reach the edge of the grid
    (``transform``, ``height`` x ``width`` pixels): holes the images surround (a stitching
    hole in an orthomosaic), not the collar or the swath edge around them. Judged in pixel
    space, so a rotated grid's edge is its own, not its footprint's bounding box."""
    if not gaps:
        return []
    inv = ~transform
    to_px = [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]
    out = []
    for g in getattr(merged := shapely.union_all(gaps), "geoms", [merged]):
        c0, r0, c1, r1 = affinity.affine_transform(g, to_px).bounds
        if c0 > 0.5 and r0 > 0.5 and c1 < width - 0.5 and r1 < height - 0.5:
            out.append(g)
    return out


def merge_blind(polys: list[BaseGeometry]) -> list[BaseGeometry]:
    if not polys:
        return []
    merged = shapely.union_all(polys)
    return [shapely.make_valid(g) for g in getattr(merged, "geoms", [merged])]
