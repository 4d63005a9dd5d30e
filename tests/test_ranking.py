"""Ranking (issue 8): location-derived target ids, the priority formula, deterministic ties,
the minimum mapping unit."""
from __future__ import annotations

import random

import numpy as np
import pytest
from pyproj import Geod, Transformer
from shapely.geometry import box

from outputs.patches import Patch
from outputs.ranking import build_targets, geohash
from pipeline.config import PatchConfig, RankingConfig

CRS = "EPSG:32650"
X0, Y0 = 500000.0, 3340000.0
RANK = RankingConfig()
MMU = PatchConfig(min_mapping_unit_m2=100.0)
TO_WGS = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)


def patch(x: float, y: float, side: float = 20.0, score: float = 0.8, score_max: float = 0.9,
          obs: int = 2) -> Patch:
    return Patch(box(x, y, x + side, y + side), int(side * side / 100), score, score_max, obs,
                 None, None)


def build(patches, **kw):
    kw.setdefault("patch_cfg", MMU)
    kw.setdefault("rank_cfg", RANK)
    return build_targets(patches, CRS, dates=("2024-04-20",), sensor="sentinel2", **kw)


def test_geohash_reference_value() -> None:
    assert geohash(57.64911, 10.40744, 11) == "u4pruydqqvj"     # the classic example
    assert geohash(57.64911, 10.40744) == "u4pruydqqv"
    assert geohash(-25.382708, -49.265506, 8) == "6gkzwgjz"


def test_target_id_is_the_geohash_of_the_centroid() -> None:
    tl, _ = build([patch(X0, Y0)])
    [t] = tl.targets
    lon, lat = TO_WGS.transform(X0 + 10, Y0 + 10)
    assert t.target_id == "ps-" + geohash(lat, lon)
    assert (t.lon, t.lat) == pytest.approx((lon, lat), abs=1e-7)


def test_priority_formula_orders_the_list() -> None:
    ps = [patch(X0, Y0, score=0.6), patch(X0 + 100, Y0, score=0.9),
          patch(X0 + 200, Y0, side=50, score=0.6),               # 2500 m2: area term saturated
          patch(X0 + 300, Y0, score=0.6, obs=0)]
    tl, dropped = build(ps)
    assert dropped == 0
    prio = {}
    for t in tl.targets:
        obs = t.flowering_obs
        prio[t.target_id] = (0.7 * t.score + 0.2 * min(1.0, t.area_m2 / 2000.0)
                             + 0.1 * min(1.0, obs / 3.0))
    ranked = [t.target_id for t in tl.targets]
    assert ranked == sorted(prio, key=lambda k: -prio[k])
    assert [t.rank for t in tl.targets] == [1, 2, 3, 4]
    assert tl.targets[0].score == 0.9
    assert tl.targets[-1].flowering_obs == 0


def test_ties_are_deterministic_whatever_the_input_order() -> None:
    ps = [patch(X0 + 100 * i, Y0 + 37 * (i % 3)) for i in range(8)]   # all tied
    first, _ = build(ps)
    ids = [t.target_id for t in first.targets]
    assert ids == sorted(ids)                                   # ties broken by target_id
    for seed in range(5):
        shuffled = ps[:]
        random.Random(seed).shuffle(shuffled)
        again, _ = build(shuffled)
        assert [(t.target_id, t.rank) for t in again.targets] == \
            [(t.target_id, t.rank) for t in first.targets]
    # score_max breaks a tie on priority before the id does
    ps[5] = patch(X0 + 500, Y0 + 37 * 2, score_max=0.95)
    tl, _ = build(ps)
    assert tl.targets[0].score_max == 0.95


def test_two_centroids_in_one_geohash_cell_get_suffixes_west_to_east() -> None:
    # two 0.4 m squares 0.1 m apart: one ~1 m geohash cell
    a = Patch(box(X0 + 0.05, Y0, X0 + 0.45, Y0 + 0.4), 1, 0.8, 0.9, 2, None, None)
    b = Patch(box(X0 + 0.15, Y0 - 0.01, X0 + 0.55, Y0 + 0.39), 1, 0.8, 0.9, 2, None, None)
    cfg = PatchConfig(min_mapping_unit_m2=0)
    for order in ([a, b], [b, a]):
        tl, _ = build(order, patch_cfg=cfg)
        by_id = {t.target_id: t for t in tl.targets}
        [base] = [k for k in by_id if not k.endswith("-2")]
        assert base + "-2" in by_id
        assert by_id[base].lon < by_id[base + "-2"].lon         # west first


def test_minimum_mapping_unit() -> None:
    ps = [patch(X0, Y0, side=9.9), patch(X0 + 100, Y0, side=10.0),
          patch(X0 + 200, Y0, side=10.1), patch(X0 + 300, Y0, side=30)]
    tl, dropped = build(ps)
    assert dropped == 1
    assert sorted(t.area_m2 for t in tl.targets) == pytest.approx([100.0, 102.0, 900.0],
                                                                  abs=0.1)
    tl, dropped = build(ps, patch_cfg=PatchConfig(min_mapping_unit_m2=1000))
    assert dropped == 4 and tl.targets == ()
    tl, dropped = build(ps, patch_cfg=PatchConfig(min_mapping_unit_m2=0))
    assert dropped == 0 and len(tl.targets) == 4



def test_patches_within_the_group_distance_count_together_for_the_unit() -> None:
    """patches.group_distance_m: the unit applies to the summed area of patches at most that
    far apart (a plot's flowers come as separate blobs), each of them below it."""
    def sq(x: float) -> Patch:                                  # 8 m x 8 m of 1 m pixels
        return Patch(box(x, Y0, x + 8, Y0 + 8), 64, 0.8, 0.9, 2, None, None)

    cfg = PatchConfig(min_mapping_unit_m2=100.0, group_distance_m=5.0)
    near = [sq(X0), sq(X0 + 12)]                                # 64 m2 each, 4 m apart
    far = [sq(X0), sq(X0 + 14)]                                 # 6 m apart
    tl, dropped = build(near, patch_cfg=cfg)
    assert dropped == 0 and [t.area_m2 for t in tl.targets] == pytest.approx([128.0])
    tl, dropped = build(far, patch_cfg=cfg)
    assert dropped == 2 and tl.targets == ()
    tl, dropped = build(near, patch_cfg=PatchConfig(min_mapping_unit_m2=100.0))   # default 0
    assert dropped == 2 and tl.targets == ()
    # through a chain: the third patch is 4 m from the second, 20 m from the first; a group
    # that passes the unit is then merged with others as before (here: none within 0 m)
    chain = near + [sq(X0 + 24), sq(X0 + 300)]
    tl, dropped = build(chain, patch_cfg=cfg)
    assert dropped == 1 and [t.area_m2 for t in tl.targets] == pytest.approx([192.0])

def test_area_in_a_geographic_crs_is_geodesic() -> None:
    g = box(117.0, 30.0, 117.001, 30.001)
    p = Patch(g, 1, 0.8, 0.9, 1, None, None)
    tl, _ = build_targets([p], "EPSG:4326", patch_cfg=MMU, rank_cfg=RANK, dates=(),
                          sensor="p4m")
    want = abs(Geod(ellps="WGS84").geometry_area_perimeter(g)[0])
    assert 10000 < want < 11000
    assert tl.targets[0].area_m2 == pytest.approx(want, abs=0.1)


def test_blind_areas_travel_with_the_list() -> None:
    gap = box(X0, Y0, X0 + 300, Y0 + 300)
    tl, _ = build([], blind_areas=[gap])
    assert tl.targets == () and tl.blind_areas == (gap,)


def test_patches_a_pixel_apart_are_one_target_and_far_ones_stay_apart() -> None:
    """merge_distance_m: a chain of patches with one-pixel gaps (10 m) is one target (union,
    pixel-weighted score, highest peak, fewest observations, summed area); a patch 30 m away
    stays a target of its own; 0 keeps every patch."""
    a = patch(X0, Y0, score=0.8, score_max=0.9, obs=3)             # 4 px
    b = patch(X0 + 30, Y0, score=0.6, score_max=0.95, obs=1)       # gap 10 m to a
    c = patch(X0 + 60, Y0, side=10, score=0.7, score_max=0.75)     # gap 10 m to b, 1 px
    far = patch(X0 + 100, Y0)                                      # gap 30 m to c
    cfg = PatchConfig(min_mapping_unit_m2=100.0, merge_distance_m=10.0)
    tl, dropped = build([a, b, c, far], patch_cfg=cfg)
    assert dropped == 0 and len(tl.targets) == 2
    big = max(tl.targets, key=lambda t: t.area_m2)
    assert big.area_m2 == pytest.approx(400 + 400 + 100)
    assert big.geometry.geom_type == "MultiPolygon" and len(big.geometry.geoms) == 3
    assert big.score == pytest.approx(round((0.8 * 4 + 0.6 * 4 + 0.7 * 1) / 9, 4))
    assert big.score_max == 0.95 and big.flowering_obs == 1
    assert len(build([a, b, c, far], patch_cfg=MMU)[0].targets) == 4
    # the unit applies to each patch before merging: specks do not add up to a target
    speck = patch(X0 + 300, Y0, side=5)
    speck2 = patch(X0 + 310, Y0, side=5)
    tl, dropped = build([speck, speck2], patch_cfg=cfg)
    assert dropped == 2 and not tl.targets


def test_patches_touching_at_a_corner_are_one_sentinel2_target() -> None:
    from pipeline.config import load_config
    cfg = load_config().patches
    assert cfg.merge_distance_m == 10.0
    tl, _ = build([patch(X0, Y0), patch(X0 + 20, Y0 + 20)], patch_cfg=cfg)
    assert len(tl.targets) == 1


def test_the_point_a_team_walks_to_lies_on_the_target() -> None:
    """lat/lon (and the id's geohash, the GPX waypoint, the map marker) of a target merged
    across a gap: its centroid falls between the parts, so the point is inside the largest
    part; a target whose centroid lies on it keeps the centroid."""
    from shapely.geometry import Point
    big = patch(X0, Y0, side=30)                                   # 9 px
    small = patch(X0 + 40, Y0, side=28)                            # gap 10 m; centroid in it
    cfg = PatchConfig(min_mapping_unit_m2=100.0, merge_distance_m=10.0)
    [t] = build([big, small], patch_cfg=cfg)[0].targets
    assert not t.geometry.contains(t.geometry.centroid)
    x, y = Transformer.from_crs("EPSG:4326", CRS, always_xy=True).transform(t.lon, t.lat)
    assert big.geometry.buffer(0.01).contains(Point(x, y))
    [s] = build([big])[0].targets
    assert (s.lon, s.lat) == pytest.approx(TO_WGS.transform(X0 + 15, Y0 + 15), abs=1e-7)


def test_on_a_grid_in_degrees_patches_a_pixel_apart_east_west_are_one_target() -> None:
    """Images in EPSG:4326: the merge distance was taken in degrees of latitude, so at 30 N
    two patches 9.3 m apart east-west (a one-pixel gap) stayed two targets at a 10 m merge
    distance. A degree of longitude at the patches' latitude is the unit now."""
    from pyproj import CRS as ProjCRS

    from outputs.ranking import crs_distance
    geo = ProjCRS("EPSG:4326")
    lon0, lat0 = 120.0, 30.0
    dx = 9.34 / (111_320.0 * np.cos(np.radians(lat0)))              # 9.34 m in longitude
    side = 2 * dx
    a = Patch(box(lon0, lat0, lon0 + side, lat0 + side / 2), 4, 0.8, 0.9, 2, None, None)
    b = Patch(box(lon0 + side + dx, lat0, lon0 + 2 * side + dx, lat0 + side / 2), 4, 0.8, 0.9,
              2, None, None)
    cfg = PatchConfig(min_mapping_unit_m2=100.0, merge_distance_m=10.0)
    tl, _ = build_targets([a, b], "EPSG:4326", patch_cfg=cfg, rank_cfg=RANK,
                          dates=("2024-04-20",), sensor="sentinel2")
    assert len(tl.targets) == 1
    # north-south the same distance in degrees is 1 / cos(lat) wider, never narrower
    assert crs_distance(10.0, geo, lat0) * 111_320.0 == pytest.approx(10.0 / np.cos(
        np.radians(lat0)))
