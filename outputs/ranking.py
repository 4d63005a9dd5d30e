"""Patches -> the ranked target list: stable ids, WGS84 anchor points, reasons and priority.

``target_id`` is ``ps-`` plus the 10-character geohash of the target's anchor point (about 1 m;
its centroid, or a point inside its largest part when the centroid falls outside it): it
depends only on where the patch is, so reruns, other chunk sizes and other schedulers give the
same id; two targets whose anchors share a geohash cell get ``-2``, ``-3`` in west-to-east
order.

Priority (higher = visit first), each term in [0, 1]:
``w_score * score + w_area * min(1, area_m2 / area_saturation_m2)
+ w_evidence * min(1, flowering_obs / 3)``; ties are broken by ``score_max`` and then by
``target_id``, so the order is deterministic.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer

from outputs.patches import Patch, merge_nearby, merged, nearby_groups
from outputs.targets import Target, TargetList
from pipeline.config import PatchConfig, RankingConfig

_B32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_GEOD = Geod(ellps="WGS84")
#: what every target id starts with (the geohash follows)
ID_PREFIX = "ps-"


def geohash(lat: float, lon: float, precision: int = 10) -> str:
    lat_rng, lon_rng = [-90.0, 90.0], [-180.0, 180.0]
    even, out, ch, n = True, [], 0, 0
    while len(out) < precision:
        rng, val = (lon_rng, lon) if even else (lat_rng, lat)
        mid = (rng[0] + rng[1]) / 2
        if val >= mid:
            ch = (ch << 1) | 1
            rng[0] = mid
        else:
            ch <<= 1
            rng[1] = mid
        even = not even
        n += 1
        if n == 5:
            out.append(_B32[ch])
            ch, n = 0, 0
    return "".join(out)


def area_m2(geom, crs: CRS, to_wgs84: Transformer) -> float:
    if crs.is_projected:
        return float(geom.area)
    g = shapely.transform(geom, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
    return float(abs(_GEOD.geometry_area_perimeter(g)[0]))


def reason(feat_mean: np.ndarray | None, names: Sequence[str], bg_mean: Sequence[float],
           bg_std: Sequence[float], top: int = 3) -> str:
    """The features furthest from the training background, as 'name +2.1sd; ...'."""
    if feat_mean is None or not len(bg_mean):
        return ""
    mu, sd = np.asarray(bg_mean, float), np.asarray(bg_std, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (np.asarray(feat_mean, float) - mu) / np.where(sd > 0, sd, np.nan)
    z = np.where(np.isfinite(z), z, 0.0)
    order = np.argsort(-np.abs(z), kind="stable")[:top]
    return "; ".join(f"{names[i]} {z[i]:+.1f}sd" for i in order if z[i] != 0)


def anchor_point(geom):
    """The point a team walks to (``lat``/``lon``, the id's geohash, GPX waypoint): the
    centroid when it lies on the target, else a point inside the target's largest part (the
    centroid of a C-shaped patch, or of parts merged across a gap, can fall between them)."""
    c = geom.centroid
    if geom.intersects(c):
        return c
    part = max(getattr(geom, "geoms", [geom]), key=lambda g: g.area)
    c = part.centroid
    return c if part.intersects(c) else part.representative_point()


def crs_distance(metres: float, crs: CRS, lat: float = 0.0) -> float:
    """``metres`` in the units of ``crs``; for a geographic CRS, degrees of longitude at
    latitude ``lat`` (the shorter degree: a distance in degrees is as wide as asked east-west
    and 1/cos(lat) as wide north-south, never narrower; degrees of latitude left patches
    9.3 m apart east-west unmerged at a 10 m merge distance)."""
    if metres <= 0:
        return 0.0
    if crs.is_geographic:
        return metres / (111_320.0 * max(math.cos(math.radians(lat)), 1e-6))
    return metres / float(crs.axis_info[0].unit_conversion_factor)


def _latitude(patches: list[Patch], crs: CRS) -> float:
    """The latitude of the patches' middle on a geographic grid (0 otherwise: not used)."""
    if not crs.is_geographic or not patches:
        return 0.0
    ys = [p.geometry.centroid.y for p in patches]
    return (min(ys) + max(ys)) / 2.0


def target_patches(patches: list[Patch], crs, patch_cfg: PatchConfig,
                   area: dict[int, float] | None = None) -> tuple[list[Patch], int]:
    """The patches that become targets (the unit reached by a group of patches at most
    ``group_distance_m`` apart, those closer than the merge distance joined), and the count
    of patches dropped below the unit. ``area``: each patch's m^2 by ``id``, when known."""
    scrs = CRS.from_user_input(crs)
    if area is None:
        to_wgs = Transformer.from_crs(scrs, "EPSG:4326", always_xy=True)
        area = {id(p): area_m2(p.geometry, scrs, to_wgs) for p in patches}
    kept, dropped = [], 0
    lat = _latitude(patches, scrs)
    for idx in nearby_groups(patches, crs_distance(patch_cfg.group_distance_m, scrs, lat)):
        members = [patches[i] for i in idx]
        if math.fsum(area[id(p)] for p in members) >= patch_cfg.min_mapping_unit_m2 - 1e-6:
            kept.append(merged(members))
        else:
            dropped += len(members)
    return merge_nearby(kept, crs_distance(patch_cfg.merge_distance_m, scrs, lat)), dropped


def build_targets(patches: list[Patch], crs: str, *, patch_cfg: PatchConfig,
                  rank_cfg: RankingConfig, dates: Sequence[str | None], sensor: str,
                  feature_names: Sequence[str] = (), bg_mean: Sequence[float] = (),
                  bg_std: Sequence[float] = (), blind_areas=()) -> tuple[TargetList, int]:
    """Rank patches above the minimum mapping unit (the summed area of the patches at most
    ``group_distance_m`` apart), those closer than the merge distance joined into one target;
    returns the list and the count of patches dropped below the unit.

    ``dates``: per date of the scene (its index is a patch's ``seen`` bit), the ISO date, or
    None for one the features did not use; a target lists the used dates it was clear on."""
    scrs = CRS.from_user_input(crs)
    to_wgs = Transformer.from_crs(scrs, "EPSG:4326", always_xy=True)
    area = {id(p): area_m2(p.geometry, scrs, to_wgs) for p in patches}
    kept, dropped = target_patches(patches, scrs, patch_cfg, area)
    rows = []
    for p in kept:
        # a patch that joined others is a new one: its area is that of the union
        a = area[id(p)] if id(p) in area else area_m2(p.geometry, scrs, to_wgs)
        c = anchor_point(p.geometry)
        lon, lat = to_wgs.transform(c.x, c.y)
        prio = (rank_cfg.w_score * p.score
                + rank_cfg.w_area * min(1.0, a / rank_cfg.area_saturation_m2)
                + rank_cfg.w_evidence * min(1.0, p.flowering_obs / 3.0))
        rows.append((p, a, float(lon), float(lat), prio, geohash(lat, lon)))
    rows.sort(key=lambda r: (r[2], r[3]))  # west to east (then south to north), as documented
    seen: dict[str, int] = {}
    ids = []
    for r in rows:
        k = seen.get(r[5], 0) + 1
        seen[r[5]] = k
        ids.append(f"{ID_PREFIX}{r[5]}" + (f"-{k}" if k > 1 else ""))
    ranked = sorted(zip(rows, ids), key=lambda t: (-round(t[0][4], 9),
                                                   -round(t[0][0].score_max, 9), t[1]))
    targets = []
    for rank, ((p, a, lon, lat, _, _), tid) in enumerate(ranked, start=1):
        targets.append(Target(
            target_id=tid, rank=rank, geometry=p.geometry, score=round(p.score, 4),
            score_max=round(p.score_max, 4), area_m2=round(a, 3), lon=round(lon, 7),
            lat=round(lat, 7), flowering_obs=p.flowering_obs,
            dates=tuple(d for t, d in enumerate(dates) if d and (p.seen < 0 or p.seen >> t & 1)),
            sensor=sensor, reason=reason(p.feat_mean, feature_names, bg_mean, bg_std),
            elevation_m=None if p.elevation_m is None else round(p.elevation_m, 1),
            slope_deg=None if p.slope_deg is None else round(p.slope_deg, 1)))
    return TargetList(tuple(targets), scrs.to_wkt(), tuple(blind_areas)), dropped
