"""Drone scenes (5 cm pixels): single plants with leaves and flowers in courtyards and gardens.

Called through :func:`pipeline.simulate.simulate` with ``sensor="drone"`` (DJI P4
Multispectral: blue, green, red, rededge2, nir as float32 reflectance, ``SENSOR=p4m``) or
``sensor="drone-rgb"`` (red, green, blue, ``SENSOR=rgb``). One flight in the flowering window.

The scene is a patch of village: parcels from a recursive split (roofs with cast shadows,
concrete yards with flower pots, garden beds, field strips, trees, grass, bare soil). Beds hold
individual plants drawn as anti-aliased leaf discs with flower blobs (5-10 cm): cabbage and
garlic (glaucous like poppy), lettuce, broad bean and radish in flower, wheat, ornamental corn
poppy. Poppy appears as whole beds, strips inside vegetable beds, single plants among
vegetables and pots on concrete.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import Point, Polygon, box

from pipeline.geotiff import write_multiband

log = logging.getLogger(__name__)

PIXEL = 0.05  # m
#: P4M band -> column of the S2-band endmember table (450->B02, 560->B03, 650->B04,
#: 730->B06 at 740, 840->B08)
P4M_BANDS: tuple[str, ...] = ("blue", "green", "red", "rededge2", "nir")
_P4M_COL = (1, 2, 3, 5, 7)
RGB_BANDS: tuple[str, ...] = ("red", "green", "blue")

# crop -> (plant spacing m, leaf radius m, leaf endmember, flower prob per plant,
#          flowers per plant, flower radius m, petal colours)
_CROPS: dict[str, tuple[float, float, str, float, int, float, tuple[str, ...]]] = {
    "poppy": (0.22, 0.11, "leaf_glaucous", 0.8, 2, 0.04,
              ("petal_white", "petal_pink", "petal_red", "petal_purple")),
    "ornamental_poppy": (0.18, 0.09, "leaf", 0.85, 3, 0.03,
                         ("petal_red", "petal_red", "petal_pink", "petal_white")),
    "cabbage": (0.45, 0.2, "leaf_glaucous", 0.0, 0, 0.0, ()),
    "lettuce": (0.28, 0.12, "leaf_light", 0.0, 0, 0.0, ()),
    "garlic": (0.13, 0.05, "leaf_glaucous", 0.0, 0, 0.0, ()),
    "broad_bean": (0.3, 0.14, "leaf", 0.7, 4, 0.015, ("petal_white", "petal_purple")),
    "radish": (0.25, 0.12, "leaf", 0.8, 5, 0.02, ("petal_white", "petal_pink", "petal_purple")),
    "wheat": (0.06, 0.04, "leaf", 0.0, 0, 0.0, ()),
    "rapeseed": (0.2, 0.11, "leaf", 0.3, 6, 0.02, ("petal_yellow",)),
}
_LABEL = {"cabbage": "vegetables", "lettuce": "vegetables", "concrete": "village",
          "roof": "village", "tree": "forest", "grass": "grass", "soil": "bare_soil"}


@dataclass
class _Parcel:
    poly: Polygon
    kind: str  # roof | concrete | bed | tree | grass | soil
    crop: str = ""


def _em(name: str) -> np.ndarray:
    """Endmember at the five P4M bands (blue, green, red, rededge2, nir)."""
    from pipeline.simulate import ENDMEMBERS

    if name == "leaf_light":
        leaf = np.array(ENDMEMBERS["leaf"], np.float32)
        full = leaf * np.array([1.4, 1.4, 1.3, 1.5, 1.1, 1.0, 1.0, 0.95, 0.95, 0.95, 1.1, 1.2],
                               np.float32)
    elif name == "terracotta":
        full = np.array(ENDMEMBERS["roof_red"], np.float32) * 1.1
    else:
        full = np.array(ENDMEMBERS[name], np.float32)
    return full[list(_P4M_COL)]


def _split(rng: np.random.Generator, poly: Polygon, depth: int, out: list[Polygon]) -> None:
    x0, y0, x1, y1 = poly.bounds
    w, h = x1 - x0, y1 - y0
    if depth > 6 or max(w, h) < 5.0 or (depth > 1 and rng.uniform() < 0.18):
        out.append(poly)
        return
    if w >= h:
        cut = x0 + w * rng.uniform(0.3, 0.7)
        parts = (box(x0, y0, cut, y1), box(cut, y0, x1, y1))
    else:
        cut = y0 + h * rng.uniform(0.3, 0.7)
        parts = (box(x0, y0, x1, cut), box(x0, cut, x1, y1))
    for p in parts:
        _split(rng, p, depth + 1, out)


class _Canvas:
    """Reflectance image (P4M band, y, x) in local metres, x east, y down, plus a poppy mask."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n = n
        self.rng = rng
        self.img = np.zeros((len(_P4M_COL), n, n), np.float32)
        self.poppy = np.zeros((n, n), np.float32)
        self.height = np.zeros((n, n), np.float32)  # object heights for shadows

    def fill(self, poly: Polygon, spec: np.ndarray, tex: float = 0.05, height: float = 0.0) -> None:
        x0, y0, x1, y1 = (int(v / PIXEL) for v in poly.bounds)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(self.n, x1 + 1), min(self.n, y1 + 1)
        if x0 >= x1 or y0 >= y1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = shapely.contains_xy(poly, (xx + 0.5) * PIXEL, (yy + 0.5) * PIXEL)
        noise = 1.0 + tex * self.rng.standard_normal(inside.shape).astype(np.float32)
        win = self.img[:, y0:y1, x0:x1]
        win[:, inside] = (spec[:, None] * noise[inside][None, :])
        if height:
            self.height[y0:y1, x0:x1][inside] = height

    def disc(self, x: float, y: float, r: float, spec: np.ndarray, poppy: float = 0.0,
             height: float = 0.0, soft: float = 1.0) -> None:
        """Anti-aliased disc blended over the image (alpha from distance to the edge)."""
        rp = r / PIXEL
        cx, cy = x / PIXEL, y / PIXEL
        x0, x1 = max(0, int(cx - rp - 1)), min(self.n, int(cx + rp + 2))
        y0, y1 = max(0, int(cy - rp - 1)), min(self.n, int(cy + rp + 2))
        if x0 >= x1 or y0 >= y1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
        a = (np.clip(rp - d + 0.5, 0.0, 1.0) * soft).astype(np.float32)
        win = self.img[:, y0:y1, x0:x1]
        win *= 1.0 - a
        win += a[None] * spec[:, None, None]
        if poppy:
            self.poppy[y0:y1, x0:x1] = np.maximum(self.poppy[y0:y1, x0:x1], a * poppy)
        if height:
            h = self.height[y0:y1, x0:x1]
            np.maximum(h, (a > 0.5) * height, out=h)


def _plants(cv: _Canvas, area: Polygon, crop: str, rng: np.random.Generator, *,
            is_poppy: bool, colour: np.ndarray | None = None, tex_leaf: float = 0.08) -> None:
    """Plants of ``crop`` on a jittered grid over ``area``; ``colour`` fixes the petal colour."""
    sp, r, leaf, p_fl, n_fl, r_fl, colours = _CROPS[crop]
    x0, y0, x1, y1 = area.bounds
    xs = np.arange(x0 + sp / 2, x1, sp)
    ys = np.arange(y0 + sp / 2, y1, sp)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + rng.normal(0, sp * 0.15, gx.shape)
    gy = gy + rng.normal(0, sp * 0.15, gy.shape)
    keep = shapely.contains_xy(area, gx, gy) & (rng.uniform(size=gx.shape) < 0.9)
    leaf_em = _em(leaf)
    petals = [_em(c) for c in colours] if colour is None else [colour]
    for px, py in zip(gx[keep].tolist(), gy[keep].tolist()):
        rr = r * rng.uniform(0.7, 1.2)
        spec = leaf_em * (1 + tex_leaf * rng.standard_normal())
        # plant: a darker rim and a brighter centre give leaves some structure
        cv.disc(px, py, rr, spec * 0.85, poppy=1.0 if is_poppy else 0.0, height=0.5)
        cv.disc(px, py, rr * 0.55, spec * 1.1, poppy=1.0 if is_poppy else 0.0)
        if n_fl and rng.uniform() < p_fl:
            for _ in range(int(rng.integers(1, n_fl + 1))):
                fx = px + rng.normal(0, rr * 0.5)
                fy = py + rng.normal(0, rr * 0.5)
                pet = petals[int(rng.integers(len(petals)))]
                cv.disc(fx, fy, r_fl * rng.uniform(0.7, 1.3), pet, poppy=1.0 if is_poppy else 0.0)


def simulate_drone(out: Path, *, rgb: bool, size: int, seed: int, prevalence: float,
                   year: int):
    """Write one drone flight (``drone_YYYYMMDD.tif``), dem.tif, labels and truth into ``out``."""
    from pipeline.simulate import (
        SimResult,
        _feature,
        _grid,
        _sun,
        _to_wgs84,
        _write_geojson,
    )

    rng = np.random.default_rng([seed, 55])
    crs, transform, lat = _grid(rng, size, PIXEL)
    day = date(year, 4, 10) + timedelta(days=int(rng.integers(0, 31)))
    zen, az = _sun(day, lat)
    n = size
    ext = n * PIXEL
    cv = _Canvas(n, rng)
    parcels: list[Polygon] = []
    _split(rng, box(0, 0, ext, ext), 0, parcels)
    kinds = rng.choice(["roof", "concrete", "bed", "bed", "bed", "tree", "grass", "soil"],
                       size=len(parcels))
    beds = ("cabbage", "lettuce", "garlic", "broad_bean", "radish", "wheat", "rapeseed",
            "ornamental_poppy")
    plan = [_Parcel(p, str(k), str(rng.choice(beds)) if k == "bed" else "")
            for p, k in zip(parcels, kinds)]
    # poppy: how much area to hide, in which forms
    target = prevalence * ext * ext
    truth: list[tuple[Polygon, str]] = []
    pots: set[int] = set()
    for p in plan:
        if p.kind == "roof":
            shrink = p.poly.buffer(-0.4)
            cv.fill(p.poly, _em("concrete") * 0.9, 0.03)
            roof = str(rng.choice(["roof_red", "roof_grey", "roof_blue", "roof_white"]))
            if not shrink.is_empty:
                height = rng.uniform(3.0, 9.0)
                cv.fill(shrink, _em(roof), 0.03, height=height)
                if rng.uniform() < 0.6:  # pitched roof: the half facing the sun is brighter
                    x0, y0, x1, y1 = shrink.bounds
                    if x1 - x0 >= y1 - y0:
                        half, sunny = box(x0, y0, x1, (y0 + y1) / 2), math.cos(math.radians(az)) > 0
                    else:
                        half, sunny = box((x0 + x1) / 2, y0, x1, y1), math.sin(math.radians(az)) > 0
                    cv.fill(half, _em(roof) * (1.12 if sunny else 0.82), 0.03, height=height)
        elif p.kind == "concrete":
            cv.fill(p.poly, _em("concrete"), 0.04)
        elif p.kind == "grass":
            cv.fill(p.poly, 0.6 * _em("leaf") + 0.4 * _em("soil"), 0.15)
        elif p.kind == "soil":
            cv.fill(p.poly, _em("soil"), 0.08)
        elif p.kind == "tree":
            cv.fill(p.poly, 0.7 * _em("leaf") + 0.3 * _em("soil"), 0.15)
        else:
            cv.fill(p.poly, _em(str(rng.choice(["soil", "soil_dark"]))), 0.08)
    area = 0.0
    order = rng.permutation(len(plan))
    for i in order.tolist():
        p = plan[i]
        if area >= target:
            break
        if p.kind == "bed":
            inner = p.poly.buffer(-0.2)
            if inner.is_empty:
                continue
            if rng.uniform() < 0.5 and inner.area < 40:
                plot, kind = inner, "garden"
            else:
                x0, y0, x1, y1 = inner.bounds
                w = rng.uniform(0.4, 1.0)
                if x1 - x0 > y1 - y0:
                    yc = rng.uniform(y0, max(y0, y1 - w))
                    plot = box(x0, yc, x1, yc + w).intersection(inner)
                else:
                    xc = rng.uniform(x0, max(x0, x1 - w))
                    plot = box(xc, y0, xc + w, y1).intersection(inner)
                kind = "strip"
            if plot.is_empty or plot.area < 0.05:
                continue
            p.crop = p.crop or "lettuce"
            truth.append((plot, kind))
            area += plot.area
        elif p.kind == "concrete":
            # pots on concrete
            inner = p.poly.buffer(-0.5)
            if inner.is_empty:          # its bounds are NaN (it was an OverflowError)
                continue
            x0, y0, x1, y1 = inner.bounds
            if x1 <= x0 or y1 <= y0:
                continue
            for _ in range(int(rng.integers(1, 5))):
                c = Point(rng.uniform(x0, x1), rng.uniform(y0, y1)).buffer(rng.uniform(0.15, 0.3))
                pots.add(len(truth))
                truth.append((c, "garden"))
                area += c.area
    if not truth and target > 0:
        # a small flight with no bed or concrete to hide a plot in had none at all: one pot
        # on the largest parcel (the docs promise a plot whenever prevalence > 0)
        spot = max(plan, key=lambda q: q.poly.area).poly.representative_point()
        pots.add(0)
        truth.append((spot.buffer(0.25), "garden"))
        area += truth[0][0].area
    if area < 0.9 * target:
        log.warning("the flight holds %.2f%% poppy, short of the %.2f%% asked: no more room "
                    "for plots at this size", 100 * area / (ext * ext), 100 * prevalence)
    poppy_polys = shapely.union_all([t[0] for t in truth]) if truth else Polygon()
    # plants in beds (around the poppy plots), then poppy plots, then pots and trees
    for p in plan:
        if p.kind == "bed":
            rest = p.poly.buffer(-0.15).difference(poppy_polys)
            if not rest.is_empty:
                _plants(cv, rest, p.crop, rng, is_poppy=False)
    for k, (plot, _kind) in enumerate(truth):
        colour = _em(("petal_white", "petal_pink", "petal_red", "petal_purple")[
            int(rng.choice(4, p=[0.4, 0.25, 0.2, 0.15]))])
        if k in pots:
            c = plot.centroid
            r = math.sqrt(plot.area / math.pi)
            cv.disc(c.x, c.y, r, _em("terracotta"), height=0.4)
            cv.disc(c.x, c.y, r * 0.85, _em("soil_dark"))
            cv.disc(c.x, c.y, r * 0.6, 0.9 * _em("leaf_glaucous"), poppy=1.0)
            for _ in range(int(rng.integers(1, 4))):
                cv.disc(c.x + rng.normal(0, r / 4), c.y + rng.normal(0, r / 4),
                        rng.uniform(0.025, 0.05), colour, poppy=1.0)
        else:
            _plants(cv, plot, "poppy", rng, is_poppy=True, colour=colour)
    for p in plan:
        if p.kind == "tree":
            c = p.poly.centroid
            r = min(3.0, math.sqrt(p.poly.area) / 2)
            cv.disc(c.x, c.y, r, _em("forest") * 0.9, height=rng.uniform(4, 8))
            # clumps of foliage, brighter on the side facing the sun
            sx, sy = math.sin(math.radians(az)), -math.cos(math.radians(az))
            for _ in range(int(10 + 8 * r)):
                dx, dy = rng.normal(0, r / 2.5), rng.normal(0, r / 2.5)
                lit = 1.0 + 0.35 * (dx * sx + dy * sy) / r
                cv.disc(c.x + dx, c.y + dy, r * rng.uniform(0.12, 0.3),
                        _em("forest") * lit * rng.uniform(0.8, 1.2), soft=0.8)
    # cast shadows from heights: a pixel is shaded when the terrain towards the sun is higher
    # than the sun ray over it
    shade = np.zeros((n, n), bool)
    hmax = float(cv.height.max())
    if hmax > 0:
        t = math.tan(math.radians(zen))
        a = math.radians(az)
        step_r, step_c = -math.cos(a), math.sin(a)  # towards the sun, rows go south
        dmax = int(hmax * t / PIXEL) + 1
        for d in range(1, dmax + 1, max(1, dmax // 40)):
            shifted = ndimage.shift(cv.height, (-step_r * d, -step_c * d), order=0, cval=0.0)
            shade |= shifted > cv.height + d * PIXEL / max(t, 1e-3)
    img = cv.img
    img[:, shade] *= 0.28
    img *= rng.normal(1.0, 0.03) * rng.normal(1.0, 0.02, size=(len(_P4M_COL), 1, 1)).astype(np.float32)
    img += rng.normal(0, 0.006, img.shape).astype(np.float32)
    if rgb:
        data = img[[2, 1, 0]]
        names, sensor = list(RGB_BANDS), "rgb"
    else:
        data = img
        names, sensor = list(P4M_BANDS), "p4m"
    data = np.clip(data, 0.0, 1.5).astype(np.float32)
    path = out / f"drone_{day:%Y%m%d}.tif"
    write_multiband(path, data, names, transform, crs, acquisition_date=day.isoformat(),
                    nodata=float("nan"), tags={"SENSOR": sensor, "SUN_ZENITH": f"{zen:.3f}",
                                               "SUN_AZIMUTH": f"{az:.3f}",
                                               "SIMULATED": "poppyscan.simulate_drone"})
    tilt = rng.uniform(0, 0.3)  # m across the scene: flat-ish ground
    dem = np.broadcast_to(30.0 + tilt * np.linspace(0, 1, n, dtype=np.float32)[None, :],
                          (n, n)).astype(np.float32)
    dem_path = write_multiband(out / "dem.tif", dem[None], ["elevation"], transform, crs,
                               acquisition_date=day.isoformat(), nodata=None,
                               tags={"UNITS": "metre"})
    feats = []
    for pid, (poly, kind) in enumerate(truth):
        feats.append(_feature(_to_wgs84(poly, transform, crs), {
            "plot_id": pid, "kind": kind, "area_m2": round(poly.area, 4),
            "pixels": round(poly.area / PIXEL ** 2, 1)}))
    truth_path = _write_geojson(out / "truth.geojson", feats)
    labels = []
    for p in plan:
        cls = _LABEL.get(p.crop or p.kind, p.crop or p.kind)
        g = p.poly.buffer(-0.1)
        if g.is_empty or g.intersects(poppy_polys.buffer(0.3)) or rng.uniform() < 0.3:
            continue
        labels.append(_feature(_to_wgs84(g, transform, crs), {"class": cls}))
    for pid, (poly, _kind) in enumerate(truth):
        if rng.uniform() < 0.5:
            labels.append(_feature(_to_wgs84(poly, transform, crs),
                                   {"class": "poppy", "plot_id": pid}))
    labels_path = _write_geojson(out / "labels.geojson", labels)
    log.info("drone scene %d px, %d poppy plots", n, len(truth))
    return SimResult(images=[path], dem=dem_path, labels=labels_path, truth=truth_path,
                     sensor="drone-rgb" if rgb else "drone", dates=[day.isoformat()],
                     size=size, seed=seed)
