"""Small target lists for the output-writer tests (EPSG:32650 near 30.2 N, 120.1 E, in China)."""
from __future__ import annotations

import numpy as np
from affine import Affine
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box

from outputs.targets import Target, TargetList

CRS = "EPSG:32650"
_TO_UTM = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
_TO_LL = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
X0, Y0 = (round(v, -1) for v in _TO_UTM.transform(120.1, 30.2))   # scene upper-left corner
PIXEL = 10.0
SIZE = 120                                                           # pixels per side


def scene_transform() -> Affine:
    return Affine(PIXEL, 0.0, X0, 0.0, -PIXEL, Y0)


def scene_rgb(seed: int = 0) -> np.ndarray:
    """(3, SIZE, SIZE) float reflectance with a NaN (masked) stripe."""
    rng = np.random.default_rng(seed)
    rgb = rng.uniform(0.02, 0.3, size=(3, SIZE, SIZE)).astype(np.float32)
    rgb[:, 90:100, :] = np.nan
    return rgb


def _geoms() -> list[Polygon | MultiPolygon]:
    # Clockwise exteriors on purpose (shapely's box(ccw=False)), so orientation is checked.
    a = box(X0 + 100, Y0 - 300, X0 + 160, Y0 - 250, ccw=False)
    b = Polygon(box(X0 + 400, Y0 - 500, X0 + 520, Y0 - 400).exterior.coords[::-1],
                [box(X0 + 440, Y0 - 470, X0 + 470, Y0 - 440).exterior.coords])    # with a hole
    c = MultiPolygon([box(X0 + 700, Y0 - 200, X0 + 740, Y0 - 170),
                      box(X0 + 760, Y0 - 200, X0 + 790, Y0 - 180)])
    return [a, b, c]


def make_targets(n: int = 3) -> TargetList:
    """``n`` (<= 3) targets with distinct attributes; rank order differs from list order."""
    geoms = _geoms()[:n]
    specs = [  # (id, rank, score, reason, unit, elevation, dates)
        ("ps-9f3a1c2b7d", 2, 0.81, "flowering NDVI drop, red-edge peak", "Mengla", 1234.5,
         ("2024-03-02", "2024-03-12")),
        ("ps-a07e55c913", 1, 0.93, "strong petal signal; 3 dates", None, None,
         ("2024-03-02", "2024-03-12", "2024-03-22")),
        ("ps-c4d2e8f0aa", 3, 0.64, "weak, small plot — check", "Ruili 瑞丽", 980.0, ("2024-03-12",)),
    ]
    targets = []
    for g, (tid, rank, score, reason, unit, ele, dates) in zip(geoms, specs):
        lon, lat = _TO_LL.transform(g.centroid.x, g.centroid.y)
        targets.append(Target(
            target_id=tid, rank=rank, geometry=g, score=score, score_max=min(1.0, score + 0.05),
            area_m2=g.area, lon=lon, lat=lat, flowering_obs=len(dates), dates=dates,
            sensor="sentinel2", reason=reason, elevation_m=ele,
            slope_deg=None if ele is None else 7.25, unit=unit))
    blind = (box(X0 + 200, Y0 - 1000, X0 + 600, Y0 - 900),)
    return TargetList(tuple(targets), CRS, blind)
