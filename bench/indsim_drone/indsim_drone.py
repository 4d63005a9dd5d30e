#!/usr/bin/env python
"""indsim_drone: an independent drone multispectral (DJI P4 Multispectral) scene simulator.

Village edge / courtyard gardens in eastern China, late April - mid May, seen at ~5 cm per
pixel.  Writes one contract GeoTIFF ``flight_YYYYMMDD.tif`` (5 bands blue, green, red,
rededge2, nir), ``labels.geojson`` (what an analyst would digitise), ``truth.geojson``
(every poppy plot) and ``scene.json`` (the simulation parameters, for diagnosis only).

Usage:
    python indsim_drone.py --out DIR --seed N [--size 1024]

Written without looking at poppyscan's own simulators.  See README.md for the design.
"""
import argparse
import datetime as dt
import json
import math
import os
import time

import numpy as np
import rasterio
from rasterio import features
from rasterio.transform import Affine
from scipy import ndimage
from scipy.spatial import cKDTree
from shapely import affinity
from shapely.geometry import Point, Polygon, box, mapping
from shapely.geometry.polygon import orient
import shapely
from shapely.ops import unary_union
from shapely.prepared import prep
from pyproj import Transformer

BANDS = ["blue", "green", "red", "rededge2", "nir"]
WAVELENGTHS = [450, 560, 650, 730, 840]

# --------------------------------------------------------------------------------------
# Spectral library: surface reflectance at the P4M band centres (blue 450, green 560,
# red 650, red edge 730, NIR 840).  Values are my own estimates (see README.md).
# --------------------------------------------------------------------------------------
S = {
    # soils and man-made surfaces
    "soil_dry":        (0.075, 0.115, 0.155, 0.190, 0.220),
    "soil_moist":      (0.045, 0.065, 0.085, 0.105, 0.125),
    "soil_red":        (0.060, 0.090, 0.150, 0.195, 0.225),
    "concrete":        (0.200, 0.225, 0.240, 0.255, 0.265),
    "concrete_old":    (0.135, 0.150, 0.160, 0.170, 0.180),
    "brick_pave":      (0.085, 0.100, 0.160, 0.220, 0.250),
    "asphalt":         (0.055, 0.062, 0.070, 0.078, 0.085),
    "roof_redtile":    (0.070, 0.090, 0.210, 0.290, 0.320),
    "roof_greytile":   (0.110, 0.120, 0.130, 0.140, 0.150),
    "roof_darktile":   (0.050, 0.055, 0.060, 0.068, 0.076),
    "roof_bluesteel":  (0.210, 0.140, 0.075, 0.140, 0.280),
    "roof_white":      (0.420, 0.450, 0.460, 0.470, 0.470),
    "roof_concrete":   (0.170, 0.185, 0.195, 0.205, 0.215),
    "roof_felt":       (0.080, 0.085, 0.090, 0.095, 0.100),
    "solar_tubes":     (0.040, 0.042, 0.045, 0.050, 0.060),
    "steel_tank":      (0.500, 0.520, 0.520, 0.520, 0.520),
    "wall_top_grey":   (0.160, 0.170, 0.175, 0.185, 0.195),
    "wall_top_white":  (0.380, 0.400, 0.410, 0.420, 0.420),
    "wall_top_brick":  (0.075, 0.090, 0.170, 0.230, 0.260),
    "plastic_mulch":   (0.300, 0.320, 0.320, 0.330, 0.330),
    "tarp_blue":       (0.250, 0.150, 0.050, 0.080, 0.300),
    "foam_white":      (0.620, 0.660, 0.670, 0.680, 0.680),
    "pot_terracotta":  (0.090, 0.120, 0.230, 0.300, 0.330),
    "pot_black":       (0.040, 0.040, 0.042, 0.046, 0.055),
    "basin_red":       (0.060, 0.050, 0.380, 0.450, 0.470),
    "firewood":        (0.090, 0.120, 0.150, 0.200, 0.250),
    "car_white":       (0.550, 0.570, 0.570, 0.570, 0.570),
    "car_silver":      (0.280, 0.290, 0.290, 0.300, 0.300),
    "car_red":         (0.060, 0.050, 0.330, 0.420, 0.440),
    "car_black":       (0.040, 0.040, 0.040, 0.045, 0.050),
    "straw":           (0.120, 0.180, 0.220, 0.280, 0.320),
    # vegetation (green tissue)
    "grass":           (0.035, 0.085, 0.045, 0.240, 0.400),
    "grass_dry":       (0.060, 0.100, 0.100, 0.200, 0.300),
    "tree_dark":       (0.028, 0.062, 0.032, 0.190, 0.340),
    "tree_light":      (0.038, 0.090, 0.045, 0.260, 0.450),
    "cabbage":         (0.070, 0.135, 0.080, 0.300, 0.470),   # glaucous, waxy
    "lettuce":         (0.045, 0.130, 0.050, 0.330, 0.500),
    "lettuce_red":     (0.040, 0.055, 0.060, 0.210, 0.420),
    "garlic":          (0.065, 0.115, 0.075, 0.270, 0.400),   # glaucous, narrow leaves
    "broad_bean":      (0.035, 0.090, 0.040, 0.280, 0.480),
    "radish":          (0.042, 0.105, 0.050, 0.280, 0.450),
    "rape_pods":       (0.045, 0.115, 0.070, 0.270, 0.420),
    "wheat":           (0.040, 0.095, 0.055, 0.270, 0.430),
    "greens":          (0.040, 0.120, 0.045, 0.320, 0.500),   # bok choy / spinach
    "peony_leaf":      (0.040, 0.095, 0.048, 0.290, 0.470),
    "poppy_leaf":      (0.075, 0.135, 0.085, 0.285, 0.440),   # glaucous blue-green
    "poppy_capsule":   (0.070, 0.140, 0.090, 0.300, 0.440),
    "rhoeas_leaf":     (0.040, 0.100, 0.050, 0.290, 0.450),   # green, hairy
    # flowers (non-photosynthetic petals: no red-edge step)
    "petal_white":     (0.520, 0.600, 0.620, 0.640, 0.660),
    "petal_pink":      (0.420, 0.300, 0.520, 0.600, 0.620),
    "petal_red":       (0.060, 0.050, 0.400, 0.560, 0.600),
    "petal_purple":    (0.280, 0.120, 0.260, 0.520, 0.580),
    "rhoeas_red":      (0.050, 0.040, 0.360, 0.540, 0.570),
    "rhoeas_pink":     (0.380, 0.240, 0.480, 0.560, 0.580),
    "bean_flower":     (0.360, 0.380, 0.370, 0.450, 0.500),   # white with dark blotch
    "bean_flower_p":   (0.250, 0.120, 0.200, 0.450, 0.500),
    "radish_flower":   (0.480, 0.500, 0.520, 0.560, 0.600),   # white/pale lilac
    "radish_flower_p": (0.420, 0.340, 0.470, 0.540, 0.580),
    "rape_flower":     (0.060, 0.380, 0.430, 0.540, 0.580),   # yellow
    "peony_pink":      (0.450, 0.330, 0.560, 0.620, 0.640),
    "peony_red":       (0.080, 0.050, 0.330, 0.520, 0.560),
    "peony_white":     (0.580, 0.620, 0.630, 0.650, 0.660),
    "rose_red":        (0.050, 0.040, 0.300, 0.500, 0.550),
    "geranium_pink":   (0.400, 0.220, 0.480, 0.560, 0.580),
}
SPEC = {k: np.array(v, np.float32) for k, v in S.items()}

SMALL_ORGANS = {"poppy_capsule": 0.5}

POPPY_PETAL = {"white": "petal_white", "pink": "petal_pink", "red": "petal_red",
               "purple": "petal_purple"}

# sky diffuse fraction of the total (horizontal) irradiance per band
DIFFUSE = {
    "clear":    np.array([0.28, 0.18, 0.13, 0.10, 0.08], np.float32),
    "hazy":     np.array([0.46, 0.35, 0.29, 0.24, 0.21], np.float32),
    "broken":   np.array([0.32, 0.22, 0.17, 0.14, 0.12], np.float32),
    "overcast": np.array([0.95, 0.93, 0.92, 0.92, 0.91], np.float32),
}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _mix(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hrand(iu, iv, salt):
    """Deterministic uniform [0,1) per integer lattice cell."""
    with np.errstate(over="ignore"):
        a = (iu.astype(np.int64) + (1 << 30)).astype(np.uint64)
        b = (iv.astype(np.int64) + (1 << 30)).astype(np.uint64)
        x = _mix(a ^ _mix(b ^ np.uint64(salt & 0xFFFFFFFF)))
    return ((x >> np.uint64(11)).astype(np.float64) / float(1 << 53)).astype(np.float32)


def fbm(n, rng, cells=(4, 8, 16, 32, 64, 128), weights=None):
    """Smooth multi-octave noise, zero mean unit std, n x n."""
    out = np.zeros((n, n), np.float32)
    weights = weights or [c ** 0.8 for c in cells]
    for c, w in zip(cells, weights):
        m = n // c + 3
        z = rng.normal(size=(m, m)).astype(np.float32)
        zz = ndimage.zoom(z, c, order=1)[:n, :n]
        out += w * zz
    out -= out.mean()
    out /= out.std() + 1e-9
    return out


def block_mean(a, ss):
    if ss == 1:
        return a
    sh = a.shape
    return a.reshape(sh[:-2] + (sh[-2] // ss, ss, sh[-1] // ss, ss)).mean(axis=(-1, -3))


def block_max(a, ss):
    if ss == 1:
        return a
    sh = a.shape
    return a.reshape(sh[:-2] + (sh[-2] // ss, ss, sh[-1] // ss, ss)).max(axis=(-1, -3))


def sun_position(date, hour_bj, lat, lon):
    """Solar elevation and azimuth (deg, azimuth clockwise from north); NOAA formulas."""
    hour_utc = hour_bj - 8.0
    doy = date.timetuple().tm_yday
    g = 2 * math.pi / 365.0 * (doy - 1 + (hour_utc - 12) / 24.0)
    eqt = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                    - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
            - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    tst = hour_utc * 60 + eqt + 4 * lon
    ha = math.radians(tst / 4.0 - 180)
    la = math.radians(lat)
    cz = math.sin(la) * math.sin(decl) + math.cos(la) * math.cos(decl) * math.cos(ha)
    elev = 90 - math.degrees(math.acos(max(-1, min(1, cz))))
    az = math.degrees(math.atan2(math.sin(ha), math.cos(ha) * math.sin(la)
                                 - math.tan(decl) * math.cos(la))) + 180
    return elev, az % 360


def lobed_circle(cx, cy, r, rng, lobes=7, amp=0.12, n=28):
    ph = rng.uniform(0, 2 * np.pi, 3)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (1 + amp * (np.sin(lobes * t + ph[0]) * 0.6 + np.sin(3 * t + ph[1]) * 0.4))
    return Polygon(np.c_[cx + rr * np.cos(t), cy + rr * np.sin(t)])


def jitter_poly(poly, rng, amp):
    if poly.geom_type != "Polygon":
        poly = max(poly.geoms, key=lambda g: g.area)
    c = np.asarray(poly.exterior.coords)[:-1]
    c = c + rng.normal(0, amp, c.shape)
    p = Polygon(c)
    if not p.is_valid:
        p = p.buffer(0)
        if p.geom_type != "Polygon":
            p = max(p.geoms, key=lambda g: g.area)
    return p


# --------------------------------------------------------------------------------------
# canvas
# --------------------------------------------------------------------------------------
class Canvas:
    def __init__(self, n, px, rng):
        self.n, self.px, self.rng = n, px, rng
        self.refl = np.zeros((5, n, n), np.float32)
        self.hsolid = np.zeros((n, n), np.float32)   # buildings, walls, cars (opaque)
        self.hveg = np.zeros((n, n), np.float32)     # crops / small plants
        self.htree = np.zeros((n, n), np.float32)    # tree crowns (porous shadows)
        self.dirf = np.full((n, n), np.nan, np.float32)  # explicit direct-light factor
        self.n_coarse = fbm(n, rng, cells=(32, 64, 128, 256))
        self.n_med = fbm(n, rng, cells=(4, 8, 16, 32))
        self.n_fine = fbm(n, rng, cells=(1, 2, 4), weights=[1.0, 0.8, 0.5])
        self.n_chroma = fbm(n, rng, cells=(16, 32, 64, 128))

    def window(self, geom, pad=0.0):
        x0, y0, x1, y1 = geom.bounds
        p = self.px
        c0 = max(0, int(math.floor((x0 - pad) / p)))
        r0 = max(0, int(math.floor((y0 - pad) / p)))
        c1 = min(self.n, int(math.ceil((x1 + pad) / p)) + 1)
        r1 = min(self.n, int(math.ceil((y1 + pad) / p)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return r0, r1, c0, c1

    def samples(self, win, ss):
        r0, r1, c0, c1 = win
        p = self.px
        xs = (c0 + (np.arange((c1 - c0) * ss) + 0.5) / ss) * p
        ys = (r0 + (np.arange((r1 - r0) * ss) + 0.5) / ss) * p
        X, Y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        return X, Y

    def mask(self, geom, win, ss):
        r0, r1, c0, c1 = win
        p = self.px
        tr = Affine(p / ss, 0, c0 * p, 0, p / ss, r0 * p)
        return features.rasterize([(geom, 1)], out_shape=((r1 - r0) * ss, (c1 - c0) * ss),
                                  transform=tr, fill=0, dtype="uint8").astype(bool)

    def fill(self, geom, spec, tex=(0.06, 0.04, 0.03), chroma=0.03, bright=None, ss=2):
        win = self.window(geom)
        if win is None:
            return None
        r0, r1, c0, c1 = win
        a = block_mean(self.mask(geom, win, ss).astype(np.float32), ss)
        if not a.any():
            return None
        sl = (slice(r0, r1), slice(c0, c1))
        b = bright if bright is not None else float(self.rng.normal(1, 0.05))
        mod = b * (1 + tex[0] * self.n_coarse[sl] + tex[1] * self.n_med[sl]
                   + tex[2] * self.n_fine[sl])
        sp = spec * (1 + self.rng.normal(0, 0.02, 5)).astype(np.float32)
        t = sp[:, None, None] * mod[None]
        # slight chroma variation (blue vs NIR tilt)
        tilt = np.linspace(-1, 1, 5, dtype=np.float32)[:, None, None]
        t = t * (1 + chroma * tilt * self.n_chroma[sl][None])
        R = self.refl[:, r0:r1, c0:c1]
        R[:] = R * (1 - a) + t * a
        return win, a

    def set_height(self, arr_name, geom, h, ss=1):
        win = self.window(geom)
        if win is None:
            return
        r0, r1, c0, c1 = win
        m = self.mask(geom, win, ss)
        H = getattr(self, arr_name)[r0:r1, c0:c1]
        H[m] = np.maximum(H[m], h) if np.isscalar(h) else np.maximum(H[m], h[m])


# --------------------------------------------------------------------------------------
# plants: lattice populations rendered at supersampling
# --------------------------------------------------------------------------------------
def plant_layer(cv, geom, *, ang, su, sv, r0, rsd=0.25, jit=0.6, pres=0.95, salt=1,
                leaf="greens", leaf_var=0.08, lobes=0, lobe_amp=0.0, height=0.3,
                flowers=None, sprinkle=None, ss=2, cover=1.0, base=None, star=False):
    """Render a plant population clipped to geom.

    flowers: dict(nslot, p, rf, rfsd, spread, palette=[(specname, weight)], extra=[...])
    sprinkle: dict(p, palette) tiny sub-pixel flowers on leaf samples (broad bean, radish).
    base: optional soil spectrum name painted first under the plants.
    Returns window and the pixel fraction covered by leaves+flowers.
    """
    if base is not None:
        cv.fill(geom, SPEC[base], tex=(0.08, 0.06, 0.04))
    win = cv.window(geom, pad=0.0)
    if win is None:
        return None
    r0_, r1_, c0_, c1_ = win
    inside = cv.mask(geom, win, ss)
    if not inside.any():
        return None
    X, Y = cv.samples(win, ss)
    ca, sa = math.cos(ang), math.sin(ang)
    U = X * ca + Y * sa
    V = -X * sa + Y * ca
    iu0 = np.floor(U / su).astype(np.int64)
    iv0 = np.floor(V / sv).astype(np.int64)
    bestd = np.zeros(U.shape, np.float32)        # dome height (0..1) of winning plant
    pid = np.zeros(U.shape, np.float32)
    idx = np.zeros(U.shape, np.int16)           # 0 none, 1 leaf, 2.. flower/extra
    centres = []
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            iu = iu0 + du
            iv = iv0 + dv
            r1 = hrand(iu, iv, salt * 7 + 1)
            r2 = hrand(iu, iv, salt * 7 + 2)
            r3 = hrand(iu, iv, salt * 7 + 3)
            r4 = hrand(iu, iv, salt * 7 + 4)
            cu = (iu + 0.5 + (r2 - 0.5) * jit) * su
            cvv = (iv + 0.5 + (r3 - 0.5) * jit) * sv
            rad = r0 * (1 + rsd * (2 * r4 - 1))
            dU = U - cu
            dV = V - cvv
            d = np.sqrt(dU * dU + dV * dV)
            reff = rad
            if lobes:
                r5 = hrand(iu, iv, salt * 7 + 5)
                th = np.arctan2(dV, dU)
                if star:
                    reff = rad * (0.35 + 0.65 * np.abs(np.cos(0.5 * lobes * th + 6.283 * r5)) ** 3)
                else:
                    reff = rad * (1 + lobe_amp * np.sin(lobes * th + 6.283 * r5))
            ins = (r1 < pres) & (d < reff)
            dome = np.sqrt(np.clip(1 - (d / rad) ** 2, 0, 1))
            upd = ins & (dome > bestd)
            bestd[upd] = dome[upd]
            pid[upd] = r4[upd]
            centres.append((iu, iv, cu, cvv, rad, r1 < pres))
    leafm = bestd > 0
    if cover < 1.0:
        leafm &= cv.rng.random(leafm.shape) < cover
    idx[leafm] = 1
    names = [None, leaf]
    if sprinkle is not None:
        pal = sprinkle["palette"]
        rr = cv.rng.random(idx.shape)
        pick = cv.rng.random(idx.shape)
        sp = leafm & (rr < sprinkle["p"] * (0.4 + 0.6 * bestd))
        wsum = sum(w for _, w in pal)
        acc = 0.0
        for nm, w in pal:
            names.append(nm)
            k = len(names) - 1
            sel = sp & (pick >= acc / wsum) & (pick < (acc + w) / wsum)
            idx[sel] = k
            acc += w
    fl_h = np.zeros(U.shape, np.float32)
    if flowers is not None:
        pal = flowers["palette"]
        wsum = sum(w for _, w in pal)
        base_k = len(names)
        for nm, _ in pal:
            names.append(nm)
        for (iu, iv, cu, cvv, rad, present) in centres:
            for j in range(flowers["nslot"]):
                sj = salt * 131 + 17 * j
                q1 = hrand(iu, iv, sj + 1)
                q2 = hrand(iu, iv, sj + 2)
                q3 = hrand(iu, iv, sj + 3)
                q4 = hrand(iu, iv, sj + 4)
                q5 = hrand(iu, iv, sj + 5)
                on = present & (q1 < flowers["p"])
                rho = flowers["spread"] * rad * np.sqrt(q2)
                fu = cu + rho * np.cos(6.283 * q3)
                fv = cvv + rho * np.sin(6.283 * q3)
                rf = flowers["rf"] * (1 + flowers["rfsd"] * (2 * q4 - 1))
                d = np.hypot(U - fu, V - fv)
                hit = on & (d < rf)
                if not hit.any():
                    continue
                acc = 0.0
                for k, (nm, w) in enumerate(pal):
                    sel = hit & (q5 >= acc / wsum) & (q5 < (acc + w) / wsum)
                    if nm in SMALL_ORGANS:   # buds / capsules are smaller than flowers
                        sel &= d < rf * SMALL_ORGANS[nm]
                    idx[sel] = base_k + k
                    fl_h[sel] = 1.0
                    acc += w
    idx[~inside] = 0
    # compose
    lut = np.zeros((len(names), 5), np.float32)
    for k, nm in enumerate(names):
        if nm is not None:
            lut[k] = SPEC[nm]
    mod = (1 + leaf_var * (2 * pid - 1)) * (0.72 + 0.28 * bestd)
    is_leaf = idx == 1
    m = np.where(is_leaf, mod, 1.0 + 0.08 * (pid - 0.5)).astype(np.float32)
    contrib = lut[idx].transpose(2, 0, 1) * m[None]
    contrib[:, idx == 0] = 0
    cov = block_mean((idx > 0).astype(np.float32), ss)
    contrib = block_mean(contrib, ss)
    sl = (slice(r0_, r1_), slice(c0_, c1_))
    # leaf micro texture
    contrib *= (1 + 0.05 * cv.n_fine[sl])[None]
    R = cv.refl[:, r0_:r1_, c0_:c1_]
    R[:] = R * (1 - cov) + contrib
    hh = block_max(np.where(idx > 0, np.maximum(bestd, fl_h), 0).astype(np.float32), ss) * height
    Hv = cv.hveg[r0_:r1_, c0_:c1_]
    np.maximum(Hv, hh, out=Hv)
    return win, cov


# --------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------
CROPS = ["cabbage", "lettuce", "garlic", "broad_bean", "radish", "rapeseed", "wheat",
         "vegetables", "bare_soil", "plastic_mulch", "grass"]


def render_crop(cv, geom, crop, ang, rng, salt):
    soil = "soil_moist" if rng.random() < 0.6 else "soil_dry"
    cv.fill(geom, SPEC[soil], tex=(0.10, 0.08, 0.05))
    r = rng.random
    if crop == "cabbage":
        plant_layer(cv, geom, ang=ang, su=0.5, sv=0.48, r0=0.22 * rng.uniform(0.8, 1.15),
                    rsd=0.18, jit=0.25, pres=0.93, salt=salt, leaf="cabbage", lobes=7,
                    lobe_amp=0.08, height=0.35, ss=2)
    elif crop == "lettuce":
        leaf = "lettuce_red" if r() < 0.25 else "lettuce"
        plant_layer(cv, geom, ang=ang, su=0.28, sv=0.28, r0=0.12, rsd=0.2, jit=0.3,
                    pres=0.92, salt=salt, leaf=leaf, lobes=9, lobe_amp=0.12, height=0.2, ss=2)
    elif crop == "garlic":
        plant_layer(cv, geom, ang=ang, su=0.18, sv=0.12, r0=0.09, rsd=0.2, jit=0.3,
                    pres=0.95, salt=salt, leaf="garlic", lobes=6, star=True, height=0.5,
                    cover=0.8, ss=2)
    elif crop == "broad_bean":
        plant_layer(cv, geom, ang=ang, su=0.38, sv=0.22, r0=0.19, rsd=0.2, jit=0.4,
                    pres=0.95, salt=salt, leaf="broad_bean", lobes=5, lobe_amp=0.2,
                    height=0.9, ss=2,
                    sprinkle=dict(p=rng.uniform(0.04, 0.1),
                                  palette=[("bean_flower", 0.7), ("bean_flower_p", 0.3)]))
    elif crop == "radish":
        pal = [("radish_flower", 0.6), ("radish_flower_p", 0.4)]
        plant_layer(cv, geom, ang=ang, su=0.32, sv=0.32, r0=0.17, rsd=0.25, jit=0.5,
                    pres=0.9, salt=salt, leaf="radish", lobes=5, lobe_amp=0.25,
                    height=0.8, ss=2, sprinkle=dict(p=rng.uniform(0.12, 0.3), palette=pal))
    elif crop == "rapeseed":
        plant_layer(cv, geom, ang=ang, su=0.3, sv=0.25, r0=0.2, rsd=0.2, jit=0.6,
                    pres=0.97, salt=salt, leaf="rape_pods", lobes=5, lobe_amp=0.2,
                    height=1.3, ss=2,
                    sprinkle=dict(p=rng.uniform(0.0, 0.08), palette=[("rape_flower", 1.0)]))
    elif crop == "wheat":
        plant_layer(cv, geom, ang=ang, su=0.2, sv=0.06, r0=0.085, rsd=0.15, jit=0.2,
                    pres=0.97, salt=salt, leaf="wheat", height=0.8, ss=2, leaf_var=0.05)
    elif crop == "vegetables":
        plant_layer(cv, geom, ang=ang, su=0.22, sv=0.2, r0=0.1, rsd=0.25, jit=0.4,
                    pres=0.9, salt=salt, leaf="greens", lobes=6, lobe_amp=0.15,
                    height=0.2, ss=2)
    elif crop == "plastic_mulch":
        cv.fill(geom, SPEC["plastic_mulch"], tex=(0.08, 0.10, 0.03))
        plant_layer(cv, geom, ang=ang, su=0.4, sv=0.35, r0=0.1, rsd=0.3, jit=0.2,
                    pres=0.8, salt=salt, leaf="greens", lobes=5, lobe_amp=0.2,
                    height=0.15, ss=2)
    elif crop == "grass":
        cv.fill(geom, SPEC["grass"], tex=(0.15, 0.12, 0.08))
    # bare_soil: nothing more


# --------------------------------------------------------------------------------------
# layout (village frame: x east, y south, metres; rotated by theta at the end)
# --------------------------------------------------------------------------------------
class Layout:
    def __init__(self):
        self.ground = []      # (geom, spec, tex) painted first
        self.beds = []        # dict(geom, crop, ang, where)
        self.roofs = []       # dict(geom, type, ...)
        self.walls = []       # (geom, h, spec)
        self.trees = []       # dict(x, y, r, h, kind)
        self.pots = []        # dict(x, y, r, mat, content)
        self.boxes = []       # dict(geom, content)
        self.clutter = []     # (geom, spec, h)
        self.cars = []        # (geom, spec)
        self.peonies = []     # (x, y, r)
        self.joints = []      # lane joints (line geoms)
        self.cand = {"courtyard": [], "patch": [], "strip": [], "mixed": [], "verge": []}
        self.labels = []      # (geom, class)


def gen_layout(rng, Sz):
    L = Layout()
    m = 0.3 * Sz
    lo, hi = -m, Sz + m
    tmpl = rng.choice(["edge", "village", "fields"], p=[0.45, 0.35, 0.20])
    seqs = {"edge": ["field", "verge", "lane", "compounds", "alley", "compounds", "lane", "field"],
            "village": ["compounds", "lane", "compounds", "alley", "compounds", "lane",
                        "compounds", "verge"],
            "fields": ["field", "verge", "field", "lane", "compounds", "verge", "field"]}
    seq = seqs[tmpl]
    k = int(rng.integers(len(seq)))
    H = {"field": (10, 22), "verge": (2, 5), "lane": (3, 5), "alley": (1.5, 3), "compounds": (14, 20)}
    plan = []
    tot = 0.0
    while tot < (hi - lo) + 60:
        t = seq[k % len(seq)]
        k += 1
        h = rng.uniform(*H[t])
        plan.append((t, h))
        tot += h
    # put a compound row (courtyard gardens) across the middle of the flight
    pos = np.cumsum([0] + [h for _, h in plan])
    ci = [i for i, (t, _) in enumerate(plan) if t == "compounds" and pos[i] > 25]
    i0 = ci[0]
    y = Sz * rng.uniform(0.3, 0.7) - (pos[i0] + plan[i0][1] / 2)
    L.ground.append((box(lo, lo, hi, hi), "soil_dry", (0.12, 0.08, 0.05)))
    for t, h in plan:
        if y > hi:
            break
        if y + h < lo:
            y += h
            continue
        if t == "field":
            gen_field(L, rng, y, h, lo, hi)
        elif t == "verge":
            gen_verge(L, rng, y, h, lo, hi)
        elif t == "lane":
            gen_lane(L, rng, y, h, lo, hi)
        elif t == "alley":
            spec = "concrete_old" if rng.random() < 0.6 else "soil_dry"
            g = box(lo, y, hi, y + h)
            L.ground.append((g, spec, (0.1, 0.08, 0.05)))
            L.labels.append((g, "road" if spec.startswith("concrete") else "bare_soil"))
        else:
            gen_compounds(L, rng, y, h, lo, hi)
        y += h
    return L, str(tmpl)


def gen_lane(L, rng, y, h, lo, hi):
    e1, e2 = rng.uniform(0.2, 0.8, 2)
    L.ground.append((box(lo, y, hi, y + e1), "grass" if rng.random() < 0.5 else "soil_dry",
                     (0.15, 0.12, 0.08)))
    L.ground.append((box(lo, y + h - e2, hi, y + h), "grass" if rng.random() < 0.5 else "soil_dry",
                     (0.15, 0.12, 0.08)))
    spec = "concrete" if rng.random() < 0.7 else ("asphalt" if rng.random() < 0.5 else "concrete_old")
    g = box(lo, y + e1, hi, y + h - e2)
    L.ground.append((g, spec, (0.08, 0.06, 0.05)))
    L.labels.append((g, "road"))
    if spec.startswith("concrete"):
        xj = lo + rng.uniform(0, 5)
        while xj < hi:
            L.joints.append(box(xj, y + e1, xj + 0.02, y + h - e2))
            xj += rng.uniform(4, 6)
    nc = rng.poisson(0.8)
    for _ in range(nc):
        cx = rng.uniform(lo, hi)
        cl = rng.uniform(4.2, 4.9)
        cw = rng.uniform(1.7, 1.85)
        cy = y + e1 + rng.uniform(0.2, max(0.3, h - e1 - e2 - cw - 0.2))
        g = box(cx, cy, cx + cl, cy + cw)
        L.cars.append((g, str(rng.choice(["car_white", "car_silver", "car_red", "car_black"]))))


def gen_verge(L, rng, y, h, lo, hi):
    g = box(lo, y, hi, y + h)
    L.ground.append((g, "grass", (0.2, 0.15, 0.1)))
    L.labels.append((g, "grass"))
    x = lo
    while x < hi:
        seg = rng.uniform(3, 10)
        r = rng.random()
        sg = box(x, y + 0.2, x + seg, y + h - 0.2)
        if r < 0.25:
            L.ground.append((sg, "soil_dry", (0.1, 0.1, 0.05)))
            L.labels.append((sg, "bare_soil"))
        elif r < 0.45:
            L.cand["verge"].append(sg)
        x += seg + rng.uniform(0, 3)
    xt = lo + rng.uniform(0, 6)
    while xt < hi:
        L.trees.append(dict(x=xt, y=y + h / 2 + rng.uniform(-1, 1), r=rng.uniform(1.5, 3.5),
                            h=rng.uniform(5, 11), kind=str(rng.choice(["tree_dark", "tree_light"]))))
        xt += rng.uniform(5, 16)


def gen_field(L, rng, y, h, lo, hi):
    x = lo
    while x < hi:
        w = rng.uniform(5, 15)
        crop = str(rng.choice(CROPS, p=[0.14, 0.11, 0.13, 0.13, 0.09, 0.09, 0.07, 0.09,
                                        0.06, 0.04, 0.05]))
        path = rng.uniform(0.3, 0.6)
        L.ground.append((box(x, y, x + path, y + h), "grass" if rng.random() < 0.6 else "soil_dry",
                         (0.2, 0.15, 0.1)))
        px0, px1 = x + path, x + w
        ns = rng.random() < 0.5   # beds running north-south
        bw = rng.uniform(1.0, 1.8)
        fur = rng.uniform(0.25, 0.4)
        L.ground.append((box(px0, y, px1, y + h), "soil_moist", (0.12, 0.1, 0.06)))
        if ns:
            bx = px0
            while bx + 0.5 < px1:
                g = box(bx, y + 0.3, min(bx + bw, px1), y + h - 0.3)
                L.beds.append(dict(geom=g, crop=crop, ang=math.pi / 2, where="field"))
                bx += bw + fur
        else:
            by = y + 0.2
            while by + 0.5 < y + h:
                g = box(px0, by, px1, min(by + bw, y + h - 0.2))
                L.beds.append(dict(geom=g, crop=crop, ang=0.0, where="field"))
                by += bw + fur
        x += w
    if rng.random() < 0.4:
        xt = lo + rng.uniform(0, 20)
        L.trees.append(dict(x=xt, y=y + rng.uniform(0, h), r=rng.uniform(2, 4),
                            h=rng.uniform(6, 12), kind="tree_light"))


def gen_compounds(L, rng, y, h, lo, hi):
    x = lo
    while x < hi:
        w = rng.uniform(9, 16)
        typ = rng.choice(["house", "open", "garden"], p=[0.55, 0.23, 0.22])
        gen_compound(L, rng, x, y, w, h, str(typ))
        x += w
        if rng.random() < 0.3:
            gw = rng.uniform(1, 2.2)
            g = box(x, y, x + gw, y + h)
            L.ground.append((g, "concrete_old" if rng.random() < 0.5 else "soil_dry",
                             (0.1, 0.08, 0.05)))
            x += gw


def add_wall(L, rng, x0, y0, x1, y1, spec, h, gate_side="S"):
    t = 0.24
    gx = rng.uniform(x0 + 1, max(x0 + 1.1, x1 - 3))
    gwid = rng.uniform(1.2, 2.6)
    parts = [box(x0, y0, x1, y0 + t), box(x0, y0, x0 + t, y1), box(x1 - t, y0, x1, y1)]
    parts += [box(x0, y1 - t, gx, y1), box(min(x1, gx + gwid), y1 - t, x1, y1)]
    for p in parts:
        if p.area > 0:
            L.walls.append((p, h, spec))


def gen_beds_in(L, rng, region, crops, nmax=3, where="courtyard"):
    """Garden beds along the edges of a rectangular region (x0,y0,x1,y1)."""
    x0, y0, x1, y1 = region
    W, H = x1 - x0, y1 - y0
    beds = []
    sides = list(rng.permutation(["W", "E", "S", "M"]))[: int(rng.integers(1, nmax + 1))]
    for s in sides:
        bw = rng.uniform(1.0, 3.0)
        if s in ("W", "E") and W > 2 * bw + 1.5 and H > 2:
            ln = rng.uniform(0.45, 0.95) * H
            yy = y0 + rng.uniform(0, H - ln)
            g = box(x0, yy, x0 + bw, yy + ln) if s == "W" else box(x1 - bw, yy, x1, yy + ln)
            ang = math.pi / 2
        elif s == "S" and H > bw + 2:
            ln = rng.uniform(0.4, 0.9) * W
            xx = x0 + rng.uniform(0, W - ln)
            g = box(xx, y1 - bw, xx + ln, y1)
            ang = 0.0
        elif s == "M" and W > 4 and H > 3:
            bw2 = rng.uniform(1.2, min(4.5, W - 2))
            bh2 = rng.uniform(1.2, min(4.5, H - 1.5))
            xx = x0 + rng.uniform(1, W - bw2 - 0.5)
            yy = y0 + rng.uniform(0.5, H - bh2 - 0.5)
            g = box(xx, yy, xx + bw2, yy + bh2)
            ang = 0.0
        else:
            continue
        if any(g.intersects(b) for b in beds):
            continue
        beds.append(g)
        crop = str(rng.choice(crops))
        L.beds.append(dict(geom=g, crop=crop, ang=ang, where=where))
    return beds


def gen_compound(L, rng, x0, y0, w, h, typ):
    x1, y1 = x0 + w, y0 + h
    wall_spec = str(rng.choice(["wall_top_grey", "wall_top_white", "wall_top_brick"]))
    wall_h = rng.uniform(1.8, 2.5)
    court_crops = ["lettuce", "garlic", "cabbage", "broad_bean", "vegetables", "vegetables",
                   "bare_soil", "radish", "garlic"]
    if typ == "garden":
        L.ground.append((box(x0, y0, x1, y1), "soil_moist", (0.12, 0.1, 0.06)))
        if rng.random() < 0.7:
            add_wall(L, rng, x0, y0, x1, y1, wall_spec, wall_h)
        # beds in a grid with paths
        nb = int(rng.integers(2, 5))
        bwid = (w - 0.6 - 0.4 * (nb - 1)) / nb
        for i in range(nb):
            bx = x0 + 0.3 + i * (bwid + 0.4)
            g = box(bx, y0 + 0.5, bx + bwid, y1 - 0.5)
            L.beds.append(dict(geom=g, crop=str(rng.choice(court_crops)), ang=math.pi / 2,
                               where="garden"))
            L.cand["courtyard"].append(g)
        return
    # main house at the north side
    D = min(rng.uniform(7, 10), h - 5)
    story = rng.choice([1, 2, 3], p=[0.3, 0.55, 0.15])
    eave = {1: rng.uniform(3.2, 4.2), 2: rng.uniform(6.3, 7.3), 3: rng.uniform(9.3, 10.3)}[int(story)]
    rt = rng.choice(["gable", "flat", "steel"], p=[0.55, 0.35, 0.10])
    hb = box(x0 + 0.3, y0 + 0.3, x1 - 0.3, y0 + 0.3 + D)
    roof = dict(geom=hb, type=str(rt), eave=eave, ridge_axis="x")
    if rt == "gable":
        roof["mat"] = str(rng.choice(["roof_redtile", "roof_greytile", "roof_darktile"],
                                     p=[0.35, 0.35, 0.30]))
        roof["slope"] = rng.uniform(20, 30)
    elif rt == "steel":
        roof["mat"] = "roof_bluesteel"
        roof["slope"] = rng.uniform(8, 14)
    else:
        roof["mat"] = str(rng.choice(["roof_concrete", "roof_white", "roof_felt"], p=[0.5, 0.3, 0.2]))
        roof["solar"] = rng.random() < 0.6
    L.roofs.append(roof)
    L.labels.append((hb, "roof"))
    cy0 = y0 + 0.3 + D
    court = box(x0 + 0.25, cy0, x1 - 0.25, y1 - 0.25)
    base = rng.choice(["concrete", "concrete_old", "brick_pave", "soil_dry"], p=[0.38, 0.24, 0.1, 0.28])
    L.ground.append((court, str(base), (0.08, 0.08, 0.05)))
    if base != "soil_dry":
        L.labels.append((court, "courtyard"))
    if typ == "house":
        add_wall(L, rng, x0, y0 + 0.3 + D - 0.2, x1, y1, wall_spec, wall_h)
    # side building
    occupied = []
    if rng.random() < 0.4 and w > 9:
        sw, sd = rng.uniform(3, 4), rng.uniform(3, 6)
        sx = x0 + 0.25 if rng.random() < 0.5 else x1 - 0.25 - sw
        sg = box(sx, cy0, sx + sw, cy0 + sd)
        st = str(rng.choice(["flat", "steel", "gable"]))
        mat = {"flat": "roof_concrete", "steel": "roof_bluesteel", "gable": "roof_greytile"}[st]
        L.roofs.append(dict(geom=sg, type=st, eave=rng.uniform(2.6, 3.4), mat=mat,
                            slope=12 if st == "steel" else 22, ridge_axis="y", solar=False))
        L.labels.append((sg, "roof"))
        occupied.append(sg)
    cx0, cyy0, cx1, cyy1 = x0 + 0.5, cy0 + 0.3, x1 - 0.5, y1 - 0.5
    beds = gen_beds_in(L, rng, (cx0, cyy0, cx1, cyy1), court_crops, nmax=4)
    beds = [b for b in beds if not any(b.intersects(o) for o in occupied)]
    for b in beds:
        L.cand["courtyard"].append(b)
    occupied += beds
    # small patches by the wall (corners)
    for _ in range(int(rng.integers(0, 3))):
        s = rng.uniform(0.5, 0.8)
        px_ = cx0 if rng.random() < 0.5 else cx1 - s
        py_ = rng.uniform(cyy0, max(cyy0 + 0.1, cyy1 - s))
        g = box(px_, py_, px_ + s, py_ + s)
        if not any(g.intersects(o) for o in occupied):
            L.cand["patch"].append(g)
            occupied.append(g)
    # tree
    if rng.random() < 0.35:
        L.trees.append(dict(x=rng.uniform(cx0 + 1, cx1 - 1), y=rng.uniform(cyy0 + 1, cyy1),
                            r=rng.uniform(1.2, 2.4), h=rng.uniform(3.5, 6.5),
                            kind=str(rng.choice(["tree_dark", "tree_light"]))))
    # peony bush
    if rng.random() < 0.2:
        L.peonies.append((rng.uniform(cx0 + 0.6, cx1 - 0.6), rng.uniform(cyy0 + 0.6, cyy1 - 0.6),
                          rng.uniform(0.35, 0.6)))
    # pots along the walls
    for _ in range(int(rng.integers(0, 8))):
        r = rng.uniform(0.12, 0.3)
        px_ = rng.uniform(cx0 + r, cx1 - r)
        py_ = cyy1 - r - rng.uniform(0, 0.3) if rng.random() < 0.5 else rng.uniform(cyy0 + r, cyy1 - r)
        g = Point(px_, py_).buffer(r)
        if any(g.intersects(o) for o in occupied):
            continue
        occupied.append(g)
        L.pots.append(dict(x=px_, y=py_, r=r,
                           mat=str(rng.choice(["pot_terracotta", "pot_black", "pot_terracotta",
                                               "foam_white"])),
                           content=str(rng.choice(["greens", "rose", "geranium", "greens", "empty"]))))
    for _ in range(int(rng.integers(0, 3))):
        bw_, bh_ = rng.uniform(0.5, 0.7), rng.uniform(0.35, 0.45)
        px_ = rng.uniform(cx0, cx1 - bw_)
        py_ = rng.uniform(cyy0, cyy1 - bh_)
        g = box(px_, py_, px_ + bw_, py_ + bh_)
        if any(g.intersects(o) for o in occupied):
            continue
        occupied.append(g)
        L.boxes.append(dict(geom=g, content=str(rng.choice(["greens", "garlic", "empty", "greens"]))))
    for _ in range(int(rng.integers(0, 3))):
        kind = rng.choice(["tarp_blue", "firewood", "basin_red", "straw"])
        cw_, ch_ = (rng.uniform(0.4, 0.6),) * 2 if kind == "basin_red" else rng.uniform(0.8, 2.5, 2)
        px_ = rng.uniform(cx0, max(cx0 + 0.1, cx1 - cw_))
        py_ = rng.uniform(cyy0, max(cyy0 + 0.1, cyy1 - ch_))
        g = (Point(px_ + cw_ / 2, py_ + cw_ / 2).buffer(cw_ / 2) if kind == "basin_red"
             else box(px_, py_, px_ + cw_, py_ + ch_))
        if any(g.intersects(o) for o in occupied):
            continue
        occupied.append(g)
        L.clutter.append((g, str(kind), {"tarp_blue": 0.05, "firewood": 0.8, "basin_red": 0.25,
                                         "straw": 0.4}[str(kind)]))


# --------------------------------------------------------------------------------------
# flight footprint (orthomosaic valid area)
# --------------------------------------------------------------------------------------
def footprint(rng, Sz):
    c = Sz / 2
    psi = rng.uniform(0, 180)
    spacing = rng.uniform(12, 18)
    strips = []
    half = 0.75 * Sz
    y = -half + rng.uniform(0, spacing)
    while y < half:
        a = -rng.uniform(0.40, 0.6) * Sz * 1.3
        b = rng.uniform(0.40, 0.6) * Sz * 1.3
        strips.append(box(a, y - spacing / 2 - 1, b, y + spacing / 2 + 1))
        y += spacing
    u = unary_union(strips)
    u = affinity.rotate(u, psi, origin=(0, 0))
    u = affinity.translate(u, c, c)
    # pilot-drawn mission polygon
    nv = int(rng.integers(6, 10))
    t = np.sort(rng.uniform(0, 2 * np.pi, nv))
    rr = rng.uniform(0.52, 0.75, nv) * Sz
    mission = Polygon(np.c_[c + rr * np.cos(t), c + rr * np.sin(t)]).convex_hull
    fp = u.intersection(mission).intersection(box(0.3, 0.3, Sz - 0.3, Sz - 0.3))
    if fp.geom_type != "Polygon":
        fp = max(fp.geoms, key=lambda g: g.area)
    return fp, psi, spacing


# --------------------------------------------------------------------------------------
# main simulation
# --------------------------------------------------------------------------------------
def simulate(out, seed, n):
    t0 = time.time()
    rng = np.random.default_rng(seed)
    px = 0.05 if seed % 3 == 0 else float(np.round(rng.uniform(0.048, 0.055), 4))
    Sz = n * px
    cv = Canvas(n, px, rng)

    # --- place, date, sun, sky
    lat = float(rng.uniform(28.5, 35.5))
    lon = float(rng.uniform(117.0, 121.8))
    year = int(rng.integers(2022, 2026))
    date = dt.date(year, 4, 22) + dt.timedelta(days=int(rng.integers(0, 24)))
    hour = float(rng.uniform(8.5, 16.0))
    elev, az = sun_position(date, hour, lat, lon)
    sky = str(rng.choice(["clear", "hazy", "broken", "overcast"], p=[0.45, 0.25, 0.15, 0.15]))

    # --- layout
    L, tmpl = gen_layout(rng, Sz)
    theta = float(rng.uniform(-25, 25))
    ctr = (Sz / 2, Sz / 2)
    rot = lambda g: affinity.rotate(g, theta, origin=ctr)
    th = math.radians(theta)

    def rotpt(x, y):
        dx, dy = x - ctr[0], y - ctr[1]
        return (ctr[0] + dx * math.cos(th) - dy * math.sin(th),
                ctr[1] + dx * math.sin(th) + dy * math.cos(th))

    for _ in range(30):
        fp, psi, line_sp = footprint(rng, Sz)
        if 0.66 <= fp.area / Sz ** 2 <= 0.9:
            break
    fp_in = prep(fp.buffer(-1.2))
    imgbox = box(0, 0, Sz, Sz)

    # ---------------- poppy plots and ornamental poppies (choose before rendering)
    trees_geoms = [rot(Point(t["x"], t["y"]).buffer(t["r"])) for t in L.trees]
    tree_union = unary_union(trees_geoms) if trees_geoms else Polygon()
    solid = [rot(r["geom"]) for r in L.roofs] + [rot(w[0]) for w in L.walls] + \
            [rot(c[0]) for c in L.cars] + [rot(c[0]) for c in L.clutter]
    solid_union = unary_union(solid) if solid else Polygon()
    used = []

    def ok(g):
        if not fp_in.contains(g):
            return False
        if g.intersects(solid_union):
            return False
        if tree_union.intersection(g).area > 0.15 * g.area:
            return False
        return not any(g.distance(u) < 0.4 for u in used)

    nplots = int(rng.integers(8, 21))
    kinds = rng.choice(["courtyard", "patch", "strip", "mixed", "pot"], size=nplots * 3,
                       p=[0.25, 0.22, 0.21, 0.12, 0.20])
    field_beds = [b for b in L.beds if b["where"] == "field" and b["crop"] not in ("grass",)]
    mix_beds = [b for b in L.beds if b["crop"] in ("garlic", "broad_bean", "rapeseed", "radish",
                                                      "wheat", "vegetables", "cabbage")]
    court_beds = [b for b in L.beds if b["where"] in ("courtyard", "garden")]
    plots = []
    colours_main = ["white", "pink", "red", "purple"]
    for kind in kinds:
        if len(plots) >= nplots:
            break
        kind = str(kind)
        g = None
        ang = 0.0
        host = None
        for _try in range(12):
            if kind == "courtyard" and court_beds:
                b = court_beds[int(rng.integers(len(court_beds)))]
                bx0, by0, bx1, by1 = b["geom"].bounds
                A = float(np.clip(np.exp(rng.normal(math.log(1.5), 0.9)), 0.3, 10))
                if b["ang"] == 0.0:   # bed long axis x
                    wid = by1 - by0
                    ln = min(A / wid, bx1 - bx0)
                    xs = rng.uniform(bx0, bx1 - ln)
                    g0 = box(xs, by0, xs + ln, by1)
                else:
                    wid = bx1 - bx0
                    ln = min(A / wid, by1 - by0)
                    ys = rng.uniform(by0, by1 - ln)
                    g0 = box(bx0, ys, bx1, ys + ln)
                g0 = jitter_poly(g0, rng, 0.06)
                ang = b["ang"]
                host = b
            elif kind == "patch" and L.cand["patch"]:
                p = L.cand["patch"][int(rng.integers(len(L.cand["patch"])))]
                s = math.sqrt(rng.uniform(0.25, 0.5))
                x_, y_ = p.bounds[0], p.bounds[1]
                g0 = jitter_poly(box(x_, y_, x_ + s, y_ + s * rng.uniform(0.8, 1.2)), rng, 0.04)
            elif kind == "strip" and field_beds:
                b = field_beds[int(rng.integers(len(field_beds)))]
                bx0, by0, bx1, by1 = b["geom"].bounds
                wid = rng.uniform(0.3, 0.6)
                ln = float(np.clip(np.exp(rng.normal(math.log(2.2), 0.7)), 0.8, 8.0))
                if b["ang"] == 0.0:
                    ln = min(ln, bx1 - bx0)
                    xs = rng.uniform(bx0, bx1 - ln)
                    yy = by0 if rng.random() < 0.5 else by1 - wid
                    g0 = box(xs, yy, xs + ln, yy + wid)
                else:
                    ln = min(ln, by1 - by0)
                    ys = rng.uniform(by0, by1 - ln)
                    xx = bx0 if rng.random() < 0.5 else bx1 - wid
                    g0 = box(xx, ys, xx + wid, ys + ln)
                ang = b["ang"]
                host = b
            elif kind == "mixed" and mix_beds:
                b = mix_beds[int(rng.integers(len(mix_beds)))]
                bx0, by0, bx1, by1 = b["geom"].bounds
                A = rng.uniform(0.8, 6.0)
                ex = min(math.sqrt(A / math.pi) * rng.uniform(0.8, 1.6), (bx1 - bx0) / 2)
                ey = min(A / (math.pi * ex), (by1 - by0) / 2)
                cx_ = rng.uniform(bx0 + ex, bx1 - ex) if bx1 - bx0 > 2 * ex else (bx0 + bx1) / 2
                cy_ = rng.uniform(by0 + ey, by1 - ey) if by1 - by0 > 2 * ey else (by0 + by1) / 2
                g0 = jitter_poly(affinity.scale(Point(cx_, cy_).buffer(1.0, 8), ex, ey), rng, 0.05)
                g0 = g0.intersection(b["geom"])
                ang = b["ang"]
                host = b
            elif kind == "pot":
                # a pot (or a group of 2-3) standing on a courtyard pavement
                cands = [r for r in L.roofs if r["eave"] > 3]
                if not cands:
                    break
                r_ = cands[int(rng.integers(len(cands)))]
                hx0, hy0, hx1, hy1 = r_["geom"].bounds
                npots = int(rng.choice([1, 1, 2, 3]))
                rp = rng.uniform(0.15, 0.3)
                sx = rng.uniform(hx0 + 0.5, max(hx0 + 0.6, hx1 - 0.5 - 2 * rp * npots))
                sy = hy1 + rng.uniform(0.4, 3.0)
                circles = [Point(sx + rp + i * (2 * rp + 0.05), sy).buffer(rp, 12) for i in range(npots)]
                g0 = unary_union(circles).convex_hull
                host = {"pots": circles, "r": rp}
            else:
                break
            g = rot(g0)
            if g.is_empty or g.area < 0.05 or not ok(g):
                g = None
                continue
            if kind == "pot":
                # must lie on pavement (not on a bed or a building)
                if any(rot(b["geom"]).intersects(g) for b in L.beds):
                    g = None
                    continue
            break
        if g is None:
            continue
        ncol = 1 if rng.random() < 0.6 else 2
        cols = list(rng.choice(colours_main, size=ncol, replace=False,
                               p=[0.35, 0.25, 0.2, 0.2]))
        stage = str(rng.choice(["peak", "early", "late"], p=[0.6, 0.2, 0.2]))
        used.append(g)
        plots.append(dict(geom=g, kind=kind, colours=[str(c) for c in cols], stage=stage,
                          ang=ang + th, host=host))
    # ornamental corn poppy bed
    orn = []
    if rng.random() < 0.65:
        pool = [("verge", v) for v in L.cand["verge"]] + [("bed", b["geom"]) for b in court_beds]
        rng.shuffle(pool)
        for src, v in pool:
            bx0, by0, bx1, by1 = v.bounds
            A = rng.uniform(2, 10)
            if src == "verge":
                hgt = by1 - by0
                ln = min(A / hgt, bx1 - bx0)
                g0 = box(bx0, by0, bx0 + ln, by1)
            else:
                g0 = v
            g = rot(g0)
            if ok(g):
                used.append(g)
                orn.append(dict(geom=g, colours=["red"] if rng.random() < 0.6 else ["red", "pink"]))
                break

    # ---------------- render ground
    for g, spec, tex in L.ground:
        cv.fill(rot(g), SPEC[spec], tex=tex)
    for j in L.joints:
        cv.fill(rot(j), SPEC["asphalt"], tex=(0, 0, 0), bright=1.0)
    # crops
    for i, b in enumerate(L.beds):
        g = rot(b["geom"])
        if not g.intersects(imgbox):
            continue
        render_crop(cv, g, b["crop"], b["ang"] + th, rng, salt=1000 + i)
    # poppy plots
    for i, p in enumerate(plots):
        render_poppy(cv, p, rng, salt=5000 + 37 * i, rot=rot, th=th)
    for i, o in enumerate(orn):
        pal = [("rhoeas_red", 1.0)] if o["colours"] == ["red"] else [("rhoeas_red", 0.6), ("rhoeas_pink", 0.4)]
        plant_layer(cv, o["geom"], ang=th, su=0.15, sv=0.15, r0=0.075, rsd=0.3, jit=0.9,
                    pres=0.9, salt=9000 + i, leaf="rhoeas_leaf", lobes=7, lobe_amp=0.3,
                    height=0.6, ss=4, base="soil_moist",
                    flowers=dict(nslot=4, p=0.6, rf=0.03, rfsd=0.2, spread=1.1, palette=pal))
    # peonies
    for i, (x_, y_, r_) in enumerate(L.peonies):
        cx_, cy_ = rotpt(x_, y_)
        g = lobed_circle(cx_, cy_, r_, rng, lobes=6, amp=0.15)
        col = str(rng.choice(["peony_pink", "peony_red", "peony_white"]))
        plant_layer(cv, g, ang=th, su=0.3, sv=0.3, r0=0.2, rsd=0.2, jit=0.5, pres=1.0,
                    salt=9500 + i, leaf="peony_leaf", lobes=5, lobe_amp=0.2, height=0.8, ss=3,
                    flowers=dict(nslot=3, p=0.6, rf=0.07, rfsd=0.25, spread=1.0,
                                 palette=[(col, 1.0)]))
    # pots (non-poppy)
    for i, pt in enumerate(L.pots):
        cx_, cy_ = rotpt(pt["x"], pt["y"])
        render_pot(cv, cx_, cy_, pt["r"], pt["mat"], pt["content"], rng, salt=7000 + 13 * i, th=th)
    for i, bx in enumerate(L.boxes):
        g = rot(bx["geom"])
        cv.fill(g, SPEC["foam_white"], tex=(0.02, 0.02, 0.02))
        cv.set_height("hsolid", g, 0.3)
        inner = g.buffer(-0.04)
        if not inner.is_empty:
            cv.fill(inner, SPEC["soil_moist"], tex=(0.1, 0.1, 0.05))
            if bx["content"] != "empty":
                render_crop_small(cv, inner, bx["content"], rng, 7500 + i, th)
    for g, kind, hh in L.clutter:
        g = rot(g)
        cv.fill(g, SPEC[kind], tex=(0.05, 0.08, 0.05))
        cv.set_height("hsolid", g, hh)
    for g, spec in L.cars:
        g = rot(g)
        cv.fill(g, SPEC[spec], tex=(0.01, 0.01, 0.01))
        cv.set_height("hsolid", g, 1.5)
    # ---------------- buildings and walls
    for r in L.roofs:
        render_roof(cv, r, rot, th, rng, elev, az)
    for g, h, spec in L.walls:
        g = rot(g)
        cv.fill(g, SPEC[spec], tex=(0.03, 0.05, 0.03))
        cv.set_height("hsolid", g, h)
    # ---------------- trees
    for i, t in enumerate(L.trees):
        cx_, cy_ = rotpt(t["x"], t["y"])
        render_tree(cv, cx_, cy_, t["r"], t["h"], t["kind"], rng)

    # ---------------- radiometry
    img = radiometry(cv, rng, elev, az, sky, psi, line_sp)

    # footprint mask with ragged edges
    m_fp = cv.mask(fp, (0, n, 0, n), 1)
    dist_in = ndimage.distance_transform_edt(m_fp) * px
    dist_out = ndimage.distance_transform_edt(~m_fp) * px
    sd = np.where(m_fp, dist_in, -dist_out)
    rag = fbm(n, rng, cells=(8, 16, 32, 64))
    valid = (sd + 0.6 * rag) > 0
    valid = ndimage.binary_opening(valid, iterations=2)
    lab, nl = ndimage.label(valid)
    if nl > 1:
        sizes = ndimage.sum(valid, lab, range(1, nl + 1))
        valid = lab == (1 + int(np.argmax(sizes)))

    # ---------------- write
    os.makedirs(out, exist_ok=True)
    zone = 32650 if lon < 120 else 32651
    tr_utm = Transformer.from_crs(4326, zone, always_xy=True)
    E0, N0 = tr_utm.transform(lon, lat)
    E0 = round((E0 - Sz / 2) / px) * px
    N0 = round((N0 + Sz / 2) / px) * px
    transform = Affine(px, 0, E0, 0, -px, N0)
    stamp = date.strftime("%Y%m%d")
    fname = os.path.join(out, f"flight_{stamp}.tif")
    for f in os.listdir(out):
        if f.startswith("flight_") and f.endswith(".tif"):
            os.remove(os.path.join(out, f))
    enc = ["float32", "uint16_32768", "float32", "uint16_1e4"][seed % 4]
    prof = dict(driver="GTiff", width=n, height=n, count=5, crs=f"EPSG:{zone}",
                transform=transform, tiled=True, blockxsize=256, blockysize=256,
                compress="deflate", interleave="pixel")
    if enc == "float32":
        data = np.where(valid[None], img, np.nan).astype(np.float32)
        prof.update(dtype="float32", nodata=float("nan"), predictor=3)
        scale = None
    else:
        scale = 1 / 32768 if enc == "uint16_32768" else 1e-4
        dn = np.clip(np.round(img / scale), 1, 65534).astype(np.uint16)
        data = np.where(valid[None], dn, 0).astype(np.uint16)
        prof.update(dtype="uint16", nodata=0, predictor=2)
    with rasterio.open(fname, "w", **prof) as dst:
        dst.write(data)
        for i, b in enumerate(BANDS):
            dst.set_band_description(i + 1, b)
        tags = dict(ACQUISITION_DATE=date.isoformat())
        if enc == "uint16_32768":
            tags["TIFFTAG_SOFTWARE"] = "Agisoft Metashape Professional 2.1.2"
        dst.update_tags(**tags)
        if scale is not None:
            dst.scales = [scale] * 5
            dst.offsets = [0.0] * 5

    # ---------------- vectors
    to_ll = Transformer.from_crs(zone, 4326, always_xy=True)

    def to_wgs(g):
        def f(c):
            lo_, la_ = to_ll.transform(E0 + c[:, 0], N0 - c[:, 1])
            return np.c_[lo_, la_]
        g = shapely.transform(g, f)
        g = orient(g, 1.0)
        return g

    def gj(g):
        d = mapping(g)
        def rnd(c):
            if isinstance(c[0], (float, int)):
                return [round(float(c[0]), 7), round(float(c[1]), 7)]
            return [rnd(cc) for cc in c]
        d = dict(type=d["type"], coordinates=rnd(d["coordinates"]))
        return d

    truth = []
    for i, p in enumerate(plots):
        g = p["geom"]
        col = "+".join(p["colours"])
        geo = gj(to_wgs(g))
        if not shapely.geometry.shape(geo).is_valid:
            geo = gj(to_wgs(g.simplify(0.02).buffer(0)))
        truth.append(dict(type="Feature", geometry=geo,
                          properties=dict(id=f"P{i + 1:02d}", area_m2=round(g.area, 3),
                                          kind=p["kind"], colour=col, stage=p["stage"])))
    with open(os.path.join(out, "truth.geojson"), "w") as f:
        json.dump(dict(type="FeatureCollection", features=truth), f)

    labels = []
    poppy_geoms = [p["geom"] for p in plots]
    poppy_buf = unary_union([g.buffer(0.3) for g in poppy_geoms]) if poppy_geoms else Polygon()
    nl_p = int(round(len(plots) * rng.uniform(0.4, 0.6)))
    for j in rng.permutation(len(plots))[:nl_p]:
        g0 = plots[j]["geom"].simplify(0.04)
        g = jitter_poly(g0, rng, 0.03).buffer(0)
        if g.is_empty or g.geom_type != "Polygon" or abs(g.area - g0.area) > 0.3 * g0.area:
            g = g0
        labels.append((g, "poppy"))
    fp_lab = fp.buffer(-1.0)
    cands = []
    for b in L.beds:
        cls = {"vegetables": "vegetables", "bare_soil": "bare_soil", "plastic_mulch": "plastic_mulch",
               "grass": "grass"}.get(b["crop"], b["crop"])
        cands.append((rot(b["geom"]).buffer(-0.1), cls))
    for g, cls in L.labels:
        cands.append((rot(g), cls))
    for t, tg in zip(L.trees, trees_geoms):
        cands.append((tg.buffer(-0.3).simplify(0.1), "tree"))
    for o in orn:
        cands.append((o["geom"].buffer(-0.05), "ornamental_poppy"))
    for i, (x_, y_, r_) in enumerate(L.peonies):
        cands.append((Point(*rotpt(x_, y_)).buffer(r_ * 0.9, 6), "ornamental_flowers"))
    order = rng.permutation(len(cands))
    n_other = int(rng.integers(15, 31))
    taken = []
    orn_forced = [k for k, (g, c) in enumerate(cands) if c == "ornamental_poppy"]
    if orn_forced and rng.random() < 0.75:
        order = np.r_[orn_forced, [k for k in order if k not in orn_forced]]
    for k in order:
        if len(taken) >= n_other:
            break
        g, cls = cands[int(k)]
        if g.is_empty:
            continue
        # analyst digitises a representative part of large objects
        if g.area > 25:
            cx_, cy_ = g.representative_point().coords[0]
            s = rng.uniform(2.5, 4.5)
            g = g.intersection(box(cx_ - s, cy_ - s, cx_ + s, cy_ + s))
        g = g.intersection(fp_lab)
        if g.is_empty or g.area < 0.3:
            continue
        if g.geom_type != "Polygon":
            g = max(g.geoms, key=lambda q: q.area) if hasattr(g, "geoms") else None
            if g is None or g.geom_type != "Polygon" or g.area < 0.3:
                continue
        if g.intersects(poppy_buf):
            continue
        if any(g.intersects(t) for t in taken):
            continue
        g = jitter_poly(g.simplify(0.05), rng, 0.03).buffer(0)
        if g.is_empty or g.geom_type != "Polygon" or g.intersects(poppy_buf):
            continue
        taken.append(g)
        labels.append((g, cls))
    feats = []
    for g, c in labels:
        geo = gj(to_wgs(g))
        if not shapely.geometry.shape(geo).is_valid:      # rounding to 1e-7 deg broke it
            geo = gj(to_wgs(g.simplify(0.05).buffer(0)))
            if not shapely.geometry.shape(geo).is_valid:
                continue
        feats.append(dict(type="Feature", geometry=geo, properties={"class": c}))
    with open(os.path.join(out, "labels.geojson"), "w") as f:
        json.dump(dict(type="FeatureCollection", features=feats), f)

    meta = dict(seed=seed, size=n, pixel_m=px, crs=f"EPSG:{zone}", lat=lat, lon=lon,
                date=date.isoformat(), beijing_hour=round(hour, 2), sun_elev=round(elev, 2),
                sun_az=round(az, 2), sky=sky, encoding=enc, layout=tmpl, village_rotation=theta,
                flight_dir=psi, valid_fraction=float(valid.mean()), n_poppy=len(plots),
                n_poppy_ge_0_5=int(sum(p["geom"].area >= 0.5 for p in plots)),
                ornamental_poppy=len(orn), labels=dict(zip(*np.unique([c for _, c in labels],
                                                                       return_counts=True))),
                radiometry=cv.meta, seconds=round(time.time() - t0, 1))
    meta["labels"] = {str(k): int(v) for k, v in meta["labels"].items()}
    with open(os.path.join(out, "scene.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta, fname


def render_crop_small(cv, g, content, rng, salt, th):
    if content == "garlic":
        plant_layer(cv, g, ang=th, su=0.15, sv=0.12, r0=0.08, jit=0.3, pres=0.95, salt=salt,
                    leaf="garlic", lobes=6, star=True, height=0.4, cover=0.8, ss=3)
    else:
        plant_layer(cv, g, ang=th, su=0.2, sv=0.2, r0=0.1, jit=0.5, pres=0.9, salt=salt,
                    leaf="greens", lobes=6, lobe_amp=0.15, height=0.25, ss=3)


def render_pot(cv, cx, cy, r, mat, content, rng, salt, th, poppy=None):
    g = Point(cx, cy).buffer(r, 16)
    cv.fill(g, SPEC[mat], tex=(0.02, 0.03, 0.02))
    cv.set_height("hsolid", g, 0.3)
    inner = Point(cx, cy).buffer(r * 0.85, 16)
    cv.fill(inner, SPEC["soil_moist"], tex=(0.05, 0.05, 0.05))
    if poppy is not None:
        cols, stage = poppy
        fl = poppy_flowers(cols, stage, rng)
        plant_layer(cv, Point(cx, cy).buffer(r * 1.3, 16), ang=th, su=0.22, sv=0.22, r0=0.12,
                    rsd=0.2, jit=0.4, pres=0.95, salt=salt, leaf="poppy_leaf", lobes=5,
                    lobe_amp=0.3, height=0.9, ss=4, flowers=fl)
        return
    if content == "empty":
        return
    fl = None
    if content == "rose":
        fl = dict(nslot=4, p=0.6, rf=0.03, rfsd=0.25, spread=0.9,
                  palette=[(str(rng.choice(["rose_red", "peony_pink", "peony_white"])), 1.0)])
    elif content == "geranium":
        fl = dict(nslot=5, p=0.6, rf=0.025, rfsd=0.2, spread=0.9,
                  palette=[(str(rng.choice(["geranium_pink", "rose_red"])), 1.0)])
    plant_layer(cv, Point(cx, cy).buffer(r * 1.25, 16), ang=th, su=r * 2.2, sv=r * 2.2,
                r0=r * 1.0, rsd=0.1, jit=0.1, pres=1.0, salt=salt, leaf="peony_leaf",
                lobes=6, lobe_amp=0.2, height=0.6, ss=4, flowers=fl)


def poppy_flowers(cols, stage, rng):
    pal = [(POPPY_PETAL[c], w) for c, w in zip(cols, [0.65, 0.35][:len(cols)] if len(cols) > 1 else [1.0])]
    if stage == "peak":
        p, extra = rng.uniform(0.45, 0.7), 0.12
    elif stage == "early":
        p, extra = rng.uniform(0.12, 0.25), 0.35
    else:
        p, extra = rng.uniform(0.05, 0.15), 0.5
    # buds / capsules are small green-glaucous discs sharing the slots
    tot = sum(w for _, w in pal)
    pal = [(nm, w / tot * p) for nm, w in pal] + [("poppy_capsule", extra)]
    return dict(nslot=5, p=min(0.95, p + extra), rf=0.036, rfsd=0.35, spread=1.15, palette=pal,
                capsule_r=0.018)


def render_poppy(cv, p, rng, salt, rot, th):
    g = p["geom"]
    fl = poppy_flowers(p["colours"], p["stage"], rng)
    kind = p["kind"]
    if kind == "pot":
        for i, c in enumerate(p["host"]["pots"]):
            c = rot(c)
            x_, y_ = c.centroid.coords[0]
            render_pot(cv, x_, y_, p["host"]["r"], str(rng.choice(["pot_terracotta", "pot_black",
                                                                   "foam_white"])),
                       None, rng, salt + i, th, poppy=(p["colours"], p["stage"]))
        return
    if kind == "mixed":
        plant_layer(cv, g, ang=p["ang"], su=rng.uniform(0.32, 0.5), sv=rng.uniform(0.32, 0.5),
                    r0=rng.uniform(0.09, 0.13), rsd=0.3, jit=0.9, pres=rng.uniform(0.45, 0.7),
                    salt=salt, leaf="poppy_leaf", lobes=5, lobe_amp=0.3, height=1.0, ss=4,
                    flowers=fl)
        return
    soil = "soil_moist" if rng.random() < 0.6 else "soil_dry"
    cv.fill(g, SPEC[soil], tex=(0.1, 0.08, 0.05))
    win = cv.window(g)
    if win is not None:
        r0, r1, c0, c1 = win
        cv.hveg[r0:r1, c0:c1][cv.mask(g, win, 1)] = 0.0
    if kind == "strip":
        su, sv = 0.25, rng.uniform(0.18, 0.26)
    else:
        su = sv = rng.uniform(0.18, 0.3)
    plant_layer(cv, g, ang=p["ang"], su=su, sv=sv, r0=rng.uniform(0.09, 0.14), rsd=0.3,
                jit=0.8, pres=rng.uniform(0.75, 0.95), salt=salt, leaf="poppy_leaf", lobes=5,
                lobe_amp=0.3, height=rng.uniform(0.7, 1.1), ss=4, flowers=fl)


def render_roof(cv, r, rot, th, rng, elev, az):
    g = rot(r["geom"])
    win = cv.window(g)
    if win is None:
        return
    r0, r1, c0, c1 = win
    res = cv.fill(g, SPEC[r["mat"]], tex=(0.05, 0.04, 0.03))
    if res is None:
        return
    X, Y = cv.samples(win, 1)
    # village-frame coordinates (inverse rotation about scene centre)
    c = cv.n * cv.px / 2
    dx, dy = X - c, Y - c
    vx = c + dx * math.cos(th) + dy * math.sin(th)
    vy = c - dx * math.sin(th) + dy * math.cos(th)
    bx0, by0, bx1, by1 = r["geom"].bounds
    m = cv.mask(g, win, 1)
    sl = (slice(r0, r1), slice(c0, c1))
    se = math.sin(math.radians(elev))
    sun = np.array([math.sin(math.radians(az)) * math.cos(math.radians(elev)),
                    -math.cos(math.radians(az)) * math.cos(math.radians(elev)), se])
    R = cv.refl[:, r0:r1, c0:c1]
    if r["type"] in ("gable", "steel"):
        s = math.radians(r["slope"])
        if r["ridge_axis"] == "x":
            mid = (by0 + by1) / 2
            dist = np.abs(vy - mid)
            side = np.sign(vy - mid)   # +1 south half (faces south, +y)
            nvx, nvy = np.zeros_like(side), side * math.sin(s)
            along = vx
            halfw = (by1 - by0) / 2
        else:
            mid = (bx0 + bx1) / 2
            dist = np.abs(vx - mid)
            side = np.sign(vx - mid)
            nvx, nvy = side * math.sin(s), np.zeros_like(side)
            along = vy
            halfw = (bx1 - bx0) / 2
        h = r["eave"] + (halfw - dist) * math.tan(s)
        # rotate the normal's horizontal part into the image frame
        nx = nvx * math.cos(th) - nvy * math.sin(th)
        ny = nvx * math.sin(th) + nvy * math.cos(th)
        nz = math.cos(s)
        cosi = nx * sun[0] + ny * sun[1] + nz * sun[2]
        f = np.clip(cosi, 0, None) / se
        period = 0.2 if r["type"] == "gable" else 0.25
        stripes = 1 + 0.07 * np.cos(2 * np.pi * along / period)
        R[:, m] *= stripes[m][None]
        ridge = dist < 0.12
        if r["type"] == "gable":
            R[:, m & ridge] *= 0.8
        D = cv.dirf[r0:r1, c0:c1]
        D[m] = f[m]
        H = cv.hsolid[r0:r1, c0:c1]
        H[m] = np.maximum(H[m], h[m])
    else:
        H = cv.hsolid[r0:r1, c0:c1]
        H[m] = np.maximum(H[m], r["eave"])
        # parapet rim
        rim = g.difference(g.buffer(-0.25))
        cv.fill(rim, SPEC["wall_top_grey"], tex=(0.02, 0.03, 0.02))
        cv.set_height("hsolid", rim, r["eave"] + 0.6)
        if r.get("solar"):
            w_, d_ = rng.uniform(1.6, 2.4), rng.uniform(1.4, 1.8)
            px_ = rng.uniform(bx0 + 0.6, max(bx0 + 0.7, bx1 - w_ - 0.6))
            py_ = rng.uniform(by0 + 0.6, max(by0 + 0.7, by1 - d_ - 0.6))
            panel = rot(box(px_, py_ + 0.35, px_ + w_, py_ + d_))
            tank = rot(box(px_, py_, px_ + w_, py_ + 0.35))
            cv.fill(panel, SPEC["solar_tubes"], tex=(0.02, 0.05, 0.02))
            cv.fill(tank, SPEC["steel_tank"], tex=(0.02, 0.02, 0.02))
            cv.set_height("hsolid", panel, r["eave"] + 1.0)
            cv.set_height("hsolid", tank, r["eave"] + 1.6)
        # stains
        R[:, m] *= (1 + 0.06 * cv.n_med[sl][m])[None]


def render_tree(cv, cx, cy, r, h, kind, rng):
    g = lobed_circle(cx, cy, r, rng, lobes=int(rng.integers(5, 9)), amp=0.12)
    win = cv.window(g)
    if win is None:
        return
    r0, r1, c0, c1 = win
    ss = 2
    X, Y = cv.samples(win, ss)
    m = cv.mask(g, win, ss)
    d = np.hypot(X - cx, Y - cy) / r
    dome = np.sqrt(np.clip(1 - d ** 2, 0, 1))
    sl = (slice(r0, r1), slice(c0, c1))
    # leaf clumps: medium noise (upsampled) + per-sample fine noise
    clump = np.repeat(np.repeat(cv.n_med[sl], ss, 0), ss, 1)
    fine = cv.rng.normal(0, 1, X.shape).astype(np.float32)
    bright = (0.55 + 0.35 * dome) * (1 + 0.22 * clump + 0.06 * fine)
    gaps = (clump < -1.3) & (d > 0.3)
    bright[gaps] *= 0.45
    spec = SPEC[kind] * (1 + rng.normal(0, 0.04, 5)).astype(np.float32)
    a = block_mean(m.astype(np.float32), ss)
    t = block_mean(spec[:, None, None] * bright[None] * m[None], ss)
    R = cv.refl[:, r0:r1, c0:c1]
    R[:] = R * (1 - a) + t
    hh = block_max(np.where(m, h * (0.55 + 0.45 * dome) * (1 + 0.05 * clump), 0).astype(np.float32), ss)
    Ht = cv.htree[r0:r1, c0:c1]
    np.maximum(Ht, hh, out=Ht)


# --------------------------------------------------------------------------------------
# radiometry: shadows, diffuse light, BRDF, mosaic, calibration, blur, noise
# --------------------------------------------------------------------------------------
def march(H, az, elev, px, step=1, recv=None):
    dx = math.sin(math.radians(az))
    dy = -math.cos(math.radians(az))
    te = math.tan(math.radians(elev))
    n = H.shape[0]
    hmax = float(H.max())
    if hmax <= 0:
        return np.zeros_like(H)
    kmax = int(min(hmax / (px * te), 1.5 * n)) + 1
    best = np.full(H.shape, -1e9, np.float32)
    last = None
    for k in range(1, kmax + 1, step):
        ox, oy = int(round(k * dx)), int(round(k * dy))
        if (ox, oy) == last:
            continue
        last = (ox, oy)
        ys0, ys1 = max(0, -oy), min(n, n - oy)
        xs0, xs1 = max(0, -ox), min(n, n - ox)
        if ys1 <= ys0 or xs1 <= xs0:
            break
        drop = np.float32(k * px * te)
        np.maximum(best[ys0:ys1, xs0:xs1], H[ys0 + oy:ys1 + oy, xs0 + ox:xs1 + ox] - drop,
                   out=best[ys0:ys1, xs0:xs1])
    excess = best - (H if recv is None else recv)
    return np.clip(excess / (px * te * step) + 0.5, 0, 1).astype(np.float32)


def radiometry(cv, rng, elev, az, sky, psi, line_sp):
    n, px = cv.n, cv.px
    meta = {}
    dif = DIFFUSE[sky].copy()
    se = math.sin(math.radians(elev))
    sun = np.array([math.sin(math.radians(az)) * math.cos(math.radians(elev)),
                    -math.cos(math.radians(az)) * math.cos(math.radians(elev)), se], np.float32)
    Hs = np.maximum(cv.hsolid, cv.hveg)
    recv = np.maximum(Hs, cv.htree)
    sh = march(Hs, az, elev, px, recv=recv)
    sh_t = march(cv.htree, az, elev, px, recv=recv)
    # trees do not shadow what stands above them
    trans = np.clip(0.12 + 0.25 * (cv.n_med > 0.9) + 0.1 * cv.n_fine, 0.05, 0.6)
    sunlit = (1 - sh) * (1 - sh_t * (1 - trans))
    sunlit = ndimage.gaussian_filter(sunlit, 0.6)
    # sky view reduction near tall objects
    Hall = np.maximum(Hs, cv.htree)
    around = ndimage.uniform_filter(ndimage.zoom(Hall[::4, ::4], 4, order=1)[:n, :n], 41)
    sv = 1 - 0.4 * np.clip((around - Hall) / 5.0, 0, 1)
    # direct-light factor: explicit for roofs, from canopy normals for vegetation
    Hv = ndimage.gaussian_filter(np.maximum(cv.hveg, cv.htree), 1.2)
    gy, gx = np.gradient(Hv, px)
    gx *= 0.5
    gy *= 0.5
    nrm = np.sqrt(gx * gx + gy * gy + 1)
    cosi = (-gx * sun[0] - gy * sun[1] + sun[2]) / nrm
    fveg = np.clip(1 + 0.6 * (np.clip(cosi, 0, None) / se - 1), 0.35, 1.7)
    dirf = np.where(np.isnan(cv.dirf), np.where(Hv > 0.03, fveg, 1.0), cv.dirf).astype(np.float32)
    # broken clouds: a soft cloud shadow drifting over part of the flight
    cloud = np.zeros((n, n), np.float32)
    if sky == "broken":
        c = fbm(n, rng, cells=(64, 128, 256, 512))
        thr = rng.uniform(0.3, 1.0)
        cloud = np.clip((c - thr) / 0.5, 0, 1).astype(np.float32)
    meta["cloud_fraction"] = float((cloud > 0.5).mean())
    direct = sunlit * dirf * (1 - 0.75 * cloud)
    out = np.empty_like(cv.refl)
    for b in range(5):
        E = (1 - dif[b]) * direct + dif[b] * sv
        out[b] = cv.refl[b] * E
    # mosaic: each source image contributes a Voronoi cell with its own residual gain,
    # vignetting and hot-spot (BRDF) gradient
    along = rng.uniform(11, 16)
    c = n * px / 2
    ps = math.radians(psi)
    pts = []
    for i in range(-6, 7):
        for j in range(-6, 7):
            u, v = i * along + rng.normal(0, 0.4), j * line_sp + rng.normal(0, 0.6)
            pts.append((c + u * math.cos(ps) - v * math.sin(ps), c + u * math.sin(ps) + v * math.cos(ps)))
    pts = np.array(pts)
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) * px
    tree = cKDTree(pts)
    _, idx = tree.query(np.c_[xs.ravel(), ys.ravel()], workers=2)
    idx = idx.reshape(n, n)
    ddx = xs - pts[idx, 0]
    ddy = ys - pts[idx, 1]
    r2 = (ddx ** 2 + ddy ** 2) / 20.0 ** 2
    g_img = rng.normal(1, 0.012 if sky != "broken" else 0.03, len(pts)).astype(np.float32)
    if sky == "broken":
        # irradiance sensor compensates the cloud shadow only partly, image by image
        ci = ndimage.map_coordinates(cloud, [np.clip(pts[:, 1] / px, 0, n - 1),
                                             np.clip(pts[:, 0] / px, 0, n - 1)], order=1)
        g_img = g_img / (1 - 0.75 * 0.6 * ci)
    sunh = sun[:2] / (np.linalg.norm(sun[:2]) + 1e-9)
    hot = 1 - 0.03 * (ddx * sunh[0] + ddy * sunh[1]) / 20.0 * (1 - 0.8 * (sky == "overcast"))
    vig = rng.uniform(0.01, 0.045, 5)
    gain_band = np.exp(rng.normal(0, 0.03, 5)) * math.exp(rng.normal(0, 0.03))
    blur = rng.uniform(0.45, 0.8)
    shifts = np.clip(rng.normal(0, 0.3, (5, 2)), -0.8, 0.8)
    shifts[1] = 0
    noise_k = np.array([1.4, 1.0, 1.1, 1.2, 1.2]) * rng.uniform(0.8, 1.4)
    for b in range(5):
        x = out[b] * g_img[idx] * (1 - vig[b] * r2) * hot * gain_band[b]
        x = ndimage.shift(x, shifts[b], order=1, mode="nearest")
        x = ndimage.gaussian_filter(x, blur * rng.uniform(0.9, 1.1))
        sig = np.sqrt(2e-5 * np.clip(x, 0, None) + 0.0018 ** 2) * noise_k[b]
        x = x + rng.normal(0, 1, x.shape).astype(np.float32) * sig
        out[b] = np.clip(x, 0.001, 1.4)
    meta.update(diffuse=dif.round(3).tolist(), gain_band=np.round(gain_band, 4).tolist(),
                blur_sigma_px=round(blur, 3), band_shift_px=np.round(shifts, 2).tolist(),
                vignetting=np.round(vig, 3).tolist(), shadow_fraction=float((sunlit < 0.5).mean()))
    cv.meta = meta
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    meta, fname = simulate(a.out, a.seed, a.size)
    print(f"{fname}: {meta['n_poppy']} poppy plots ({meta['n_poppy_ge_0_5']} >= 0.5 m2), "
          f"sky {meta['sky']}, sun {meta['sun_elev']:.0f}/{meta['sun_az']:.0f} deg, "
          f"{meta['encoding']}, valid {meta['valid_fraction']:.2f}, {meta['seconds']} s")


if __name__ == "__main__":
    main()
