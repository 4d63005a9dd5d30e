"""Seeded scene simulator: hilly Zhejiang countryside with hidden poppy plots and confusers.

One call writes a whole survey into a folder in the input contract (``pipeline/geotiff.py``):
one multi-band GeoTIFF per date, ``dem.tif``, ``labels.geojson`` (what an analyst would
digitise) and ``truth.geojson`` (every poppy plot). See ``docs/simulator.md`` for the model,
the spectra and their sources. Results on simulated scenes are not evidence about real fields.

How a Sentinel-2 scene is built:

1. Layout at 10 m: a fractal DEM with flat valley floors, forest on high and steep ground,
   Voronoi farm blocks cut into strip fields, villages (houses, courtyards, gardens, trees),
   ponds, an ornamental "flower sea", and poppy plots (garden, ravine, strip, field).
2. Rasterisation at ``SUPERSAMPLE`` x finer pixels, strip by strip; each 10 m pixel keeps the
   three units (fields, objects, forest cells) covering most of it with their area weights, so
   spectra mix at sub-pixel edges.
3. Per date: every unit gets a spectrum from its class phenology (linear mixture of leaf,
   petal, dry-plant and soil endmembers), pixels mix the spectra of their units, then
   texture, terrain illumination (cos i, not corrected), haze and calibration jitter, clouds
   with displaced shadows, thin cirrus, the MTF blur, noise, 20 m / 60 m aggregation, a no-data
   swath edge, an SCL layer with Sen2Cor's typical mistakes, and uint16 quantisation with the
   processing-baseline offset.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import scipy.fft
import shapely
from affine import Affine
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import Polygon, mapping, shape
from shapely.geometry.polygon import orient

from pipeline.errors import InputError
from pipeline.geotiff import write_multiband

log = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "ENDMEMBERS",
    "S2_FILE_BANDS",
    "SimResult",
    "poppy_fraction",
    "quicklook",
    "simulate",
]

#: Band order of the simulated Sentinel-2 files (12 reflective bands, then SCL).
S2_FILE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)
WAVELENGTH_NM: tuple[int, ...] = (443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190)
_RES = (60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 20, 20)
SUPERSAMPLE = 4
SENSORS = ("sentinel2", "drone", "drone-rgb")

# --------------------------------------------------------------------------------------------
# Endmember spectra at the S2 band centres (reflectance). Sources in docs/simulator.md.
# --------------------------------------------------------------------------------------------
ENDMEMBERS: dict[str, tuple[float, ...]] = {
    #            443    490    560    665    705    740    783    842    865    945   1610   2190
    "soil":     (0.060, 0.075, 0.105, 0.150, 0.170, 0.185, 0.195, 0.210, 0.220, 0.225, 0.300, 0.260),
    "soil_dark": (0.040, 0.050, 0.070, 0.095, 0.110, 0.120, 0.128, 0.138, 0.143, 0.147, 0.200, 0.165),
    "soil_red": (0.055, 0.065, 0.100, 0.185, 0.215, 0.230, 0.240, 0.255, 0.262, 0.265, 0.330, 0.285),
    "leaf":     (0.025, 0.035, 0.080, 0.040, 0.110, 0.290, 0.390, 0.430, 0.445, 0.435, 0.220, 0.105),
    # glaucous (waxy blue-grey) leaves of poppy and garlic: Jia et al. 2011 pre-flowering canopy
    "leaf_glaucous": (0.045, 0.060, 0.090, 0.040, 0.115, 0.300, 0.410, 0.460, 0.470, 0.460, 0.240, 0.115),
    "dry":      (0.070, 0.090, 0.140, 0.185, 0.225, 0.260, 0.280, 0.300, 0.310, 0.310, 0.400, 0.310),
    "petal_white": (0.420, 0.540, 0.620, 0.630, 0.630, 0.620, 0.600, 0.580, 0.570, 0.550, 0.350, 0.200),
    "petal_pink": (0.300, 0.420, 0.330, 0.560, 0.600, 0.600, 0.590, 0.570, 0.560, 0.540, 0.340, 0.190),
    "petal_red": (0.050, 0.050, 0.060, 0.450, 0.560, 0.580, 0.580, 0.570, 0.560, 0.540, 0.340, 0.190),
    "petal_purple": (0.280, 0.340, 0.170, 0.300, 0.500, 0.560, 0.570, 0.560, 0.550, 0.530, 0.330, 0.190),
    "petal_yellow": (0.050, 0.070, 0.450, 0.500, 0.540, 0.560, 0.560, 0.550, 0.545, 0.530, 0.330, 0.190),
    "water":    (0.075, 0.070, 0.072, 0.050, 0.040, 0.030, 0.025, 0.020, 0.019, 0.015, 0.010, 0.006),
    "concrete": (0.160, 0.175, 0.195, 0.210, 0.218, 0.225, 0.232, 0.240, 0.242, 0.245, 0.270, 0.250),
    "asphalt":  (0.070, 0.075, 0.085, 0.095, 0.100, 0.105, 0.110, 0.115, 0.118, 0.120, 0.140, 0.130),
    "roof_red": (0.070, 0.080, 0.100, 0.220, 0.280, 0.300, 0.310, 0.320, 0.320, 0.320, 0.380, 0.350),
    "roof_grey": (0.080, 0.090, 0.100, 0.110, 0.120, 0.122, 0.126, 0.130, 0.131, 0.132, 0.150, 0.140),
    "roof_blue": (0.200, 0.250, 0.200, 0.120, 0.120, 0.130, 0.140, 0.160, 0.160, 0.160, 0.180, 0.160),
    "roof_white": (0.330, 0.400, 0.440, 0.460, 0.470, 0.475, 0.480, 0.490, 0.490, 0.490, 0.450, 0.380),
    "rock":     (0.170, 0.190, 0.220, 0.250, 0.260, 0.270, 0.280, 0.290, 0.292, 0.295, 0.330, 0.290),
    "forest":   (0.020, 0.030, 0.060, 0.030, 0.080, 0.220, 0.300, 0.330, 0.340, 0.335, 0.160, 0.070),
}
_EM_NAMES = tuple(ENDMEMBERS)
_EM = np.array([ENDMEMBERS[k] for k in _EM_NAMES], dtype=np.float32)
_E = {name: i for i, name in enumerate(_EM_NAMES)}
_PETALS = ("petal_white", "petal_pink", "petal_red", "petal_purple", "petal_yellow")
_CLOUD = np.array([0.55, 0.56, 0.57, 0.58, 0.58, 0.58, 0.58, 0.58, 0.58, 0.45, 0.42, 0.30],
                  dtype=np.float32)

#: Land-cover classes; label names are these, ``poppy`` is the target.
CLASSES: tuple[str, ...] = (
    "wheat", "rapeseed", "garlic", "broad_bean", "vegetables", "grass", "bare_soil", "forest",
    "village", "water", "ornamental_poppy", "radish", "poppy", "ridge", "road",
    "roof", "courtyard", "garden_tree", "tea", "rock", "milk_vetch", "potato",
)
_C = {name: i for i, name in enumerate(CLASSES)}
#: Field crops drawn for strip fields and their shares.
_FIELD_CROPS = ("wheat", "rapeseed", "garlic", "broad_bean", "vegetables", "grass",
                "bare_soil", "radish", "milk_vetch", "potato")
_FIELD_P = np.array([0.2, 0.18, 0.08, 0.08, 0.17, 0.05, 0.06, 0.04, 0.08, 0.06])
_LABEL_CLASS = {  # simulator class -> label class
    "roof": "village", "courtyard": "village", "garden_tree": "forest", "rock": "bare_soil",
}

# Unit key encoding: type in the top byte, payload below.
_T_FOREST, _T_FIELD, _T_RIDGE, _T_ROAD, _T_OBJ = 1, 2, 3, 4, 5
_SHIFT = np.int64(56)

# Calendar windows (day of year in a leap year are recomputed from ``year``).
_PRE = ((3, 1), (3, 31))
_FLOWER = ((4, 1), (5, 20))
_POST = ((5, 21), (6, 30))


@dataclass(frozen=True)
class SimResult:
    """Paths and facts of one simulated survey."""

    images: list[Path]
    dem: Path
    labels: Path
    truth: Path
    sensor: str
    dates: list[str]
    size: int
    seed: int


# --------------------------------------------------------------------------------------------
# small deterministic helpers
# --------------------------------------------------------------------------------------------
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 in, uint64 out)."""
    z = np.asarray(x).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def _u01(keys: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) per key, stable for a (key, salt) pair."""
    s = _mix(np.uint64(salt & 0xFFFFFFFFFFFF))
    h = _mix(np.asarray(keys).astype(np.uint64) ^ s)
    return ((h >> np.uint64(11)).astype(np.float64) / float(1 << 53)).astype(np.float64)


def _gauss(keys: np.ndarray, salt: int) -> np.ndarray:
    u1 = np.clip(_u01(keys, salt), 1e-12, 1.0)
    u2 = _u01(keys, salt + 7919)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _fractal(rng: np.random.Generator, n: int, beta: float, m: int | None = None,
             fmin: float = 0.0) -> np.ndarray:
    """Zero-mean unit-variance fractal noise (power ~ f^-beta, flat below ``fmin`` cycles/px)."""
    m = n if m is None else m
    white = rng.standard_normal((n, m), dtype=np.float32)
    spec = scipy.fft.rfft2(white)  # complex64 for float32 input
    del white
    fy = np.fft.fftfreq(n).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(m).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    f = np.maximum(f, np.float32(fmin))
    spec *= f ** np.float32(-beta / 2.0)
    del f
    spec[0, 0] = 0
    out = scipy.fft.irfft2(spec, s=(n, m)).astype(np.float32, copy=False)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out


def _sig(t: np.ndarray, t0: float | np.ndarray, w: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(t - t0) / w))


def _bump(t: np.ndarray, t0: float | np.ndarray, s: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - t0) / s) ** 2)


def _sun(d: date, lat: float) -> tuple[float, float]:
    """Sun zenith and azimuth (degrees) at the Sentinel-2 overpass (~10:40 local solar)."""
    doy = d.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    phi = math.radians(lat)
    h = math.radians(-20.0)
    cz = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(h)
    zen = math.degrees(math.acos(cz))
    az = math.degrees(math.atan2(math.sin(h), math.cos(h) * math.sin(phi)
                                 - math.tan(decl) * math.cos(phi))) + 180.0
    return zen, az % 360.0


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
@dataclass
class _Objects:
    """Painted objects: rotated rectangles (shape 0) or ellipses (shape 1), in paint order."""

    cx: list[float]
    cy: list[float]
    a: list[float]      # half length along the angle
    b: list[float]      # half width
    ang: list[float]    # radians, x east / y down
    shp: list[int]
    cls: list[int]
    colour: list[int]
    kind: list[str]     # poppy kind or object role

    @classmethod
    def empty(cls) -> _Objects:
        return cls([], [], [], [], [], [], [], [], [])

    def add(self, cx: float, cy: float, a: float, b: float, ang: float, shp: int, klass: str,
            colour: int = 0, kind: str = "") -> int:
        self.cx.append(cx)
        self.cy.append(cy)
        self.a.append(a)
        self.b.append(b)
        self.ang.append(ang)
        self.shp.append(shp)
        self.cls.append(_C[klass])
        self.colour.append(colour)
        self.kind.append(kind)
        return len(self.cx) - 1

    def polygon(self, i: int) -> Polygon:
        """Object outline in local metres (x east, y down)."""
        c, s = math.cos(self.ang[i]), math.sin(self.ang[i])
        if self.shp[i] == 0:
            pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        else:
            pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * np.pi, 25)[:-1]]
        a, b = self.a[i], self.b[i]
        return Polygon([(self.cx[i] + a * px * c - b * py * s, self.cy[i] + a * px * s + b * py * c)
                        for px, py in pts])


class _Layout:
    """Everything static about a scene: terrain, blocks, objects, rasterised units."""

    BLOCK = 170.0  # m between farm block seeds

    def __init__(self, size: int, seed: int, prevalence: float, pixel: float = 10.0,
                 ss: int = SUPERSAMPLE) -> None:
        self.n = size
        self.seed = seed
        self.pixel = pixel
        self.ss = ss
        self.fs = pixel / ss
        self.rng = np.random.default_rng([seed, 20240401])
        rng = self.rng
        n = size
        ext = n * pixel
        self.ext = ext
        # --- terrain: fractal hills, flat valley floors --------------------------------------
        # band-limited so hills have the same physical size whatever the scene size
        h = _fractal(rng, n, 3.8, fmin=pixel / 3000.0)
        relief = rng.uniform(50.0, 110.0)
        valley = rng.uniform(-0.2, 0.4)
        hill = relief * np.maximum(h - valley, 0.0) ** 1.4
        self.dem = (rng.uniform(15, 60) + hill + 1.5 * _fractal(rng, n, 3.0)).astype(np.float32)
        gy, gx = np.gradient(self.dem, pixel)
        self.slope = np.arctan(np.hypot(gx, gy)).astype(np.float32)  # radians
        # aspect: direction the slope faces, clockwise from north (rows go south)
        self.aspect = np.arctan2(-gx, gy).astype(np.float32) % (2 * np.pi)
        slope_deg = np.degrees(self.slope)
        fscore = np.maximum((hill - rng.uniform(20, 50)) / 8.0, (slope_deg - 13.0) / 2.5)
        self.fscore = ndimage.gaussian_filter(fscore, 1.0).astype(np.float32)
        # forest stands: conifer, evergreen broadleaf, bamboo, deciduous (smooth patches)
        self.ftype = _fractal(rng, n, 3.0, fmin=pixel / 800.0)
        self.agri = self.fscore < -1.0
        # --- farm blocks (jittered grid Voronoi) ----------------------------------------------
        B = self.BLOCK
        self.nb = math.ceil(ext / B) + 2
        nb = self.nb
        jit = rng.uniform(0.08, 0.92, size=(2, nb, nb))
        self.seed_x = ((np.arange(nb)[None, :] - 1 + jit[0]) * B).astype(np.float64)  # (nb, nb)
        self.seed_y = ((np.arange(nb)[:, None] - 1 + jit[1]) * B).astype(np.float64)
        nblk = nb * nb
        base_ang = rng.uniform(0, np.pi)
        self.b_ang = (base_ang + rng.normal(0, 0.35, nblk)).astype(np.float64)
        self.b_w = rng.uniform(8.0, 28.0, nblk)
        self.b_len = rng.uniform(40.0, 160.0, nblk)
        self.b_crop = rng.choice(len(_FIELD_CROPS), size=nblk, p=_FIELD_P)
        self._b_cos = np.cos(self.b_ang).astype(np.float32)
        self._b_sin = np.sin(self.b_ang).astype(np.float32)
        self._b_w32 = self.b_w.astype(np.float32)
        self._b_len32 = self.b_len.astype(np.float32)
        # --- objects --------------------------------------------------------------------------
        self.obj = _Objects.empty()
        self.occ = np.zeros((n, n), dtype=bool)  # 10 m occupancy by villages/ponds/plots
        self.lots: list[tuple[float, float, float, float]] = []  # garden spots (x, y, ang, r)
        self.garden_xyr: list[tuple[float, float, float]] = []  # garden plots (x, y, half axis)
        self._ponds()
        self._villages()
        self._flower_sea()
        self._clearings()
        self.plot_ids: list[int] = []
        self._poppy(prevalence)

    # ---- helpers ------------------------------------------------------------------------------
    def _random_cell(self, ok: np.ndarray, free: bool = False) -> tuple[float, float] | None:
        """A random point in a cell of ``ok`` (a mask or its flat indices); None when there is
        no such cell, or when ``free`` and the drawn cell is occupied."""
        idx = np.flatnonzero(ok) if ok.dtype == bool else ok
        if idx.size == 0:
            return None
        k = int(idx[self.rng.integers(idx.size)])
        if free and self.occ.flat[k]:
            return None
        r, c = divmod(k, self.n)
        return ((c + self.rng.uniform()) * self.pixel, (r + self.rng.uniform()) * self.pixel)

    def _mark(self, x: float, y: float, radius: float) -> None:
        p = self.pixel
        r0, r1 = int(max(0, (y - radius) // p)), int(min(self.n, (y + radius) // p + 1))
        c0, c1 = int(max(0, (x - radius) // p)), int(min(self.n, (x + radius) // p + 1))
        self.occ[r0:r1, c0:c1] = True

    def _free(self, x: float, y: float, radius: float) -> bool:
        p = self.pixel
        r0, r1 = int(max(0, (y - radius) // p)), int(min(self.n, (y + radius) // p + 1))
        c0, c1 = int(max(0, (x - radius) // p)), int(min(self.n, (x + radius) // p + 1))
        if r0 >= r1 or c0 >= c1:
            return False
        return not bool(self.occ[r0:r1, c0:c1].any())

    def block_at(self, x: float, y: float) -> int:
        B = self.BLOCK
        gx, gy = int(x // B) + 1, int(y // B) + 1
        best, bid = 1e18, 0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = gy + dy, gx + dx
                if 0 <= yy < self.nb and 0 <= xx < self.nb:
                    d = (self.seed_x[yy, xx] - x) ** 2 + (self.seed_y[yy, xx] - y) ** 2
                    if d < best:
                        best, bid = d, yy * self.nb + xx
        return bid

    # ---- ponds, villages, flower sea ------------------------------------------------------------
    def _ponds(self) -> None:
        rng = self.rng
        area_ha = (self.ext / 100.0) ** 2
        flat = np.flatnonzero(self.agri & (np.degrees(self.slope) < 3.0))
        for _ in range(int(rng.poisson(area_ha / 120.0))):
            pt = self._random_cell(flat)
            if pt is None:
                return
            a, b = rng.uniform(12, 45), rng.uniform(8, 30)
            if not self._free(*pt, max(a, b) + 5):
                continue
            self.obj.add(pt[0], pt[1], a, b, rng.uniform(0, np.pi), int(rng.integers(2)), "water")
            self._mark(*pt, max(a, b))

    def _villages(self) -> None:
        rng = self.rng
        area_ha = (self.ext / 100.0) ** 2
        flat_m = self.agri & (np.degrees(self.slope) < 6.0)
        # villages sit at the foot of hills: prefer flat cells close to forest
        near = np.flatnonzero(ndimage.binary_dilation(~self.agri, iterations=8) & flat_m)
        flat = np.flatnonzero(flat_m)
        n_vil = max(1, int(rng.poisson(area_ha / 110.0)))
        roofs = ("roof_red", "roof_grey", "roof_blue", "roof_white")
        for _ in range(n_vil):
            pt = self._random_cell(near if near.size and rng.uniform() < 0.7 else flat)
            if pt is None:
                return
            vx, vy = pt
            ang = rng.uniform(0, np.pi / 2)
            ca, sa = math.cos(ang), math.sin(ang)
            radius = rng.uniform(50, 160)
            lot = rng.uniform(16, 24)
            k = int(radius // lot)
            for i in range(-k, k + 1):
                for j in range(-k, k + 1):
                    if i * i + j * j > k * k or rng.uniform() > 0.85:
                        continue
                    lx, ly = i * lot + rng.normal(0, 1), j * lot + rng.normal(0, 1)
                    x, y = vx + lx * ca - ly * sa, vy + lx * sa + ly * ca
                    if not (0 < x < self.ext and 0 < y < self.ext):
                        continue
                    r, c = int(y // self.pixel), int(x // self.pixel)
                    if not self.agri[r, c] or self.occ[r, c]:
                        continue
                    half = lot / 2 - 0.8
                    self.obj.add(x, y, half, half, ang, 0, "courtyard", kind="lot")
                    # house in the north half of the lot
                    hw, hd = rng.uniform(4.5, 7.0), rng.uniform(3.5, 5.0)
                    off = half - hd - rng.uniform(0, 1.5)
                    hx, hy = x + off * sa, y - off * ca
                    roof = int(rng.choice(4, p=[0.3, 0.35, 0.2, 0.15]))
                    self.obj.add(hx, hy, hw, hd, ang, 0, "roof", colour=roof, kind=roofs[roof])
                    # garden in the south part
                    if rng.uniform() < 0.55:
                        gw, gd = rng.uniform(2.0, half * 0.8), rng.uniform(1.5, half * 0.45)
                        gx_, gy_ = x - (half - gd - 0.5) * (-sa), y + (half - gd - 0.5) * ca
                        gcls = str(rng.choice(["vegetables", "radish", "broad_bean", "garlic",
                                               "grass", "vegetables"]))
                        self.obj.add(gx_, gy_, gw, gd, ang, 0, gcls,
                                     colour=int(rng.choice([0, 1, 3])), kind="garden")
                        self.lots.append((gx_, gy_, ang, min(gw, gd)))
                    else:
                        self.lots.append((x - (half / 2) * (-sa), y + (half / 2) * ca, ang,
                                          half / 2))
                    if rng.uniform() < 0.3:
                        tr = rng.uniform(1.5, 3.5)
                        tx = x + rng.uniform(-half, half) * 0.7
                        ty = y + rng.uniform(-half, half) * 0.7
                        self.obj.add(tx, ty, tr, tr * rng.uniform(0.8, 1.0), 0.0, 1, "garden_tree")
                    self._mark(x, y, lot / 2)
            # a small village park with ornamental poppies now and then
            if rng.uniform() < 0.35:
                px, py = vx + rng.normal(0, radius / 2), vy + rng.normal(0, radius / 2)
                if 0 < px < self.ext and 0 < py < self.ext:
                    a, b = rng.uniform(5, 15), rng.uniform(3, 8)
                    self.obj.add(px, py, a, b, rng.uniform(0, np.pi), 1, "ornamental_poppy",
                                 colour=int(rng.choice([0, 1, 2, 2])), kind="park")
                    self._mark(px, py, a + 3)

    def _flower_sea(self) -> None:
        rng = self.rng
        area_ha = (self.ext / 100.0) ** 2
        n_sea = int(rng.poisson(area_ha / 700.0))
        if self.n >= 128:
            n_sea = max(n_sea, 1)
        agri = np.flatnonzero(self.agri)
        for _ in range(n_sea):
            pt = self._random_cell(agri)
            if pt is None:
                return
            ang = float(self.b_ang[self.block_at(*pt)])
            ca, sa = math.cos(ang), math.sin(ang)
            nbeds = int(rng.integers(2, 7))
            bw, bl = rng.uniform(8, 20), rng.uniform(30, 80)
            for k in range(nbeds):
                off = (k - nbeds / 2) * (bw + 1.5)
                x, y = pt[0] + off * ca, pt[1] + off * sa
                if not (0 < x < self.ext and 0 < y < self.ext):
                    continue
                self.obj.add(x, y, bw / 2, bl / 2, ang, 0, "ornamental_poppy",
                             colour=int(rng.choice([0, 1, 2, 2, 3])), kind="flower_sea")
                self._mark(x, y, bl / 2)

    def _clearings(self) -> None:
        """Hillside plots, tea rows, bare patches and graves in the forest: the company that
        ravine plots keep (a bright clearing in a dark forest is otherwise a give-away)."""
        rng = self.rng
        forest = np.flatnonzero((~self.agri) & (self.fscore < 4.0))
        n_cells = int(forest.size)
        if n_cells == 0:
            return
        crops = ("vegetables", "bare_soil", "grass", "tea", "radish", "broad_bean", "garlic",
                 "rapeseed", "wheat", "grave", "rock")
        cp = np.array([0.15, 0.13, 0.1, 0.1, 0.05, 0.09, 0.09, 0.09, 0.08, 0.06, 0.06])
        for _ in range(int(rng.poisson(n_cells / 25.0))):
            pt = self._random_cell(forest)
            if pt is None:
                return
            cls = crops[int(rng.choice(len(crops), p=cp))]
            if cls == "rock":  # outcrops, landslide scars, small quarries
                a = float(np.exp(rng.uniform(np.log(2.0), np.log(15.0))))
                self.obj.add(pt[0], pt[1], a, a * rng.uniform(0.3, 0.9), rng.uniform(0, np.pi),
                             1, "rock", kind="clearing")
                continue
            if cls == "grave":
                a = rng.uniform(1.0, 3.0)
                self.obj.add(pt[0], pt[1], a, a * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi),
                             0, "courtyard", kind="grave")
                continue
            a = float(np.exp(rng.uniform(np.log(3.0), np.log(18.0))))
            self.obj.add(pt[0], pt[1], a, a * rng.uniform(0.3, 0.9), rng.uniform(0, np.pi),
                         int(rng.integers(2)), cls, colour=int(rng.choice([0, 1, 3])),
                         kind="clearing")

    # ---- poppy plots --------------------------------------------------------------------------
    def _poppy(self, prevalence: float) -> None:
        rng = self.rng
        target = prevalence * self.ext * self.ext
        area = 0.0
        kinds = ("garden", "ravine", "strip", "field")
        kp = np.array([0.33, 0.2, 0.27, 0.2])
        self._ravine_ok = np.flatnonzero((~self.agri) & (self.fscore < 2.5)
                                         & (np.degrees(self.slope) < 28))
        if not self._ravine_ok.size:
            self._ravine_ok = np.flatnonzero(~self.agri)
        self._agri_idx = np.flatnonzero(self.agri)
        failures = 0
        while area < target and failures < 200:
            kind = kinds[int(rng.choice(4, p=kp))]
            colour = int(rng.choice(4, p=[0.4, 0.25, 0.2, 0.15]))
            for _ in range(40):
                placed = self._place(kind)
                if placed is not None:
                    break
            else:
                failures += 1
                continue
            x, y, a, b, ang, shp = placed
            est = (math.pi if shp else 4.0) * a * b
            remaining = target - area
            if est > 1.2 * remaining:  # the last plot fills the remaining area, no more
                f = math.sqrt(max(remaining, 2.0) / est)
                a, b = a * f, b * f
            i = self.obj.add(x, y, a, b, ang, shp, "poppy", colour=colour, kind=kind)
            self.plot_ids.append(i)
            if kind == "garden":
                self.garden_xyr.append((x, y, max(a, b)))
            self._mark(x, y, max(a, b) + 5)
            area += self.obj.polygon(i).area
        self.poppy_area = area

    def _place(self, kind: str) -> tuple[float, float, float, float, float, int] | None:
        """One candidate plot of ``kind`` (centre, half axes, angle, shape) or None."""
        rng = self.rng
        if kind == "garden":
            if not self.lots:
                return None
            gx, gy, ang, r = self.lots[int(rng.integers(len(self.lots)))]
            a = float(np.exp(rng.uniform(np.log(0.8), np.log(max(1.0, r * 1.2)))))
            b = a * rng.uniform(0.5, 1.0)
            x, y = gx + rng.normal(0, 0.5), gy + rng.normal(0, 0.5)
            if a * b * 4 > 120 or self.used_lot(x, y, max(a, b)):
                return None
            return float(x), float(y), a, float(b), float(ang), 0
        if kind == "ravine":
            pt = self._random_cell(self._ravine_ok)
            if pt is None:
                return None
            x, y = pt
            a = float(np.exp(rng.uniform(np.log(3.0), np.log(14.0))))
            b = a * rng.uniform(0.35, 0.9)
            if not self._free(x, y, a + 10):
                return None
            ang = float(rng.uniform(0, np.pi))
            if rng.uniform() < 0.5:  # hidden inside a larger hillside plot
                cls = str(rng.choice(["vegetables", "grass", "tea", "broad_bean", "bare_soil",
                                      "rapeseed", "wheat", "garlic"]))
                k = rng.uniform(1.6, 3.0)
                self.obj.add(x + rng.normal(0, a / 2), y + rng.normal(0, a / 2), a * k,
                             b * k, ang, 1, cls, colour=0, kind="clearing")
            return x, y, a, float(b), ang, 1
        pt = self._random_cell(self._agri_idx, free=True)
        if pt is None:
            return None
        x, y = pt
        ang = float(self.b_ang[self.block_at(x, y)]) + np.pi / 2  # long axis along the strips
        if kind == "strip":
            b, a = rng.uniform(1.0, 2.5), rng.uniform(6.0, 25.0)
        else:
            b, a = rng.uniform(6.0, 16.0), rng.uniform(8.0, 22.0)
        if not self._free(x, y, max(a, b) + 10):
            return None
        return x, y, float(a), float(b), ang, 0

    def used_lot(self, x: float, y: float, r: float) -> bool:
        """True when a plot of half axis ``r`` at (x, y) would touch a garden plot already
        placed (1 m apart at least). It was a 4 m test against the last 200 plots only: past
        200 plots gardens were reused, and truth held plots inside other plots (one patch of
        ground counted twice by recall)."""
        if not self.garden_xyr:
            return False
        g = np.asarray(self.garden_xyr)
        return bool((np.hypot(g[:, 0] - x, g[:, 1] - y) < g[:, 2] + r + 1.0).any())

    # ---- rasterisation -------------------------------------------------------------------------
    def _upsample(self, coarse: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Bilinear upsampling of a 10 m array to the fine pixels of rows r0..r1 (separable)."""
        ss, n = self.ss, self.n
        pos = (np.arange(ss * n, dtype=np.float32) + 0.5) / ss - 0.5
        lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
        hi = np.clip(lo + 1, 0, n - 1)
        wt = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
        rows = slice(r0 * ss, r1 * ss)
        cr = (coarse[lo[rows]] * (1 - wt[rows])[:, None] + coarse[hi[rows]] * wt[rows][:, None])
        return cr[:, lo] * (1 - wt)[None, :] + cr[:, hi] * wt[None, :]

    def fine_keys(self, r0: int, r1: int) -> np.ndarray:
        """Unit keys (int64) of the fine pixels of 10 m rows r0..r1, shape ((r1-r0)*ss, n*ss)."""
        ss, fs, B, nb = self.ss, self.fs, self.BLOCK, self.nb
        nf = self.n * ss
        rows = np.arange(r0 * ss, r1 * ss)
        y1 = ((rows + 0.5) * fs).astype(np.float32)
        x1 = ((np.arange(nf) + 0.5) * fs).astype(np.float32)
        y = np.broadcast_to(y1[:, None], (rows.size, nf))
        x = np.broadcast_to(x1[None, :], (rows.size, nf))
        # Voronoi blocks: the three seeds nearest to each 10 m pixel centre (out of the 3 x 3
        # neighbour cells) are the only candidates for its fine pixels
        sxs = self.seed_x.astype(np.float32).ravel()
        sys_ = self.seed_y.astype(np.float32).ravel()
        cyc = ((np.arange(r0, r1) + 0.5) * self.pixel).astype(np.float32)[:, None]
        cxc = ((np.arange(self.n) + 0.5) * self.pixel).astype(np.float32)[None, :]
        gxc = np.floor(cxc / B).astype(np.int32) + 1
        gyc = np.floor(cyc / B).astype(np.int32) + 1
        cand = np.empty((9, r1 - r0, self.n), np.int32)
        dist = np.empty((9, r1 - r0, self.n), np.float32)
        m = 0
        for dy in (-1, 0, 1):
            yy = np.clip(gyc + dy, 0, nb - 1)
            for dx in (-1, 0, 1):
                k = yy * nb + np.clip(gxc + dx, 0, nb - 1)
                cand[m] = k
                dist[m] = (sxs[k] - cxc) ** 2 + (sys_[k] - cyc) ** 2
                m += 1
        top = np.argsort(dist, axis=0)[:3]
        cand = np.take_along_axis(cand, top, axis=0)
        cand = np.repeat(np.repeat(cand, ss, axis=1), ss, axis=2)  # (3, fine rows, fine cols)
        da, db, dc = ((sxs[cand[i]] - x) ** 2 + (sys_[cand[i]] - y) ** 2 for i in range(3))
        ab = da <= db
        bid = np.where(ab, cand[0], cand[1])
        bid2 = np.where(ab, cand[1], cand[0])
        d1 = np.minimum(da, db)
        d2 = np.maximum(da, db)
        c_first = dc < d1
        c_second = ~c_first & (dc < d2)
        bid2 = np.where(c_first, bid, np.where(c_second, cand[2], bid2))
        d2 = np.where(c_first, d1, np.where(c_second, dc, d2))
        bid = np.where(c_first, cand[2], bid).astype(np.int64)
        d1 = np.minimum(d1, dc)
        bid2 = bid2.astype(np.int64)
        d2 = np.where(bid2 == bid, np.inf, d2)  # the same seed twice near the scene edge
        sx = sxs[bid]
        sy = sys_[bid]
        c = self._b_cos[bid]
        s = self._b_sin[bid]
        u = (x - sx) * c + (y - sy) * s
        v = (y - sy) * c - (x - sx) * s
        w, ln = self._b_w32[bid], self._b_len32[bid]
        i = np.floor(u / w).astype(np.int64)
        # cheap float hash of (block, strip) for the stagger of field ends along a strip
        h = np.sin(bid.astype(np.float32) * np.float32(12.9898) + i.astype(np.float32)
                   * np.float32(78.233) + np.float32(self.seed % 1000)) * np.float32(43758.547)
        joff = (h - np.floor(h)) * ln
        vj = v + joff
        j = np.floor(vj / ln).astype(np.int64)
        uu, vv = u - i * w, vj - j * ln
        ridge = (uu < fs / 2) | (vv < fs / 2)
        # roads on some block edges (a hash of the pair), farm tracks elsewhere are ridges
        edge = (np.sqrt(d2) - np.sqrt(d1)) < 4.0
        pair = (np.minimum(bid, bid2) * 7919 + np.maximum(bid, bid2)).astype(np.float32)
        hp = np.sin(pair * np.float32(0.7548) + np.float32(self.seed % 997)) * np.float32(43758.547)
        road = edge & ((hp - np.floor(hp)) < 0.35)
        ridge |= edge
        keys = ((np.int64(_T_FIELD) << _SHIFT) | (bid << np.int64(24))
                | (((i + 2048) & 0xFFF) << np.int64(12)) | ((j + 2048) & 0xFFF))
        keys[ridge] = (np.int64(_T_RIDGE) << _SHIFT) | bid[ridge]
        keys[road] = np.int64(_T_ROAD) << _SHIFT
        fsc = self._upsample(self.fscore, r0, r1)
        forest = fsc > 0.0
        if forest.any():
            ft = self._upsample(self.ftype, r0, r1)[forest]
            stand = np.digitize(ft, [-0.6, 0.5, 1.1]).astype(np.int64)
            cell = ((np.floor(y[forest] / 100.0).astype(np.int64) * 10000)
                    + np.floor(x[forest] / 100.0).astype(np.int64))
            keys[forest] = (np.int64(_T_FOREST) << _SHIFT) | (stand << np.int64(40)) | cell
        # objects in paint order
        ob = self.obj
        if not hasattr(self, "_obj_y0"):
            rad = np.hypot(np.array(ob.a), np.array(ob.b))
            cy = np.array(ob.cy)
            self._obj_y0 = cy - rad
            self._obj_y1 = cy + rad
        y_lo, y_hi = r0 * self.pixel, r1 * self.pixel
        sel = np.flatnonzero((self._obj_y1 >= y_lo) & (self._obj_y0 <= y_hi))
        for k in sel.tolist():
            rad = math.hypot(ob.a[k], ob.b[k])
            fr0 = max(0, int((ob.cy[k] - rad) / fs) - r0 * ss)
            fr1 = min(rows.size, int((ob.cy[k] + rad) / fs) + 2 - r0 * ss)
            fc0 = max(0, int((ob.cx[k] - rad) / fs))
            fc1 = min(nf, int((ob.cx[k] + rad) / fs) + 2)
            if fr0 >= fr1 or fc0 >= fc1:
                continue
            yy = (y1[fr0:fr1].astype(np.float64) - ob.cy[k])[:, None]
            xx = (x1[fc0:fc1].astype(np.float64) - ob.cx[k])[None, :]
            ca, sa = math.cos(ob.ang[k]), math.sin(ob.ang[k])
            pu = (xx * ca + yy * sa) / ob.a[k]
            pv = (-xx * sa + yy * ca) / ob.b[k]
            inside = (pu * pu + pv * pv <= 1.0) if ob.shp[k] else ((np.abs(pu) <= 1) & (np.abs(pv) <= 1))
            keys[fr0:fr1, fc0:fc1][inside] = (np.int64(_T_OBJ) << _SHIFT) | k
        return keys


def _top3(keys: np.ndarray, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """Three most frequent keys per ss x ss block and their counts."""
    fr, fc = keys.shape
    r, c = fr // ss, fc // ss
    blk = keys.reshape(r, ss, c, ss).transpose(0, 2, 1, 3).reshape(r * c, ss * ss)
    s = np.sort(blk, axis=1)
    n = s.shape[0]
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    run = np.cumsum(new, axis=1) - 1
    cnt = np.bincount((np.arange(n)[:, None] * (ss * ss) + run).ravel(),
                      minlength=n * ss * ss).reshape(n, ss * ss)
    vals = np.zeros_like(s)
    rr, cc = np.nonzero(new)
    vals[rr, run[rr, cc]] = s[rr, cc]
    order = np.argsort(-cnt, axis=1, kind="stable")[:, :3]
    top_k = np.take_along_axis(vals, order, axis=1)
    top_c = np.take_along_axis(cnt, order, axis=1)
    return top_k.reshape(r, c, 3), top_c.reshape(r, c, 3)


class _Units:
    """Rasterised scene: per 10 m pixel three unit ids with weights, and unit attributes."""

    def __init__(self, lay: _Layout, label_prob: float = 0.12) -> None:
        n, ss = lay.n, lay.ss
        self.ids = np.zeros((n, n, 3), dtype=np.int32)
        self.w = np.zeros((n, n, 3), dtype=np.uint8)  # area shares x 255 of the three units
        self.poppy = np.zeros((n, n), dtype=np.float32)
        known = np.zeros(0, dtype=np.int64)
        known_id = np.zeros(0, dtype=np.int64)
        next_id = 0
        counts: dict[int, int] = {}
        is_poppy_obj = np.array([c == _C["poppy"] for c in lay.obj.cls] + [False])
        strip = max(8, min(64, int(4_000_000 // (n * ss * ss * ss))))
        pieces: dict[int, list] = {}
        for r0 in range(0, n, strip):
            r1 = min(n, r0 + strip)
            keys = lay.fine_keys(r0, r1)
            typ = keys >> _SHIFT
            payload = keys & ((np.int64(1) << _SHIFT) - 1)
            objk = np.where(typ == _T_OBJ, payload, len(is_poppy_obj) - 1)
            pf = is_poppy_obj[objk].reshape(r1 - r0, ss, n, ss).mean(axis=(1, 3))
            self.poppy[r0:r1] = pf
            tk, tc = _top3(keys, ss)
            uk, uc = np.unique(keys, return_counts=True)
            pos = np.searchsorted(known, uk)
            seen = (pos < known.size) & (known[np.minimum(pos, known.size - 1)] == uk) \
                if known.size else np.zeros(uk.size, bool)
            new = uk[~seen]
            if new.size:  # merge in O(n): ids in order of discovery, keys kept sorted
                at = pos[~seen]
                known = np.insert(known, at, new)
                known_id = np.insert(known_id, at, np.arange(next_id, next_id + new.size))
                next_id += new.size
            for kk, cc in zip(uk.tolist(), uc.tolist()):
                counts[kk] = counts.get(kk, 0) + cc
            self.ids[r0:r1] = known_id[np.searchsorted(known, tk)]
            self.w[r0:r1] = np.rint(255.0 * tc / np.maximum(tc.sum(axis=2, keepdims=True), 1))
            # polygonise label candidates (fields and forest cells picked by hash)
            ltyp = (typ == _T_FIELD) | (typ == _T_FOREST)
            pick = ltyp & (_u01(keys, lay.seed * 131 + 3) < label_prob)
            if pick.any():
                cid = known_id[np.searchsorted(known, keys)].astype(np.int32)
                tr = Affine(lay.fs, 0, 0, 0, lay.fs, r0 * ss * lay.fs)
                for geom, val in rasterio.features.shapes(cid, mask=pick, transform=tr):
                    pieces.setdefault(int(val), []).append(shape(geom))
        self.keys = np.empty(next_id, dtype=np.int64)
        self.keys[known_id] = known
        self.area_fine = np.array([counts[int(k)] for k in self.keys], dtype=np.int64)
        self.label_pieces = pieces
        self._attributes(lay)

    def _attributes(self, lay: _Layout) -> None:
        keys = self.keys
        n_u = keys.size
        typ = keys >> _SHIFT
        payload = keys & ((np.int64(1) << _SHIFT) - 1)
        cls = np.zeros(n_u, dtype=np.int16)
        colour = np.zeros(n_u, dtype=np.int8)
        kind = np.full(n_u, "", dtype=object)
        salt = lay.seed * 7 + 11
        # fields
        f = typ == _T_FIELD
        bid = payload[f] >> np.int64(24)
        crop_idx = lay.b_crop[bid]
        rnd = np.searchsorted(np.cumsum(_FIELD_P), _u01(keys[f], salt) * 0.999999)
        own = _u01(keys[f], salt + 1) < 0.5
        crop = np.where(own, crop_idx, rnd)
        cls[f] = np.array([_C[_FIELD_CROPS[k]] for k in range(len(_FIELD_CROPS))])[crop]
        colour[f] = np.where(_u01(keys[f], salt + 2) < 0.6, 0, 3)
        cls[typ == _T_RIDGE] = _C["ridge"]
        cls[typ == _T_ROAD] = _C["road"]
        cls[typ == _T_FOREST] = _C["forest"]
        colour[typ == _T_FOREST] = (payload[typ == _T_FOREST] >> np.int64(40)).astype(np.int8)
        o = typ == _T_OBJ
        oi = payload[o]
        cls[o] = np.array(lay.obj.cls, dtype=np.int16)[oi]
        colour[o] = np.array(lay.obj.colour, dtype=np.int8)[oi]
        kind[o] = np.array(lay.obj.kind, dtype=object)[oi]
        self.cls, self.colour, self.kind = cls, colour, kind
        self.typ, self.payload = typ, payload
        # per-unit jitter
        # days: an early or late spring for the whole scene, and each field its own
        self.season = float(np.random.default_rng([lay.seed, 3]).normal(0.0, 6.0))
        self.shift = (self.season + _gauss(keys, salt + 3) * 5.0).astype(np.float32)
        self.cover = np.clip(1.0 + 0.08 * _gauss(keys, salt + 4), 0.7, 1.15).astype(np.float32)
        self.fl_amp = np.clip(1.0 + 0.25 * _gauss(keys, salt + 5), 0.4, 1.6).astype(np.float32)
        self.soil = (np.floor(_u01(keys, salt + 6) * 3)).astype(np.int8)
        self.gain = (1.0 + 0.04 * _gauss(keys, salt + 8)).astype(np.float32)
        self.plant = (60 + _u01(keys, salt + 9) * 90).astype(np.float32)  # vegetables cycle
        self.tex = np.where(cls == _C["forest"], 0.10, 0.04).astype(np.float32)
        self.salt = salt


# --------------------------------------------------------------------------------------------
# phenology: fractions of endmembers per unit at a day of year
# --------------------------------------------------------------------------------------------
def _fractions(u: _Units, doy: int, date_salt: int) -> np.ndarray:
    """(n_units, n_endmembers) mixing fractions at ``doy``."""
    n_u = u.keys.size
    fr = np.zeros((n_u, len(_EM_NAMES)), dtype=np.float32)
    t = (doy - u.shift).astype(np.float32)
    soil_em = np.array([_E["soil"], _E["soil_dark"], _E["soil_red"]])[u.soil]
    petal_em = np.array([_E[p] for p in _PETALS])[u.colour]
    moist = 1.0 + 0.12 * _gauss(u.keys, date_salt)  # per-date soil moisture/brightness

    def veg(idx: np.ndarray, cover: np.ndarray, dry: np.ndarray, flower: np.ndarray,
            leaf: str, petal: np.ndarray | None = None) -> None:
        cover = np.clip(cover * u.cover[idx], 0.0, 0.98)
        flower = np.clip(flower * u.fl_amp[idx], 0.0, 0.6) * (cover > 0.2)
        green = np.clip(cover * (1 - dry) - flower, 0, 1)
        fr[idx, _E[leaf]] += green
        fr[idx, _E["dry"]] += cover * dry
        pe = petal_em[idx] if petal is None else petal
        np.add.at(fr, (idx, pe), flower)
        np.add.at(fr, (idx, soil_em[idx]), np.clip(1 - cover, 0, 1) * moist[idx])

    for name in ("wheat", "rapeseed", "garlic", "broad_bean", "vegetables", "grass", "bare_soil",
                 "radish", "poppy", "ornamental_poppy", "ridge", "tea", "milk_vetch", "potato"):
        idx = np.flatnonzero(u.cls == _C[name])
        if idx.size == 0:
            continue
        tt = t[idx]
        zero = np.zeros_like(tt)
        if name == "wheat":
            harvested = tt > 160
            cover = np.where(harvested, 0.35, 0.55 + 0.38 * _sig(tt, 80, 8))
            dry = np.where(harvested, 1.0, _sig(tt, 150, 4))
            veg(idx, cover, dry, zero, "leaf")
        elif name == "rapeseed":
            harvested = tt > 146
            cover = np.where(harvested, 0.3, 0.82)
            dry = np.where(harvested, 1.0, _sig(tt, 132, 4))
            veg(idx, cover, dry, 0.5 * _bump(tt, 84, 9), "leaf",
                np.full(idx.size, _E["petal_yellow"]))
        elif name == "garlic":
            harvested = tt > 142
            cover = np.where(harvested, 0.05, 0.5 + 0.2 * _sig(tt, 88, 10))
            veg(idx, cover, np.where(harvested, 1.0, _sig(tt, 130, 5)), zero, "leaf_glaucous")
        elif name == "broad_bean":
            harvested = tt > 150
            cover = np.where(harvested, 0.1, 0.62 + 0.2 * _sig(tt, 80, 8))
            veg(idx, cover, np.where(harvested, 1.0, _sig(tt, 140, 5)),
                0.12 * _bump(tt, 90, 11), "leaf")
        elif name == "vegetables":
            tp = u.plant[idx]
            grow = _sig(tt, tp, 6) * (1 - _sig(tt, tp + 45, 3))
            cover = 0.15 + 0.75 * np.maximum(grow, 0.6 * (1 - _sig(tt, tp - 10, 4)))
            veg(idx, cover, 0.05 + zero, zero, "leaf")
        elif name == "grass":
            veg(idx, 0.5 + 0.35 * _sig(tt, 95, 10), 0.12 + zero, zero, "leaf")
        elif name == "bare_soil":
            veg(idx, 0.04 + 0.1 * _sig(tt, 140, 10), 0.3 + zero, zero, "leaf")
        elif name == "milk_vetch":
            # Chinese milk vetch (Astragalus sinicus), green manure in rice fields: pink-purple
            # bloom in April, ploughed in early May and flooded for rice
            ploughed = tt > 125
            cover = np.where(ploughed, 0.0, 0.6 + 0.3 * _sig(tt, 80, 8))
            veg(idx, cover, 0.05 + zero, 0.2 * _bump(tt, 105, 8), "leaf",
                np.where(u.colour[idx] == 0, _E["petal_pink"], _E["petal_purple"]))
            pi = idx[ploughed]
            if pi.size:
                flood = np.clip((tt[ploughed] - 125) / 10, 0, 1) * 0.7
                rice = 0.25 * _sig(tt[ploughed], 160, 5)
                fr[pi] = 0.0
                fr[pi, _E["water"]] = flood * (1 - rice)
                fr[pi, _E["soil_dark"]] = (1 - flood) * (1 - rice)
                fr[pi, _E["leaf"]] = rice
        elif name == "potato":
            cover = 0.3 + 0.55 * _sig(tt, 100, 8)
            veg(idx, cover, _sig(tt, 165, 5), 0.12 * _bump(tt, 130, 8), "leaf")
        elif name == "tea":
            # evergreen shrub rows; spring flush in April, plucking in May thins the canopy
            cover = 0.55 + 0.15 * _bump(tt, 110, 15)
            veg(idx, cover, 0.05 + zero, zero, "leaf")
        elif name == "ridge":
            veg(idx, 0.35 + 0.3 * _sig(tt, 95, 10), 0.2 + zero, zero, "leaf")
        elif name == "radish":
            cover = 0.55 + 0.2 * _sig(tt, 85, 8)
            veg(idx, cover, _sig(tt, 162, 5), 0.22 * _bump(tt, 108, 9), "leaf")
        elif name == "poppy":
            # Jia et al. 2011 canopy: white flowering 560 nm 0.18, 665 nm 0.15, NIR 0.46
            cover = 0.3 + 0.62 * _sig(tt, 92, 6)
            veg(idx, cover, 0.85 * _sig(tt, 140, 2.5), 0.18 * _bump(tt, 116, 6),
                "leaf_glaucous")
        elif name == "ornamental_poppy":
            cover = 0.4 + 0.5 * _sig(tt, 92, 7)
            flower = 0.19 * _sig(tt, 104, 4) * (1 - _sig(tt, 162, 4))
            veg(idx, cover, 0.9 * _sig(tt, 172, 4), flower, "leaf")
    # static classes
    for name, em in (("water", "water"), ("road", "asphalt"), ("courtyard", "concrete")):
        fr[u.cls == _C[name], _E[em]] = 1.0
    forest = np.flatnonzero((u.cls == _C["forest"]) | (u.cls == _C["garden_tree"]))
    stand = np.where(u.cls[forest] == _C["forest"], u.colour[forest], 1)
    tf = t[forest]
    # 0 conifer (Chinese fir, masson pine): dark, constant
    k = stand == 0
    fr[forest[k], _E["forest"]] = 0.8
    fr[forest[k], _E["soil_dark"]] = 0.12
    # 1 evergreen broadleaf: spring flush in April
    k = stand == 1
    fr[forest[k], _E["forest"]] = 0.92 * (1.0 + 0.12 * _sig(tf[k], 100, 6))
    fr[forest[k], _E["soil_dark"]] = 0.08
    # 2 bamboo: bright green, new culms in May
    k = stand == 2
    fr[forest[k], _E["leaf"]] = 0.7 + 0.1 * _sig(tf[k], 130, 8)
    fr[forest[k], _E["forest"]] = 0.2
    fr[forest[k], _E["soil_dark"]] = 0.1
    # 3 deciduous: bare branches and litter in March, leaves out in April
    k = stand == 3
    leaf_out = _sig(tf[k], 97, 6)
    fr[forest[k], _E["forest"]] = 0.2 + 0.7 * leaf_out
    fr[forest[k], _E["dry"]] = 0.5 * (1 - leaf_out)
    fr[forest[k], _E["soil_dark"]] = 0.3 * (1 - leaf_out) + 0.1
    rock = u.cls == _C["rock"]
    fr[rock, _E["rock"]] = 1.0
    roofs = np.flatnonzero(u.cls == _C["roof"])
    roof_em = np.array([_E["roof_red"], _E["roof_grey"], _E["roof_blue"], _E["roof_white"]])
    fr[roofs, roof_em[u.colour[roofs]]] = 1.0
    fr *= u.gain[:, None]
    return fr


# --------------------------------------------------------------------------------------------
# dates, geometry, writing
# --------------------------------------------------------------------------------------------
def _dates(rng: np.random.Generator, year: int, n_dates: int) -> list[date]:
    """Dates on a 5-day revisit grid: >= 1 pre, >= 2 flowering, >= 1 post (late May first)."""
    start = date(year, 3, 1) + timedelta(days=int(rng.integers(5)))
    grid = [start + timedelta(days=5 * k) for k in range(25)]

    def window(a: tuple[int, int], b: tuple[int, int]) -> list[date]:
        return [d for d in grid if date(year, *a) <= d <= date(year, *b)]

    n_pre = 1 + int(n_dates >= 7)
    n_post = 1 + int(n_dates >= 6)
    n_flo = n_dates - n_pre - n_post
    if n_flo < 2:
        n_pre, n_post, n_flo = 1, 1, n_dates - 2
    pre = list(rng.choice(window(*_PRE), size=n_pre, replace=False))
    # flowering dates fall where the clouds allow, but one of them near the usual peak
    fw = window(*_FLOWER)
    peak = [d for d in fw if date(year, 4, 15) <= d <= date(year, 5, 5)]
    first = peak[int(rng.integers(len(peak)))]
    rest = [d for d in fw if d != first]
    flo = [first, *rng.choice(rest, size=n_flo - 1, replace=False)]
    late = window((5, 21), (6, 7))
    post = [late[int(rng.integers(len(late)))]]
    rest = [d for d in window(*_POST) if d not in post]
    post += list(rng.choice(rest, size=n_post - 1, replace=False))
    return sorted(pre + flo + post)


def _grid(rng: np.random.Generator, size: int, pixel: float) -> tuple[str, Affine, float]:
    """UTM 50N origin somewhere in the hills west of Hangzhou (Fuyang / Lin'an)."""
    lon = rng.uniform(119.55, 119.95)
    lat = rng.uniform(29.95, 30.40)
    crs = "EPSG:32650"
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = tr.transform(lon, lat)
    ext = size * pixel
    x0 = round((x - ext / 2) / 10.0) * 10.0
    y0 = round((y + ext / 2) / 10.0) * 10.0
    return crs, Affine(pixel, 0, x0, 0, -pixel, y0), lat


def _to_wgs84_many(geoms: list[shapely.Geometry], transform: Affine,
                   crs: str) -> list[shapely.Geometry]:
    """Local metres (x east, y down from the top-left) -> lon/lat, exterior rings CCW."""
    if not geoms:
        return []
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y0 = transform.c, transform.f

    def f(coords: np.ndarray) -> np.ndarray:
        lon, lat = tr.transform(x0 + coords[:, 0], y0 - coords[:, 1])
        return np.round(np.column_stack([lon, lat]), 7)

    out = []
    for g in shapely.transform(np.array(geoms, dtype=object), f).tolist():
        if g.geom_type == "Polygon":
            g = orient(g, 1.0)
        elif g.geom_type == "MultiPolygon":
            g = shapely.MultiPolygon([orient(p, 1.0) for p in g.geoms])
        out.append(g)
    return out


def _to_wgs84(geom: shapely.Geometry, transform: Affine, crs: str) -> shapely.Geometry:
    return _to_wgs84_many([geom], transform, crs)[0]


def _write_geojson(path: Path, features: list[dict]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    tmp.replace(path)
    return path


def _feature(geom: shapely.Geometry, props: dict) -> dict:
    return {"type": "Feature", "geometry": mapping(geom), "properties": props}


def _features(geoms: list[shapely.Geometry], props: list[dict], transform: Affine,
              crs: str) -> list[dict]:
    return [_feature(g, p) for g, p in zip(_to_wgs84_many(geoms, transform, crs), props)]


def _vector_outputs(out: Path, lay: _Layout, units: _Units, transform: Affine, crs: str,
                    pixel: float) -> tuple[Path, Path]:
    """Write truth.geojson (every plot) and labels.geojson (an analyst's sample)."""
    rng = np.random.default_rng([lay.seed, 7])
    plots = [lay.obj.polygon(i) for i in lay.plot_ids]
    props = [{"plot_id": pid, "kind": lay.obj.kind[i], "area_m2": round(poly.area, 2),
              "pixels": round(poly.area / (pixel * pixel), 3),
              "colour": ("white", "pink", "red", "purple")[lay.obj.colour[i]]}
             for pid, (i, poly) in enumerate(zip(lay.plot_ids, plots))]
    truth_path = _write_geojson(out / "truth.geojson", _features(plots, props, transform, crs))
    buffered = shapely.STRtree([p.buffer(pixel) for p in plots]) if plots else None

    def clear(g: shapely.Geometry) -> bool:
        return buffered is None or len(buffered.query(g, predicate="intersects")) == 0

    geoms: list[shapely.Geometry] = []
    props = []
    # fields and forest cells (polygonised from the fine raster, whole units only)
    fs2 = lay.fs * lay.fs
    for uid, parts in units.label_pieces.items():
        cls = CLASSES[int(units.cls[uid])]
        geom = shapely.union_all(parts).simplify(lay.fs * 0.4)
        if geom.area < 150.0 or geom.area < 0.6 * units.area_fine[uid] * fs2:
            continue
        if geom.geom_type != "Polygon" or not clear(geom):
            continue
        geoms.append(geom)
        props.append({"class": _LABEL_CLASS.get(cls, cls)})
    # objects: ponds, village lots, gardens, clearings, ornamental poppies
    ob = lay.obj
    for i in range(len(ob.cx)):
        cls = CLASSES[ob.cls[i]]
        if cls in ("poppy", "roof", "garden_tree") or ob.kind[i] == "grave":
            continue
        p = {"water": 0.5, "courtyard": 0.15, "ornamental_poppy": 0.7}.get(cls, 0.15)
        if rng.uniform() > p:
            continue
        poly = ob.polygon(i)
        if not clear(poly):
            continue
        geoms.append(poly)
        props.append({"class": _LABEL_CLASS.get(cls, cls)})
    # some poppy plots, the larger ones more likely (that is what gets found and digitised)
    for pid, poly in enumerate(plots):
        if rng.uniform() < min(0.6, 0.1 + poly.area / 600.0):
            geoms.append(poly)
            props.append({"class": "poppy", "plot_id": pid})
    labels_path = _write_geojson(out / "labels.geojson", _features(geoms, props, transform, crs))
    return truth_path, labels_path


# --------------------------------------------------------------------------------------------
# Sentinel-2 rendering
# --------------------------------------------------------------------------------------------
def _block_replicate(a: np.ndarray, k: int) -> np.ndarray:
    """Average k x k blocks, then replicate back (edges padded by reflection)."""
    n, m = a.shape
    pn, pm = (-n) % k, (-m) % k
    p = np.pad(a, ((0, pn), (0, pm)), mode="edge") if (pn or pm) else a
    r = p.reshape(p.shape[0] // k, k, p.shape[1] // k, k).mean(axis=(1, 3))
    return np.repeat(np.repeat(r, k, axis=0), k, axis=1)[:n, :m]


def _render_s2(out: Path, lay: _Layout, units: _Units, d: date, k: int, transform: Affine,
               crs: str, lat: float, texture: tuple[np.ndarray, np.ndarray]) -> Path:
    n = lay.n
    rng = np.random.default_rng([lay.seed, 1000 + k])
    doy = d.timetuple().tm_yday
    zen, az = _sun(d, lat)
    zen += rng.normal(0, 0.3)
    fr = _fractions(units, doy, lay.seed * 1000 + k)
    table = fr @ _EM  # (n_units, 12)
    # terrain illumination, not corrected (Lambertian with a diffuse share)
    z, a = math.radians(zen), math.radians(az)
    cos_i = (math.cos(z) * np.cos(lay.slope)
             + math.sin(z) * np.sin(lay.slope) * np.cos(a - lay.aspect))
    diffuse = rng.uniform(0.12, 0.22)
    illum = ((1 - diffuse) * np.maximum(cos_i, 0.0) / math.cos(z) + diffuse).astype(np.float32)
    # clouds (cumulus), their shadows, thin cirrus
    cover = float(rng.choice([0.0, 0.02, 0.08, 0.2, 0.35], p=[0.3, 0.25, 0.2, 0.15, 0.1]))
    alpha = np.zeros((n, n), np.float32)
    if cover > 0:
        cf = _fractal(rng, n, 3.0)
        thr = float(np.quantile(cf, 1 - cover))
        alpha = np.clip((cf - thr) / 0.6, 0, 1).astype(np.float32)
    height = rng.uniform(800, 2500)
    dist = height * math.tan(z) / lay.pixel
    drow, dcol = dist * math.cos(a), -dist * math.sin(a)
    shadow = ndimage.shift(alpha, (drow, dcol), order=1, mode="constant", cval=0.0)
    cirrus = np.zeros((n, n), np.float32)
    if rng.uniform() < 0.25:
        cirrus = np.clip(_fractal(rng, n, 3.5) * 0.05 + rng.uniform(0.0, 0.06), 0, 0.2)
    # haze, calibration jitter, and the view-angle (BRDF) difference between relative orbits:
    # a few % brighter or darker per date, more in the visible, with an across-track gradient
    haze = rng.uniform(0.0, 0.025) * (np.array(WAVELENGTH_NM) / 443.0) ** -2.0
    vis_weight = np.where(np.array(WAVELENGTH_NM) < 700, 1.3, np.where(
        np.array(WAVELENGTH_NM) > 1500, 0.8, 1.0))
    brdf = float(np.clip(rng.normal(0.0, 0.035), -0.08, 0.08))
    gain = (rng.normal(1.0, 0.025) * rng.normal(1.0, 0.012, size=12)
            * (1.0 + brdf * vis_weight)).astype(np.float32)
    track = np.float32(rng.uniform(-0.03, 0.03)) * np.linspace(-1, 1, n, dtype=np.float32)
    # no-data swath on a diagonal corner
    swath = np.zeros((n, n), bool)
    if rng.uniform() < 0.3:
        rr, cc = np.arange(n)[:, None], np.arange(n)[None, :]
        corner = int(rng.integers(4))
        t1 = rr if corner < 2 else n - 1 - rr
        t2 = cc if corner % 2 == 0 else n - 1 - cc
        swath = (t1 + t2 * rng.uniform(0.4, 1.0)) < rng.uniform(0.15, 0.45) * n
    tex_cover, tex_bright = texture
    green_minus_soil = _EM[_E["leaf"]] - _EM[_E["soil"]]
    amp = units.tex[units.ids[..., 0]]
    veg_amp = np.clip(fr[:, _E["leaf"]] + fr[:, _E["leaf_glaucous"]], 0, 1)
    vegm = (4 * veg_amp * (1 - veg_amp))[units.ids[..., 0]] * 0.15
    baseline = "04.00" if rng.uniform() < 0.5 else "02.14"
    add = 1000 if baseline == "04.00" else 0
    data = np.zeros((13, n, n), dtype=np.uint16)
    refl_keep: dict[int, np.ndarray] = {}
    # per-pixel factors shared by all bands
    mult = ((1.0 + amp * tex_bright) * illum * (1 - 0.7 * shadow) * (1 - alpha)
            * (1.0 + track)[None, :]).astype(np.float32)
    cov = (vegm * tex_cover).astype(np.float32)
    del amp, vegm, illum, cos_i
    ids0, ids1, ids2 = units.ids[..., 0], units.ids[..., 1], units.ids[..., 2]
    w0, w1, w2 = units.w[..., 0], units.w[..., 1], units.w[..., 2]
    table = table / np.float32(255.0)  # the weights are stored x 255
    for b in range(12):
        col = table[:, b]
        img = col[ids0] * w0
        img += col[ids1] * w1
        img += col[ids2] * w2
        img += cov * green_minus_soil[b]
        img *= mult
        img += (haze[b] + cirrus * (0.8 if b != 9 else 0.3)) * (1 - alpha) + alpha * _CLOUD[b]
        img *= gain[b]
        if _RES[b] == 10:  # MTF; the 20 m / 60 m aggregation below blurs those bands anyway
            img = ndimage.gaussian_filter(img, 0.45)
        img += rng.standard_normal((n, n), dtype=np.float32) * np.float32(0.0025)
        if _RES[b] == 20:
            img = _block_replicate(img, 2)
        elif _RES[b] == 60:
            img = _block_replicate(img, 6)
        if b in (1, 2, 3, 7, 10):  # for the SCL, which Sen2Cor makes at 20 m
            refl_keep[b] = img[::2, ::2].copy()
        img *= 10000.0
        img += add
        np.rint(img, out=img)
        np.clip(img, 1, 65535, out=img)
        dn = img.astype(np.uint16)
        dn[swath] = 0
        data[b] = dn
    del mult, cov
    data[12] = _scl(lay, units, refl_keep, alpha[::2, ::2], shadow[::2, ::2], cirrus[::2, ::2],
                    swath, rng)
    scales = [1e-4] * 12 + [1.0]
    offsets = [-0.1 if add else 0.0] * 12 + [0.0]
    path = out / f"S2_{d:%Y%m%d}.tif"
    # 128 BYTES (rasterio passes an integer to GDALSetCacheMax64): practically no block cache,
    # which a whole-array write does not need; the default 5 % of RAM only inflates memory
    with rasterio.Env(GDAL_CACHEMAX=128):
        write_multiband(path, data, list(S2_FILE_BANDS) + ["SCL"], transform, crs,
                        acquisition_date=d.isoformat(), scales=scales, offsets=offsets,
                        nodata=0, tags={"SENSOR": "sentinel2", "SUN_ZENITH": f"{zen:.3f}",
                                        "SUN_AZIMUTH": f"{az:.3f}",
                                        "PROCESSING_BASELINE": baseline,
                                        "SIMULATED": "poppyscan.simulate"})
    return path


def _scl(lay: _Layout, units: _Units, refl: dict[int, np.ndarray], alpha: np.ndarray,
         shadow: np.ndarray, cirrus: np.ndarray, swath: np.ndarray,
         rng: np.random.Generator) -> np.ndarray:
    """Scene classification with Sen2Cor's habits, on the 20 m grid (every other pixel of the
    inputs), replicated to 10 m: dilated clouds, bright white patches called cloud or snow."""
    blue, green, red, nir, swir = refl[1], refl[2], refl[3], refl[7], refl[10]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.where(ndvi > 0.4, 4, 5).astype(np.uint8)
    dom = units.cls[units.ids[::2, ::2, 0]]
    water = (dom == _C["water"]) & (units.w[::2, ::2, 0] > 127) | ((nir < 0.05) & (ndvi < 0.0))
    scl[water] = 6
    scl[(shadow > 0.35) | ((nir < 0.08) & (ndvi > 0.0) & (blue < 0.04))] = 3
    # Sen2Cor: bright white targets (flowering fields, white roofs) called cloud or snow
    vis = (blue + green + red) / 3.0
    bright = (vis > 0.14) & (blue > 0.11) & (swir < 0.45)
    lab, nlab = ndimage.label(bright)
    if nlab:
        draw = rng.uniform(size=nlab + 1)
        scl[(lab > 0) & (draw[lab] < 0.35)] = 8
        scl[(lab > 0) & (draw[lab] > 0.85)] = 11
    scl[cirrus > 0.08] = 10
    cloud = ndimage.binary_dilation(alpha > 0.25, iterations=1)
    scl[cloud] = 8
    scl[alpha > 0.6] = 9
    scl = scl.repeat(2, axis=0).repeat(2, axis=1)[: lay.n, : lay.n]
    scl[swath] = 0
    return scl


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def simulate(out: Path, *, sensor: str = "sentinel2", size: int = 256, seed: int = 0,
             prevalence: float = 0.01, n_dates: int | None = None,
             year: int = 2024) -> SimResult:
    """Simulate one survey into ``out`` and return what was written.

    ``prevalence`` is the share of the scene area covered by poppy plots (0 .. 0.05; 0 gives a
    scene without poppy); ``n_dates`` defaults to 5-8 drawn from the seed (Sentinel-2 only;
    drones fly once). Every argument is checked before anything is written.
    """
    if sensor not in SENSORS:
        raise InputError(f"unknown sensor {sensor!r}; choose one of {', '.join(SENSORS)}")
    if not 16 <= size <= 16384:
        raise InputError(f"size {size} px is out of range; use 16 to 16384")
    if seed < 0:  # numpy's generators take no negative seed
        raise InputError(f"seed {seed} is out of range; use a whole number >= 0")
    if not 0.0 <= prevalence <= 0.05:
        raise InputError(f"prevalence {prevalence} is out of range; use 0 to 0.05 (5 %)")
    if n_dates is not None and not 3 <= n_dates <= 12:
        raise InputError(f"n_dates {n_dates} is out of range; use 3 to 12")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if sensor != "sentinel2":
        from pipeline.simulate_drone import simulate_drone

        return simulate_drone(out, rgb=sensor == "drone-rgb", size=size, seed=seed,
                              prevalence=prevalence, year=year)
    rng = np.random.default_rng([seed, 1])
    crs, transform, lat = _grid(rng, size, 10.0)
    nd = int(n_dates) if n_dates is not None else int(rng.integers(5, 9))
    dates = _dates(rng, year, nd)
    log.info("simulating %d px Sentinel-2 scene, seed %d, %d dates", size, seed, nd)
    lay = _Layout(size, seed, prevalence)
    if lay.poppy_area < 0.9 * prevalence * lay.ext * lay.ext:
        # the plots are placed where they fit; a small or crowded scene runs out of room
        log.warning("the scene holds %.2f%% poppy, short of the %.2f%% asked: no more room "
                    "for plots at this size", 100 * lay.poppy_area / lay.ext ** 2,
                    100 * prevalence)
    # about 12 % of fields and forest cells labelled, at most ~4000 polygons on big scenes
    units = _Units(lay, label_prob=min(0.12, 0.12 * 500_000 / (size * size)))
    dem = write_multiband(out / "dem.tif", lay.dem[None], ["elevation"], transform, crs,
                          acquisition_date=dates[0].isoformat(), nodata=None,
                          tags={"UNITS": "metre", "SIMULATED": "poppyscan.simulate"})
    truth, labels = _vector_outputs(out, lay, units, transform, crs, 10.0)
    trng = np.random.default_rng([seed, 2])
    tex_cover = ndimage.gaussian_filter(trng.standard_normal((size, size)).astype(np.float32), 1.0)
    tex_cover /= tex_cover.std() + 1e-6
    tex_bright = ndimage.gaussian_filter(trng.standard_normal((size, size)).astype(np.float32),
                                         0.7)
    tex_bright /= tex_bright.std() + 1e-6
    images = []
    for k, d in enumerate(dates):
        images.append(_render_s2(out, lay, units, d, k, transform, crs, lat,
                                 (tex_cover, tex_bright)))
    return SimResult(images=images, dem=dem, labels=labels, truth=truth, sensor=sensor,
                     dates=[d.isoformat() for d in dates], size=size, seed=seed)


def poppy_fraction(size: int, seed: int, prevalence: float = 0.01) -> np.ndarray:
    """Exact poppy area share (0..1, float32) of each 10 m pixel of the Sentinel-2 scene that
    ``simulate(..., size=size, seed=seed, prevalence=prevalence)`` writes (any n_dates, year)."""
    return _Units(_Layout(size, seed, prevalence), label_prob=0.0).poppy


def quicklook(tif: Path, png: Path, bands: tuple[str, ...] = ("B08", "B04", "B03"),
              stretch: tuple[float, float] = (0.0, 0.45)) -> Path:
    """Write a false-colour PNG (default NIR-red-green) of a simulated file with Pillow."""
    import rasterio
    from PIL import Image

    with rasterio.open(tif) as src:
        desc = list(src.descriptions)
        chans = []
        for name in bands:
            i = desc.index(name)
            a = src.read(i + 1).astype(np.float32)
            nod = a == 0 if src.nodata == 0 else ~np.isfinite(a)
            a = a * src.scales[i] + src.offsets[i]
            a = np.clip((a - stretch[0]) / (stretch[1] - stretch[0]), 0, 1) ** 0.8
            a[nod] = 0
            chans.append((a * 255).astype(np.uint8))
    Image.fromarray(np.dstack(chans)).save(png)
    return Path(png)
