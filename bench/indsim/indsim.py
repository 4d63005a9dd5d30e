#!/usr/bin/env python
"""indsim: an independent Sentinel-2 L2A scene simulator for spring poppy detection tests.

Designed from DOMAIN.md and the input contract only (see README.md). One run writes
L2A_YYYYMMDD.tif (13 bands), dem.tif, labels.geojson, truth.geojson and meta.json, plus the
diagnostic classes.tif (dominant land-cover class and poppy % per 10 m pixel).

Coordinates: everything is built in a local metric frame (e metres east of the scene's
upper-left corner, s metres south of it) on a fine 2.5 m grid (FINE = 4 sub-pixels per 10 m
pixel), then aggregated to 10/20/60 m.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import time

import numpy as np
import rasterio
import shapely
import shapely.ops
from affine import Affine
from pyproj import Transformer
from rasterio import features
from rasterio.transform import from_origin
from scipy import ndimage
from scipy.spatial import cKDTree
from shapely.geometry import Polygon, LineString, mapping, box
from shapely.geometry.polygon import orient
from shapely import affinity

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
WL = np.array([443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190], float)
NATIVE = np.array([60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 20, 20])
FINE = 4            # fine sub-pixels per 10 m pixel
FRES = 10.0 / FINE  # 2.5 m

# ---------------------------------------------------------------------------------------
# Spectral library (own values; surface reflectance at the 12 S2 band centres)
#            B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
SPEC = {k: np.array(v, np.float32) for k, v in {
    # leaves / canopies (full cover, multiple scattering included)
    "leaf_wheat":  [.025, .030, .072, .034, .100, .320, .420, .460, .470, .460, .220, .100],
    "wheat_ear":   [.040, .048, .095, .070, .140, .300, .370, .400, .410, .400, .260, .140],
    "leaf_rape":   [.030, .035, .085, .040, .115, .340, .450, .490, .500, .490, .230, .105],
    "leaf_garlic": [.052, .062, .102, .062, .125, .265, .340, .370, .380, .370, .250, .140],
    "leaf_poppy":  [.045, .055, .092, .042, .115, .305, .410, .455, .465, .455, .240, .120],  # glaucous; Jia 550 .09, 670 .04, NIR .46
    "leaf_bean":   [.028, .033, .080, .040, .110, .330, .430, .470, .480, .470, .230, .110],
    "leaf_veg":    [.030, .036, .090, .045, .120, .330, .420, .450, .460, .450, .240, .115],
    "leaf_grass":  [.030, .038, .080, .050, .120, .280, .350, .380, .390, .380, .250, .130],
    "leaf_tea":    [.020, .028, .060, .030, .090, .260, .340, .370, .380, .370, .180, .080],
    "tea_flush":   [.030, .040, .110, .060, .150, .330, .400, .430, .440, .430, .230, .110],
    "leaf_rhoeas": [.032, .040, .085, .046, .120, .310, .400, .430, .440, .430, .245, .125],  # corn poppy: green, hairy
    "leaf_decid":  [.025, .030, .070, .035, .100, .300, .390, .420, .430, .420, .200, .090],
    "leaf_evgbl":  [.020, .025, .050, .025, .080, .220, .290, .310, .320, .310, .150, .065],
    "leaf_conif":  [.015, .020, .040, .020, .060, .170, .230, .250, .260, .250, .110, .050],
    "leaf_bamboo": [.025, .032, .075, .035, .110, .300, .380, .410, .420, .410, .200, .090],
    "leaf_rice":   [.030, .035, .080, .045, .110, .300, .380, .410, .420, .410, .220, .100],
    "bark":        [.040, .050, .070, .090, .120, .160, .190, .210, .220, .230, .280, .200],
    "straw":       [.080, .100, .160, .220, .260, .290, .310, .330, .340, .350, .400, .300],
    "straw_dark":  [.050, .065, .100, .130, .160, .190, .210, .230, .240, .250, .300, .230],
    "drygrass":    [.060, .075, .110, .140, .170, .210, .240, .260, .270, .280, .340, .260],
    "poppy_caps":  [.050, .060, .110, .070, .140, .300, .370, .400, .410, .400, .260, .140],
    "poppy_dry":   [.060, .080, .130, .180, .220, .250, .280, .300, .310, .320, .380, .290],
    # petals (as a canopy layer fraction)
    "petal_white": [.450, .550, .620, .620, .630, .640, .650, .660, .660, .650, .300, .150],
    "petal_pink":  [.350, .400, .300, .550, .600, .620, .630, .640, .640, .630, .300, .150],
    "petal_red":   [.050, .050, .050, .450, .580, .620, .630, .640, .640, .630, .300, .150],
    "petal_purple": [.300, .300, .100, .250, .500, .600, .620, .630, .630, .620, .300, .150],
    "petal_yellow": [.050, .060, .350, .450, .500, .520, .540, .550, .550, .550, .300, .150],
    "petal_orange": [.050, .050, .200, .500, .580, .620, .630, .640, .640, .630, .300, .150],
    "petal_lilac": [.380, .440, .470, .500, .560, .600, .620, .630, .630, .620, .300, .150],
    "petal_bean":  [.280, .320, .330, .330, .420, .500, .540, .560, .560, .550, .290, .150],
    # soils and surfaces
    "soil_loess":  [.100, .120, .170, .220, .250, .270, .280, .290, .300, .310, .380, .320],
    "soil_red":    [.060, .070, .100, .170, .210, .240, .260, .270, .280, .290, .340, .300],
    "roof_grey":   [.090, .100, .110, .120, .130, .140, .140, .150, .150, .160, .190, .180],
    "roof_red":    [.060, .070, .090, .220, .280, .300, .310, .320, .320, .330, .380, .330],
    "roof_blue":   [.200, .220, .180, .120, .120, .130, .140, .150, .150, .150, .180, .160],
    "roof_concrete": [.220, .250, .280, .300, .310, .320, .320, .330, .330, .340, .370, .340],
    "roof_white":  [.330, .370, .400, .410, .420, .420, .430, .430, .430, .440, .450, .400],
    "concrete":    [.180, .200, .230, .250, .260, .270, .270, .280, .280, .290, .320, .300],
    "asphalt":     [.050, .055, .060, .065, .070, .075, .080, .085, .085, .090, .110, .100],
    "gravel":      [.120, .140, .170, .200, .220, .230, .240, .250, .250, .260, .300, .270],
    "water":       [.050, .055, .070, .040, .035, .020, .015, .012, .011, .008, .003, .002],
    "water_turbid": [.070, .080, .110, .090, .080, .050, .040, .035, .033, .025, .006, .004],
    "plastic":     [.300, .330, .350, .340, .350, .360, .370, .380, .380, .370, .320, .250],
    # atmosphere
    "cloud":       [.600, .570, .550, .540, .540, .540, .540, .540, .540, .480, .420, .260],
    "cirrus":      [.350, .330, .320, .320, .320, .320, .320, .320, .320, .300, .150, .080],
}.items()}
PETALS = ["petal_white", "petal_pink", "petal_red", "petal_purple", "petal_yellow",
          "petal_orange", "petal_lilac", "petal_bean"]
COLOUR_NAMES = ["white", "pink", "red", "purple", "yellow", "orange", "lilac", "bean", "mixed"]
PETAL_ARR = np.stack([SPEC[p] for p in PETALS] + [np.mean([SPEC[p] for p in PETALS[:4]], 0)])
ROOFS = ["roof_grey", "roof_red", "roof_blue", "roof_concrete", "roof_white"]
SURF = ["concrete", "asphalt", "gravel", "soil_loess", "water", "water_turbid", "plastic"]
FORESTMIX = np.stack([SPEC["leaf_evgbl"], SPEC["leaf_conif"], SPEC["leaf_bamboo"]])

CLASSES = ["none", "wheat", "rapeseed", "garlic", "broad_bean", "radish", "vegetables", "grass",
           "bare_soil", "paddy", "tea", "orchard", "forest", "shrub", "roof", "courtyard", "road",
           "water", "greenhouse", "ornamental_poppy", "poppy", "clearing", "tree"]
C = {n: i for i, n in enumerate(CLASSES)}
FIELD_CLASSES = ["wheat", "rapeseed", "garlic", "broad_bean", "radish", "vegetables", "grass",
                 "bare_soil", "paddy", "tea", "orchard"]
# Diagnostic land-cover codes of classes.tif (band 1). Code order matters only for ties: the
# lowest code wins, so poppy (1) wins a tie. Code 0 = parcel 0 (nothing assigned; renders as bare soil).
DIAG_CLASSES = ["none", "poppy", "wheat", "rapeseed", "garlic", "broad_bean", "radish",
                "vegetables", "vegetables_bolting", "grass", "grass_hill", "grass_gap", "farm_track",
                "bare_soil", "paddy_milk_vetch", "paddy_fallow", "orchard", "tea", "water_pond",
                "water_stream", "greenhouse", "roof", "courtyard", "village_lane", "road", "forest",
                "shrub", "yard_tree", "ravine_clearing", "ornamental_poppy_park", "corn_poppy_roadside"]
REGIONS = {
    "zhejiang": dict(lon=(119.6, 120.9), lat=(28.7, 30.2), soil="soil_red",
                     mix={"wheat": .13, "rapeseed": .22, "broad_bean": .10, "vegetables": .14,
                          "radish": .05, "garlic": .05, "paddy": .17, "bare_soil": .09,
                          "grass": .05},
                     terrace={"tea": .7, "orchard": .3}, strip_w=(6, 18)),
    "shandong": dict(lon=(117.6, 120.3), lat=(35.4, 36.8), soil="soil_loess",
                     mix={"wheat": .42, "garlic": .16, "rapeseed": .04, "vegetables": .12,
                          "radish": .05, "broad_bean": .04, "bare_soil": .12, "grass": .05},
                     terrace={"orchard": .75, "wheat": .25}, strip_w=(9, 28)),
}


# ---------------------------------------------------------------------------------------
def fbm(rng, shape, beta):
    """Gaussian random field with power spectrum k^-beta, zero mean, unit std (periodic)."""
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.sqrt(kx ** 2 + ky ** 2)
    k[0, 0] = 1.0
    amp = k ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = (rng.normal(size=amp.shape) + 1j * rng.normal(size=amp.shape)) * amp
    f = np.fft.irfft2(spec, s=shape)
    return ((f - f.mean()) / (f.std() + 1e-12)).astype(np.float32)


def sg(t, t0, k):
    return 1.0 / (1.0 + np.exp(-(t - t0) / k))


def plateau(t, t0, t1, k=3.0):
    return sg(t, t0, k) * (1.0 - sg(t, t1, k))


def smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def rect(cx, cy, w, h, ang_deg):
    """Rotated rectangle: w along the rotated x axis, h along y."""
    p = box(-w / 2, -h / 2, w / 2, h / 2)
    p = affinity.rotate(p, ang_deg, origin=(0, 0))
    return affinity.translate(p, cx, cy)


def blob(rng, cx, cy, area, elong=1.6, ang=0.0, n=14):
    """Irregular polygon of roughly the given area."""
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1 + 0.18 * rng.normal(size=n)
    r = np.clip(ndimage.uniform_filter1d(r, 3, mode="wrap"), 0.6, 1.5)
    x = r * np.cos(th) * elong
    y = r * np.sin(th) / elong
    p = Polygon(np.column_stack([x, y])).buffer(0)
    p = affinity.scale(p, math.sqrt(area / p.area), math.sqrt(area / p.area), origin=(0, 0))
    p = affinity.rotate(p, ang, origin=(0, 0))
    return affinity.translate(p, cx, cy)


def sun_angles(doy, lat, lon_offset_h=0.0, local_time=10.5):
    """Solar zenith/azimuth (deg, azimuth from north clockwise) at local solar time."""
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    phi = math.radians(lat)
    ha = math.radians(15.0 * (local_time - 12.0))
    cz = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    zen = math.acos(cz)
    az = math.atan2(-math.sin(ha) * math.cos(decl),
                    math.cos(phi) * math.sin(decl) - math.sin(phi) * math.cos(decl) * math.cos(ha))
    return math.degrees(zen), (math.degrees(az) + 360) % 360


# ---------------------------------------------------------------------------------------
class Parcels:
    """Parcel table: one row per land-cover object with phenology attributes."""
    FIELDS = dict(cls=np.int16, shift=np.float32, vig=np.float32, soilb=np.float32,
                  colour=np.int16, tfl=np.float32, ffmax=np.float32, mat=np.int16,
                  tev=np.float32, dens=np.float32, tex=np.float32)

    def __init__(self):
        self.rows = {k: [0] for k in self.FIELDS}   # parcel 0 = none

    def add(self, cls, **kw):
        for k in self.FIELDS:
            self.rows[k].append(kw.get(k, C[cls] if k == "cls" else
                                       {"vig": 1.0, "soilb": 1.0, "dens": 1.0, "tex": 0.06}.get(k, 0)))
        return len(self.rows["cls"]) - 1

    def freeze(self):
        self.a = {k: np.asarray(v, dtype=t) for (k, t), v in
                  zip(self.FIELDS.items(), (self.rows[k] for k in self.FIELDS))}
        return self.a


def parcel_spectra(a, doy, soil_base, wet):
    """Per-parcel soil spectrum S, vegetation-layer spectrum V and cover fc for one date."""
    n = len(a["cls"])
    t = doy - a["shift"]
    S = np.tile(soil_base, (n, 1)) * a["soilb"][:, None]
    # soil wetness darkens (more in SWIR)
    wetf = np.clip(wet + 0.15 * (a["soilb"] - 1.0), 0, 1)[:, None]
    S = S * (1 - 0.30 * wetf * np.where(WL > 1500, 1.6, 1.0)[None, :])
    V = np.tile(SPEC["leaf_veg"], (n, 1))
    fc = np.zeros(n, np.float32)
    cls = a["cls"]
    vig = a["vig"]

    def sel(name):
        return np.nonzero(cls == C[name])[0]

    def petal(i):
        return PETAL_ARR[a["colour"][i]]

    # winter wheat: tillering Mar, jointing/heading Apr, yellowing late May, harvest early Jun
    i = sel("wheat")
    if len(i):
        ti = t[i]
        f = vig[i] * (0.35 + 0.60 * sg(ti, 88, 7))
        ear = 0.30 * sg(ti, 108, 4)
        sen = sg(ti, 146, 5)
        v = (1 - sen)[:, None] * ((1 - ear)[:, None] * SPEC["leaf_wheat"] + ear[:, None] * SPEC["wheat_ear"]) \
            + sen[:, None] * SPEC["straw"]
        harv = ti > a["tev"][i]
        f = np.where(harv, 0.45, f)
        v[harv] = SPEC["straw"]
        V[i], fc[i] = v, f
    # rapeseed: yellow flowering mid-March to mid-April, pods, harvest late May
    i = sel("rapeseed")
    if len(i):
        ti = t[i]
        f = vig[i] * (0.50 + 0.40 * sg(ti, 75, 7))
        fl = a["ffmax"][i] * plateau(ti, a["tfl"][i] - 13, a["tfl"][i] + 13)
        sen = sg(ti, 138, 5)
        v = (1 - sen)[:, None] * ((1 - fl)[:, None] * SPEC["leaf_rape"] + fl[:, None] * SPEC["petal_yellow"]) \
            + sen[:, None] * SPEC["straw_dark"]
        harv = ti > a["tev"][i]
        f = np.where(harv, 0.30, f)
        v[harv] = SPEC["straw"]
        V[i], fc[i] = v, f
    # garlic: glaucous, senescence early May, harvest mid/late May -> bare
    i = sel("garlic")
    if len(i):
        ti = t[i]
        f = vig[i] * (0.45 + 0.30 * sg(ti, 90, 8))
        sen = sg(ti, 128, 5)
        v = (1 - sen)[:, None] * SPEC["leaf_garlic"] + sen[:, None] * SPEC["straw"]
        harv = ti > a["tev"][i]
        f = np.where(harv, 0.04, f)
        v[harv] = SPEC["straw"]
        V[i], fc[i] = v, f
    # broad bean: white/purple-black flowers Mar-Apr, pods May, harvest late May/June
    i = sel("broad_bean")
    if len(i):
        ti = t[i]
        f = vig[i] * (0.35 + 0.55 * sg(ti, 92, 8))
        fl = a["ffmax"][i] * plateau(ti, a["tfl"][i] - 14, a["tfl"][i] + 14)
        sen = sg(ti, 145, 5)
        v = (1 - sen - fl)[:, None] * SPEC["leaf_bean"] + fl[:, None] * SPEC["petal_bean"] \
            + sen[:, None] * SPEC["straw_dark"]
        harv = ti > a["tev"][i]
        f = np.where(harv, 0.05, f)
        V[i], fc[i] = v, f
    # bolting radish: white/lilac flowers April-early May
    i = sel("radish")
    if len(i):
        ti = t[i]
        f = vig[i] * (0.40 + 0.30 * sg(ti, 95, 8))
        fl = a["ffmax"][i] * plateau(ti, a["tfl"][i] - 14, a["tfl"][i] + 14)
        sen = sg(ti, 150, 6)
        v = (1 - sen - fl)[:, None] * SPEC["leaf_veg"] + fl[:, None] * petal(i) + sen[:, None] * SPEC["straw_dark"]
        V[i], fc[i] = v, f
    # garden / field vegetables: per-parcel cycles, some bolting with flowers
    i = sel("vegetables")
    if len(i):
        ti = t[i]
        f = np.clip(vig[i] * (0.45 + 0.3 * np.sin(2 * np.pi * (ti - a["tev"][i]) / 70.0)), 0.08, 0.9)
        fl = a["ffmax"][i] * plateau(ti, a["tfl"][i] - 10, a["tfl"][i] + 10)
        v = (1 - fl)[:, None] * SPEC["leaf_veg"] + fl[:, None] * petal(i)
        V[i], fc[i] = v, f
    # grass / field margins: brown in early March, green up, a little dry in June
    for name in ("grass", "clearing"):
        i = sel(name)
        if len(i):
            ti = t[i]
            base = 0.4 if name == "grass" else 0.25
            f = vig[i] * (base + 0.4 * sg(ti, 95, 10)) - 0.15 * sg(ti, 165, 8)
            dry = 0.35 * (1 - sg(ti, 88, 8)) + 0.3 * sg(ti, 160, 8)
            V[i] = (1 - dry)[:, None] * SPEC["leaf_grass"] + dry[:, None] * SPEC["drygrass"]
            fc[i] = f
    # bare / fallow (spring-sown crops later): weeds, tillage at tev
    i = sel("bare_soil")
    if len(i):
        ti = t[i]
        till = ti > a["tev"][i]
        f = np.where(till, 0.02 + 0.25 * sg(ti, a["tev"][i] + 25, 5), 0.05 + 0.15 * sg(ti, 105, 10) * vig[i])
        S[i] = np.where(till[:, None], S[i] * 0.85, S[i])
        V[i], fc[i] = SPEC["leaf_grass"], f
    # paddy: winter milk vetch (pink-purple bloom Apr) or fallow; ploughed, flooded, rice in June
    i = sel("paddy")
    if len(i):
        ti = t[i]
        tp = a["tev"][i]
        vetch = a["ffmax"][i] > 0
        fl = a["ffmax"][i] * plateau(ti, a["tfl"][i] - 12, a["tfl"][i] + 12)
        f = np.where(vetch, vig[i] * (0.45 + 0.45 * sg(ti, 85, 7)), 0.10 + 0.1 * sg(ti, 100, 10))
        v = (1 - fl)[:, None] * SPEC["leaf_bean"] + fl[:, None] * SPEC["petal_purple"] * 0.6 \
            + fl[:, None] * SPEC["petal_pink"] * 0.4
        v[~vetch] = SPEC["leaf_grass"]
        plough = ti > tp
        flood = ti > tp + 7
        rice = ti > tp + 20
        f = np.where(plough, 0.0, f)
        S[i] = np.where(plough[:, None], S[i] * 0.7, S[i])
        S[i] = np.where(flood[:, None], SPEC["water_turbid"], S[i])
        f = np.where(rice, 0.08 + 0.25 * sg(ti, tp + 40, 6), f)
        v[rice] = SPEC["leaf_rice"]
        V[i], fc[i] = v, f
    # tea: evergreen rows, yellow-green flush Apr, pruned after spring picking
    i = sel("tea")
    if len(i):
        ti = t[i]
        fl = 0.5 * plateau(ti, 85, 115, 4)
        V[i] = (1 - fl)[:, None] * SPEC["leaf_tea"] + fl[:, None] * SPEC["tea_flush"]
        fc[i] = vig[i] * (0.75 - 0.15 * sg(ti, 150, 5))
    # orchard: blossom on bare branches early-mid April, leaf-out, grass understorey
    i = sel("orchard")
    if len(i):
        ti = t[i]
        bl = a["ffmax"][i] * plateau(ti, a["tfl"][i] - 8, a["tfl"][i] + 8)
        lf = sg(ti, a["tfl"][i] + 8, 5) * (1 - bl)
        V[i] = bl[:, None] * petal(i) + lf[:, None] * SPEC["leaf_decid"] + (1 - bl - lf)[:, None] * SPEC["bark"]
        fc[i] = 0.55 * vig[i]
        S[i] = 0.5 * S[i] + 0.5 * SPEC["leaf_grass"] * 0.7
    # forest / shrub / trees: evergreen mix + deciduous leaf-out in April
    for name in ("forest", "shrub", "tree"):
        i = sel(name)
        if len(i):
            ti = t[i]
            dec = a["dens"][i]           # deciduous fraction
            ev = FORESTMIX[a["mat"][i]]
            lo = sg(ti, 100, 6)
            V[i] = (1 - dec)[:, None] * ev + dec[:, None] * (lo[:, None] * SPEC["leaf_decid"]
                                                            + (1 - lo)[:, None] * SPEC["bark"])
            fc[i] = vig[i] * {"forest": 0.92, "shrub": 0.7, "tree": 0.9}[name]
            S[i] = 0.6 * S[i] + 0.4 * SPEC["drygrass"]
    # static surfaces
    i = sel("roof")
    if len(i):
        S[i] = np.stack([SPEC[ROOFS[m]] for m in a["mat"][i]]) * a["soilb"][i, None]
    for name in ("road", "water", "greenhouse", "courtyard"):
        i = sel(name)
        if len(i):
            S[i] = np.stack([SPEC[SURF[m]] if SURF[m] not in ("soil_loess",) else soil_base
                             for m in a["mat"][i]]) * a["soilb"][i, None]
            if name == "courtyard":      # pots, a few plants
                fc[i] = a["dens"][i] * (0.5 + 0.5 * sg(t[i], 95, 8))
                V[i] = SPEC["leaf_veg"]
    # ornamental corn poppy "flower sea": green hairy leaves, dense bloom Apr-May, mown after
    i = sel("ornamental_poppy")
    if len(i):
        ti = t[i]
        f = vig[i] * (0.25 + 0.62 * sg(ti, 98, 7))
        fl = a["ffmax"][i] * plateau(ti, a["tfl"][i] - 11, a["tfl"][i] + 11)
        sen = sg(ti, a["tfl"][i] + 16, 4)
        v = (1 - fl - sen * (1 - fl))[:, None] * SPEC["leaf_rhoeas"] + fl[:, None] * petal(i) \
            + (sen * (1 - fl))[:, None] * SPEC["drygrass"]
        mown = ti > a["tev"][i]
        f = np.where(mown, 0.15, f)
        v[mown] = SPEC["straw"]
        V[i], fc[i] = v, f
    # opium poppy: rosette Mar, fast growth Apr, bloom late Apr-mid May, capsules, drying Jun
    i = sel("poppy")
    if len(i):
        ti = t[i]
        tf = a["tfl"][i]
        f = a["dens"][i] * vig[i] * (0.08 + 0.85 * sg(ti, tf - 25, 7))
        fl = a["ffmax"][i] * plateau(ti, tf - 8, tf + 8, 2.5)
        dry = sg(ti, tf + 32, 5)
        cap = 0.35 * sg(ti, tf + 7, 3) * (1 - dry)
        leaf = np.clip(1 - fl - cap - dry, 0, 1)
        v = leaf[:, None] * SPEC["leaf_poppy"] + fl[:, None] * petal(i) + cap[:, None] * SPEC["poppy_caps"] \
            + dry[:, None] * SPEC["poppy_dry"]
        V[i], fc[i] = v, f
    return S.astype(np.float32), V.astype(np.float32), np.clip(fc, 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------
class Scene:
    def __init__(self, seed, size=256, prevalence=0.01):
        self.seed, self.S, self.prev = seed, size, prevalence
        self.rng = np.random.default_rng(seed)
        self.F = size * FINE
        self.ext = size * 10.0   # metres
        self.P = Parcels()
        self.log = {}
        self.role = {}     # parcel id -> sub-class name for classes.tif (bookkeeping only, no RNG)

    def tag(self, pid, role):
        """Record a parcel's diagnostic sub-class (classes.tif); returns pid unchanged."""
        self.role[int(pid)] = role
        return pid

    # ---------------- geography ----------------
    def setup_geo(self):
        rng = self.rng
        self.region = "zhejiang" if rng.random() < 0.5 else "shandong"
        R = REGIONS[self.region]
        lon = rng.uniform(*R["lon"])
        lat = rng.uniform(*R["lat"])
        zone = 50 if lon < 120 else 51
        self.epsg = 32600 + zone
        tr = Transformer.from_crs(4326, self.epsg, always_xy=True)
        x, y = tr.transform(lon, lat)
        self.x0 = math.floor((x - self.ext / 2) / 60.0) * 60.0
        self.y0 = math.ceil((y + self.ext / 2) / 60.0) * 60.0
        self.lat = lat
        self.to_wgs = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        self.year = int(rng.integers(2019, 2025))
        self.season_offset = float(rng.uniform(-10, 14))
        self.terrain_k = float(rng.uniform(0.35, 1.0))   # residual (uncorrected) share of terrain effect

    def terrain(self):
        rng, S = self.rng, self.S
        g = np.mgrid[0:S, 0:S].astype(np.float32)
        rows, cols = g[0] * 10 + 5, g[1] * 10 + 5        # s, e in metres (cell centres)
        phi = rng.uniform(0, np.pi)
        self.valley_ang = math.degrees(phi)
        c0 = self.ext / 2 + rng.uniform(-0.25, 0.25) * self.ext
        # distance to a meandering valley axis
        along = cols * math.cos(phi) + rows * math.sin(phi)
        across = -cols * math.sin(phi) + rows * math.cos(phi) - (-self.ext / 2 * math.sin(phi)
                                                                 + self.ext / 2 * math.cos(phi))
        across = across - (c0 - self.ext / 2) + 120 * np.sin(along / rng.uniform(500, 900) + rng.uniform(0, 6))
        W = rng.uniform(250, 520)
        self.valley_W = W
        hill = smoothstep((np.abs(across) - 0.55 * W) / (0.9 * W))
        b = fbm(rng, (S, S), 3.6)
        n2 = fbm(rng, (S, S), 3.0)
        ridge = 1 - np.exp(-2.2 * np.abs(n2))        # 0 along ravine lines
        A = rng.uniform(150, 380)
        floor = rng.uniform(15, 140)
        dem = floor + 0.004 * along + hill * A * (0.45 * (b - b.min()) / np.ptp(b) + 0.55 * ridge) \
            + 1.5 * fbm(rng, (S, S), 2.0) + hill * 20 * fbm(rng, (S, S), 2.6)
        self.dem = dem.astype(np.float32)
        self.hill = hill.astype(np.float32)
        self.across = across
        # fine-grid DEM / slope / aspect
        demf = ndimage.zoom(self.dem, FINE, order=3)
        demf = ndimage.shift(demf, (-(FINE - 1) / 2, -(FINE - 1) / 2), mode="nearest")  # centre alignment
        dy, dx = np.gradient(demf, FRES)            # dy: per metre southwards
        self.slope_f = np.arctan(np.hypot(dx, dy)).astype(np.float32)
        # aspect: direction of steepest descent, from north clockwise (east = +x, north = -row)
        self.aspect_f = np.arctan2(-dx, dy).astype(np.float32)   # descent vector (-dx east, +dy north)
        self.slope10 = np.degrees(np.arctan(np.hypot(*np.gradient(self.dem, 10.0))))
        tpi = self.dem - ndimage.gaussian_filter(self.dem, 8)
        self.tpi = tpi

    def fine(self, a, order=1):
        z = ndimage.zoom(a.astype(np.float32), FINE, order=order)
        return z[: self.F, : self.F]

    # ---------------- land cover ----------------
    def zones(self):
        rng, F = self.rng, self.F
        noise = fbm(rng, (self.S, self.S), 3.0)
        z = self.hill + 0.12 * noise + np.clip(self.slope10 - 6, 0, 30) / 45.0
        zf = self.fine(z)
        tpif = self.fine(self.tpi)
        self.zone = np.full((F, F), 3, np.int8)        # 0 farm, 1 terrace, 2 grass/shrub, 3 forest
        self.zone[zf < 0.75] = 2
        self.zone[zf < 0.55] = 1
        self.zone[zf < 0.33] = 0
        hillf = self.fine(self.hill)
        self.ravine_f = (tpif < -3.0) & (hillf > 0.6)
        self.zone[(self.zone == 3) & (tpif < -6) & (fbm(rng, (F, F), 3.0) > 0.3)] = 2
        self.hill_f = hillf

    def fields(self):
        rng, F = self.rng, self.F
        R = REGIONS[self.region]
        self.parcel = np.zeros((F, F), np.int32)
        self.field_geom = {}    # parcel -> (angle)
        ee = (np.arange(F) + 0.5) * FRES
        E, Sm = np.meshgrid(ee, ee)
        # farmland + terraces: Voronoi blocks of rotated strip parcels
        for zone_id, mix in ((0, R["mix"]), (1, R["terrace"])):
            m = self.zone == zone_id
            if m.sum() < 100:
                continue
            area = m.sum() * FRES ** 2
            K = max(2, int(area / rng.uniform(120, 190) ** 2))
            idx = np.flatnonzero(m)
            seeds = rng.choice(idx, K, replace=False)
            pts = np.column_stack([E.ravel()[seeds], Sm.ravel()[seeds]])
            tree = cKDTree(pts)
            d, nn = tree.query(np.column_stack([E.ravel()[idx], Sm.ravel()[idx]]), k=2, workers=2)
            blk = nn[:, 0]
            edge = (d[:, 1] - d[:, 0]) < 3.0          # farm tracks / ditches at block borders
            names = list(mix)
            pr = np.array([mix[k] for k in names])
            pr = pr / pr.sum()
            keys = np.zeros(len(idx), np.int64)
            bl_ang = np.zeros(K)
            bl_w = np.zeros(K)
            bl_L = np.zeros(K)
            for b in range(K):
                sel = blk == b
                if zone_id == 0:
                    ang = self.valley_ang + rng.normal(0, 25)
                else:   # terraces follow contours: strips perpendicular to local aspect
                    j = seeds[b]
                    ang = math.degrees(self.aspect_f.ravel()[j]) + 90 + rng.normal(0, 10)
                bl_ang[b] = ang
                th = math.radians(ang)
                w = rng.uniform(*R["strip_w"]) if zone_id == 0 else rng.uniform(4, 10)
                L = rng.uniform(40, 160)
                bl_w[b], bl_L[b] = w, L
                e, s = E.ravel()[idx[sel]], Sm.ravel()[idx[sel]]
                u = e * math.cos(th) + s * math.sin(th)
                v = -e * math.sin(th) + s * math.cos(th)
                strip = np.floor((v + rng.uniform(0, w)) / w).astype(np.int64)
                seg = np.floor((u + rng.uniform(0, L) + strip * rng.uniform(0, L)) / L).astype(np.int64)
                keys[sel] = (b * 100000 + (strip % 1000) * 100 + (seg % 100))
            ukeys, inv = np.unique(keys, return_inverse=True)
            dom = rng.choice(len(names), K, p=pr)
            pids = np.zeros(len(ukeys), np.int32)
            for k, key in enumerate(ukeys):
                b = int(key // 100000)
                ci = dom[b] if rng.random() < 0.55 else rng.choice(len(names), p=pr)
                pids[k] = self.add_crop(names[ci])
                self.field_geom[pids[k]] = (bl_ang[b], bl_w[b], bl_L[b])
            lab = pids[inv]
            # track / margin pixels
            lab[edge] = self.tag(self.add_parcel_static("grass", vig=0.8, tex=0.1), "farm_track") if zone_id == 0 else lab[edge]
            self.parcel.ravel()[idx] = lab
        # natural vegetation: Voronoi stands
        for zone_id, cname in ((2, "shrub"), (3, "forest")):
            m = self.zone == zone_id
            if not m.any():
                continue
            idx = np.flatnonzero(m)
            K = max(2, int(m.sum() * FRES ** 2 / 90 ** 2))
            seeds = rng.choice(idx, K, replace=False)
            tree = cKDTree(np.column_stack([E.ravel()[seeds], Sm.ravel()[seeds]]))
            _, nn = tree.query(np.column_stack([E.ravel()[idx], Sm.ravel()[idx]]), workers=2)
            pids = []
            for b in range(K):
                if cname == "shrub" and rng.random() < 0.5:
                    pids.append(self.tag(self.P.add("grass", shift=self.jit(6), vig=rng.uniform(0.7, 1.0), tex=0.12), "grass_hill"))
                    continue
                mat = int(rng.choice(3, p=[.5, .35, .15] if self.region == "zhejiang" else [.2, .75, .05]))
                dec = rng.uniform(0.05, 0.5) if self.region == "zhejiang" else rng.uniform(0.3, 0.9)
                pids.append(self.P.add(cname, shift=self.jit(5), vig=rng.uniform(0.85, 1.05), mat=mat,
                                       dens=dec, tex=0.18))
            self.parcel.ravel()[idx] = np.asarray(pids)[nn]

    def jit(self, sd):
        return self.season_offset + self.rng.normal(0, sd)

    def add_parcel_static(self, cls, **kw):
        kw.setdefault("shift", self.season_offset)
        return self.P.add(cls, **kw)

    def add_crop(self, name):
        rng = self.rng
        kw = dict(shift=self.jit(4), vig=rng.uniform(0.75, 1.02), soilb=rng.uniform(0.85, 1.15),
                  tex=rng.uniform(0.04, 0.09))
        if name == "wheat":
            kw["tev"] = rng.normal(158, 4)
        elif name == "rapeseed":
            kw.update(tfl=rng.normal(88, 4), ffmax=rng.uniform(0.45, 0.62), tev=rng.normal(150, 4))
        elif name == "garlic":
            kw["tev"] = rng.normal(139, 5)
        elif name == "broad_bean":
            kw.update(tfl=rng.normal(94, 5), ffmax=rng.uniform(0.08, 0.16), tev=rng.normal(156, 5))
        elif name == "radish":
            kw.update(tfl=rng.normal(112, 7), ffmax=rng.uniform(0.2, 0.4), colour=int(rng.choice([0, 6, 1], p=[.5, .35, .15])))
        elif name == "vegetables":
            kw.update(tev=rng.uniform(0, 70), colour=int(rng.choice([4, 0, 1, 6])),
                      ffmax=rng.uniform(0.08, 0.3) if rng.random() < 0.4 else 0.0, tfl=rng.uniform(70, 140))
        elif name == "bare_soil":
            kw["tev"] = rng.uniform(95, 150)
        elif name == "paddy":
            kw.update(tev=rng.normal(140, 6), tfl=rng.normal(102, 5),
                      ffmax=rng.uniform(0.15, 0.35) if rng.random() < 0.6 else 0.0)
        elif name == "orchard":
            kw.update(tfl=rng.normal(98, 4), ffmax=rng.uniform(0.2, 0.4), colour=int(rng.choice([0, 1], p=[.6, .4])))
        elif name == "tea":
            kw["tex"] = 0.12
        return self.P.add(name, **kw)

    # ---------------- vector objects ----------------
    def burn(self, items):
        """items: list of (polygon in local metres, parcel id); later items win."""
        if not items:
            return
        out = features.rasterize(((mapping(g), int(v)) for g, v in items if not g.is_empty),
                                 out_shape=(self.F, self.F), transform=Affine.scale(FRES), fill=0,
                                 dtype="int32")
        m = out > 0
        self.parcel[m] = out[m]

    def axis_line(self, offset):
        """Polyline parallel to the valley axis (local metres) at the given across offset."""
        S = self.S
        ac = self.across
        # trace where across == offset using row-wise search over the 10 m grid
        pts = []
        m = np.abs(ac - offset) < 8
        ii, jj = np.nonzero(m)
        if len(ii) < 5:
            return None
        th = math.radians(self.valley_ang)
        e, s = jj * 10 + 5.0, ii * 10 + 5.0
        u = e * math.cos(th) + s * math.sin(th)
        order = np.argsort(u)
        e, s, u = e[order], s[order], u[order]
        bins = np.arange(u.min(), u.max() + 40, 40)
        for b0 in bins:
            k = (u >= b0) & (u < b0 + 40)
            if k.any():
                pts.append((e[k].mean(), s[k].mean()))
        if len(pts) < 2:
            return None
        return LineString(pts).simplify(5)

    def infrastructure(self):
        rng = self.rng
        items = []
        # stream along the valley bottom, main road on one side
        stream = self.axis_line(rng.uniform(-40, 40))
        if stream is not None:
            self.stream = stream
            items.append((stream.buffer(rng.uniform(2.5, 5)),
                          self.tag(self.add_parcel_static("water", mat=5, soilb=rng.uniform(0.9, 1.1)), "water_stream")))
        road = self.axis_line(rng.choice([-1, 1]) * rng.uniform(0.25, 0.5) * self.valley_W)
        self.road = road
        if road is not None:
            items.append((road.buffer(rng.uniform(3, 4.5)), self.add_parcel_static("road", mat=int(rng.choice([0, 1])))))
        # ponds
        farm = np.argwhere(self.zone == 0)
        for _ in range(int(rng.integers(1, 4))):
            if len(farm) == 0:
                break
            r, c = farm[rng.integers(len(farm))]
            g = rect(c * FRES, r * FRES, rng.uniform(25, 70), rng.uniform(20, 50), self.valley_ang + rng.normal(0, 10))
            items.append((g, self.add_parcel_static("water", mat=int(rng.choice([4, 5])), soilb=rng.uniform(0.8, 1.2))))
            self.labels_cand.append(("water", g))
        # greenhouses
        n_gh = int(rng.integers(0, 3 if self.region == "zhejiang" else 5))
        for _ in range(n_gh):
            if len(farm) == 0:
                break
            r, c = farm[rng.integers(len(farm))]
            ang = self.valley_ang + rng.normal(0, 8)
            n = int(rng.integers(3, 9))
            L, w = rng.uniform(40, 80), rng.uniform(7, 10)
            th = math.radians(ang + 90)
            for k in range(n):
                g = rect(c * FRES + k * (w + 2) * math.cos(th), r * FRES + k * (w + 2) * math.sin(th), L, w, ang)
                items.append((g, self.add_parcel_static("greenhouse", mat=6, soilb=rng.uniform(0.8, 1.1))))
                if k == 0:
                    self.labels_cand.append(("greenhouse", g))
        self.burn(items)

    def villages(self):
        rng = self.rng
        cand = np.argwhere((self.hill_f > 0.08) & (self.hill_f < 0.55) & (np.degrees(self.slope_f) < 12)
                           & (self.zone <= 2))
        nv = int(rng.integers(2, 5))
        centres = []
        for _ in range(200):
            if len(centres) >= nv or len(cand) == 0:
                break
            r, c = cand[rng.integers(len(cand))]
            p = np.array([c * FRES, r * FRES])
            if all(np.hypot(*(p - q)) > 450 for q in centres):
                centres.append(p)
        self.courts, self.gaps, self.gardens, self.houses = [], [], [], []
        self.village_polys = []
        items = []
        for (cx, cy) in centres:
            Rv = rng.uniform(70, 170)
            ang = rng.normal(0, 12)
            rs = rng.uniform(20, 26)
            lane = rng.uniform(3, 4.5)
            th = math.radians(ang)
            ph1, ph2 = rng.uniform(0, 2 * np.pi, 2)

            def tolocal(u, v):
                return cx + u * math.cos(th) - v * math.sin(th), cy + u * math.sin(th) + v * math.cos(th)

            nrow = int(Rv // rs) + 1
            vil_items = []
            for r in range(-nrow, nrow + 1):
                v0 = r * rs
                hd = rng.uniform(8, 11)
                cd = rs - hd - lane
                # lane along the row (north side of the houses)
                lx, ly = tolocal(0, v0 - lane / 2)
                chord = 2 * math.sqrt(max(Rv ** 2 - v0 ** 2, 0.0)) * 1.15 + 12
                vil_items.append((rect(lx, ly, chord, lane, ang), self.tag(self.add_parcel_static("road", mat=0, soilb=rng.uniform(0.85, 1.1)), "village_lane"), "lane"))
                u = -Rv * 1.1
                while u < Rv * 1.1:
                    hw = rng.uniform(9, 16)
                    gap = 0.0 if rng.random() < 0.45 else rng.uniform(2.5, 6)
                    mid_u, mid_v = u + hw / 2, v0 + (hd + cd) / 2
                    phi_ = math.atan2(mid_v, mid_u)
                    rr = math.hypot(mid_u, mid_v) / (Rv * (1 + 0.22 * math.sin(2 * phi_ + ph1) + 0.15 * math.sin(3 * phi_ + ph2)))
                    if rr < 1.0:
                        if rr > 0.72 and rng.random() < 0.45:   # garden plot at the village edge
                            gx, gy = tolocal(mid_u, mid_v)
                            g = rect(gx, gy, hw + gap, hd + cd, ang)
                            pid = self.add_crop("vegetables")
                            vil_items.append((g, pid, "garden"))
                            self.gardens.append(dict(poly=g, ang=ang, w=hw + gap, h=hd + cd, c=(gx, gy), pid=pid))
                        else:
                            hx, hy = tolocal(mid_u, v0 + hd / 2)
                            hp = rect(hx, hy, hw, hd, ang)
                            mat = int(rng.choice(5, p=[.38, .25, .1, .2, .07]))
                            pid = self.add_parcel_static("roof", mat=mat, soilb=rng.uniform(0.85, 1.15), tex=0.0)
                            self.houses.append(hp)
                            cx2, cy2 = tolocal(mid_u, v0 + hd + cd / 2)
                            cp = rect(cx2, cy2, hw, cd, ang)
                            cmat = int(rng.choice([0, 3], p=[.6, .4]))
                            cpid = self.add_parcel_static("courtyard", mat=cmat, soilb=rng.uniform(0.85, 1.1),
                                                          dens=rng.uniform(0.0, 0.25), tex=0.1)
                            vil_items.append((cp, cpid, "court"))
                            vil_items.append((hp, pid, "house"))
                            self.courts.append(dict(poly=cp, ang=ang, w=hw, h=cd, c=(cx2, cy2), pid=cpid))
                            if rng.random() < 0.3:   # courtyard tree
                                tx, ty = tolocal(u + rng.uniform(2, hw - 2), v0 + hd + cd - 2)
                                vil_items.append((shapely.Point(tx, ty).buffer(rng.uniform(1.5, 3.5)),
                                                  self.P.add("tree", shift=self.jit(5), mat=0, dens=rng.uniform(.2, .9), tex=0.1), "tree"))
                            if gap > 0:
                                gx, gy = tolocal(u + hw + gap / 2, v0 + hd / 2)
                                gp = rect(gx, gy, gap, hd, ang)
                                gpid = self.tag(self.P.add("grass", shift=self.jit(6), vig=rng.uniform(0.5, 1.0), tex=0.15), "grass_gap")
                                vil_items.append((gp, gpid, "gap"))
                                self.gaps.append(dict(poly=gp, ang=ang, w=gap, h=hd, c=(gx, gy), pid=gpid))
                    u += hw + gap
            items += [(g, p) for g, p, _ in vil_items]
            self.village_polys.append(shapely.Point(cx, cy).buffer(Rv * 1.25))
            # connector road to the main road
            if self.road is not None:
                q = self.road.interpolate(self.road.project(shapely.Point(cx, cy)))
                items.insert(0, (LineString([(cx, cy), (q.x, q.y)]).buffer(2.2), self.add_parcel_static("road", mat=0)))
        self.burn(items)
        for hp in self.houses[:: max(1, len(self.houses) // 25)]:
            self.labels_cand.append(("village", hp))

    def ornamentals(self):
        rng = self.rng
        items = []
        farm = np.argwhere((self.zone == 0) & (np.degrees(self.slope_f) < 6))
        self.orn_polys = []
        if len(farm) and rng.random() < 0.9:
            r, c = farm[rng.integers(len(farm))]
            if self.road is not None and rng.random() < 0.7:
                q = self.road.interpolate(rng.uniform(0.2, 0.8), normalized=True)
                c, r = q.x / FRES + rng.uniform(-20, 20), q.y / FRES + rng.uniform(-20, 20)
            Lp, Wp = rng.uniform(100, 200), rng.uniform(70, 140)
            ang = self.valley_ang + rng.normal(0, 10)
            park = rect(c * FRES, r * FRES, Lp, Wp, ang)
            self.orn_polys.append(park)
            self.labels_cand.append(("ornamental_poppy", park))
            nb = int(Wp // rng.uniform(8, 15))
            th = math.radians(ang + 90)
            tfl = rng.normal(121, 4)
            for k in range(nb):
                off = -Wp / 2 + (k + 0.5) * Wp / nb
                g = rect(c * FRES + off * math.cos(th), r * FRES + off * math.sin(th), Lp, Wp / nb, ang)
                col = int(rng.choice([2, 1, 5, 0, 8], p=[.45, .25, .12, .08, .10]))
                items.append((g, self.P.add("ornamental_poppy", shift=self.jit(2), vig=rng.uniform(.85, 1.0),
                                            colour=col, tfl=tfl + rng.normal(0, 2), ffmax=rng.uniform(.4, .55),
                                            tev=tfl + rng.uniform(24, 35), tex=0.06)))
        # unlabelled roadside corn poppy strips
        if self.road is not None and rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 4))):
                a0 = rng.uniform(0, 0.85)
                seg = shapely.ops.substring(self.road, a0, a0 + rng.uniform(0.04, 0.1), normalized=True)
                side = rng.choice([-1, 1])
                g = seg.offset_curve(side * 6.0).buffer(rng.uniform(1.2, 2.0), cap_style="flat")
                self.orn_polys.append(g)
                items.append((g, self.tag(self.P.add("ornamental_poppy", shift=self.jit(3), colour=int(rng.choice([2, 1, 5, 8])),
                                                     tfl=rng.normal(121, 5), ffmax=rng.uniform(.35, .5), tev=999, tex=0.08),
                                          "corn_poppy_roadside")))
        self.burn(items)

    # ---------------- poppy ----------------
    def poppy(self):
        rng = np.random.default_rng([self.seed, 1])   # own stream: rare variants share the landscape
        target = self.prev * self.ext ** 2
        kinds = {"courtyard": (.15, 40, 150), "between_houses": (.08, 40, 200), "garden": (.12, 60, 500),
                 "field_strip": (.22, 100, 1500), "field_patch": (.25, 150, 2000), "ravine": (.18, 100, 1500)}
        if not self.courts:
            for k in ("courtyard", "between_houses", "garden"):
                kinds[k] = (0.0,) + kinds[k][1:]
        names = list(kinds)
        pr = np.array([kinds[k][0] for k in names])
        pr /= pr.sum()
        hosts = np.array([p for p, _ in self.field_geom.items()
                          if CLASSES[self.P.rows["cls"][p]] in ("wheat", "garlic")], int)
        pa = self.parcel
        flat = pa.ravel()
        # pixel lists per host parcel (one pass)
        order = np.argsort(flat, kind="stable")
        sf = flat[order]
        starts = np.searchsorted(sf, hosts)
        ends = np.searchsorted(sf, hosts, side="right")
        host_px = {int(h): order[s:e] for h, s, e in zip(hosts, starts, ends) if e - s > 60}
        host_ids = np.array(list(host_px))
        rav = np.argwhere(self.ravine_f & (self.zone >= 2) & (np.degrees(self.slope_f) < 32))
        if self.village_polys:
            vil = shapely.union_all(self.village_polys).buffer(150)
            if len(rav):
                keep = ~shapely.contains_xy(vil, rav[:, 1] * FRES, rav[:, 0] * FRES)
                rav = rav[keep]
        used_courts = set()
        plots, placed = [], []
        total, tries = 0.0, 0
        clear_items, poppy_items = [], []
        while total < target and tries < 25 * 2000:
            tries += 1
            if tries % 25 == 1:
                kind = names[rng.choice(len(names), p=pr)]
            _, amin, amax = kinds[kind]
            A = float(np.exp(rng.uniform(np.log(amin), np.log(amax))))
            poly, host = None, None
            if kind in ("courtyard", "between_houses", "garden"):
                pool = {"courtyard": self.courts, "between_houses": self.gaps, "garden": self.gardens}[kind]
                if not pool:
                    continue
                h = pool[rng.integers(len(pool))]
                if id(h) in used_courts:
                    continue
                wmax, hmax = h["w"] - (1.0 if kind == "courtyard" else 0.4), h["h"] - (1.0 if kind == "courtyard" else 0.4)
                if wmax * hmax < amin:
                    continue
                A = min(A, wmax * hmax * rng.uniform(0.3, 0.9))
                if A < 40:
                    continue
                pw = min(wmax, max(math.sqrt(A) * rng.uniform(0.6, 1.6), A / hmax))
                ph = A / pw
                if ph > hmax or pw > wmax:
                    continue
                th = math.radians(h["ang"])
                du, dv = rng.uniform(-(wmax - pw) / 2, (wmax - pw) / 2), rng.uniform(-(hmax - ph) / 2, (hmax - ph) / 2)
                cx = h["c"][0] + du * math.cos(th) - dv * math.sin(th)
                cy = h["c"][1] + du * math.sin(th) + dv * math.cos(th)
                poly = rect(cx, cy, pw, ph, h["ang"])
                if not h["poly"].buffer(0.01).contains(poly):
                    continue
                used_courts.add(id(h))
                host = h["pid"]
            elif kind in ("field_strip", "field_patch"):
                if not len(host_ids):
                    continue
                hp = int(host_ids[rng.integers(len(host_ids))])
                px = host_px[hp]
                j = px[rng.integers(len(px))]
                r, c = divmod(int(j), self.F)
                cx, cy = (c + 0.5) * FRES, (r + 0.5) * FRES
                ang, fw, fL = self.field_geom[hp]
                if kind == "field_strip":
                    w = rng.uniform(3, min(9, 0.7 * fw))
                    A = min(A, w * 0.9 * fL)
                    if A < amin * 0.6:
                        continue
                    poly = rect(cx, cy, A / w, w, ang)
                else:
                    el = 2 * math.sqrt(A / math.pi) / (0.7 * fw)
                    if el < 1.6:
                        poly = blob(rng, cx, cy, A, elong=math.sqrt(max(el, rng.uniform(1, 1.5))), ang=ang)
                    else:   # a section across the whole strip width
                        pw = rng.uniform(0.7, 0.9) * fw
                        A = min(A, pw * 0.9 * fL)
                        if A < amin * 0.6:
                            continue
                        poly = rect(cx, cy, A / pw, pw, ang).buffer(-1.0).buffer(1.0)
                # containment in the host parcel
                xs, ys = np.meshgrid(np.arange(poly.bounds[0], poly.bounds[2], 1.0),
                                     np.arange(poly.bounds[1], poly.bounds[3], 1.0))
                inside = shapely.contains_xy(poly, xs.ravel(), ys.ravel())
                xi = np.clip((xs.ravel()[inside] / FRES).astype(int), 0, self.F - 1)
                yi = np.clip((ys.ravel()[inside] / FRES).astype(int), 0, self.F - 1)
                if len(xi) == 0 or np.mean(pa[yi, xi] == hp) < 0.97:
                    continue
                host = hp
            else:   # ravine
                if not len(rav):
                    continue
                r, c = rav[rng.integers(len(rav))]
                cx, cy = (c + 0.5) * FRES, (r + 0.5) * FRES
                asp = math.degrees(self.aspect_f[r, c])
                poly = blob(rng, cx, cy, A, elong=rng.uniform(1.2, 2.2), ang=asp + 90)
                if poly.bounds[0] < 0 or poly.bounds[1] < 0 or poly.bounds[2] > self.ext or poly.bounds[3] > self.ext:
                    continue
                host = -1
            if poly.bounds[0] < 0 or poly.bounds[1] < 0 or poly.bounds[2] > self.ext or poly.bounds[3] > self.ext:
                continue
            if any(poly.buffer(2).intersects(q) for q in placed):
                continue
            if kind != "ravine" and any(poly.intersects(o) for o in self.orn_polys):
                continue
            late = rng.random() < 0.15
            col = int(rng.choice([0, 1, 2, 3, 8], p=[.33, .2, .22, .15, .10]))
            dens = rng.uniform(0.45, 0.95) if kind in ("courtyard", "between_houses", "garden") else rng.uniform(0.7, 1.0)
            pid = self.P.add("poppy", shift=self.season_offset + rng.normal(0, 3), vig=rng.uniform(0.8, 1.05), colour=col,
                             tfl=rng.normal(124, 5) + (17 if late else 0), ffmax=rng.uniform(0.22, 0.4),
                             dens=dens, soilb=rng.uniform(0.85, 1.15), tex=0.08)
            if kind == "ravine":
                clear_items.append((poly.buffer(rng.uniform(2, 6)).difference(poly),
                                    self.P.add("clearing", shift=self.season_offset + rng.normal(0, 5), vig=rng.uniform(.4, .9), tex=0.12)))
            poppy_items.append((poly, pid))
            placed.append(poly)
            tries = 25 * (tries // 25 + 1)     # placed: draw a new kind next time
            plots.append(dict(poly=poly, kind=kind, pid=pid, host=host, colour=COLOUR_NAMES[col],
                              late=bool(late), density=round(float(dens), 2)))
            total += poly.area
        self.burn(clear_items)
        self.burn(poppy_items)
        self.plots = plots
        self.log["poppy_area_m2"] = round(total, 1)
        self.log["poppy_target_m2"] = round(target, 1)

    # ---------------- dates and atmosphere ----------------
    def pick_dates(self):
        rng = np.random.default_rng([self.seed, 2])
        y = self.year
        start = dt.date(y, 3, 1) + dt.timedelta(days=int(rng.integers(0, 5)))
        cands = [start + dt.timedelta(days=5 * k) for k in range(25) if start + dt.timedelta(days=5 * k) <= dt.date(y, 6, 30)]
        wins = [(dt.date(y, 3, 1), dt.date(y, 3, 31)), (dt.date(y, 4, 1), dt.date(y, 4, 25)),
                (dt.date(y, 4, 26), dt.date(y, 5, 20)), (dt.date(y, 5, 21), dt.date(y, 6, 30))]
        n = int(rng.integers(5, 9))
        chosen = set()
        for a, b in wins:
            pool = [d for d in cands if a <= d <= b]
            chosen.add(pool[rng.integers(len(pool))])
        rest = [d for d in cands if d not in chosen]
        for k in rng.choice(len(rest), n - len(chosen), replace=False):
            chosen.add(rest[k])
        self.dates = sorted(chosen)
        # cloud cover per date: at least two cloudy, at least two fairly clear
        nd = len(self.dates)
        cov = rng.choice([0.0, 0.03, 0.15, 0.3, 0.5, 0.8], size=nd, p=[.25, .2, .2, .15, .12, .08])
        order = rng.permutation(nd)
        cov[order[:2]] = rng.uniform(0.15, 0.6, 2)
        cov[order[2:4]] = rng.uniform(0.0, 0.04, 2)
        self.cover = cov
        sw = rng.random(nd) < 0.3
        if not sw.any():
            sw[rng.integers(nd)] = True
        self.swath = sw

    def clouds(self, cover, sun_zen, sun_az, rng):
        S = self.S
        h = rng.uniform(700, 2200)
        off = h * math.tan(math.radians(sun_zen)) / 10.0
        dcol = -off * math.sin(math.radians(sun_az))
        drow = off * math.cos(math.radians(sun_az))      # shadow goes away from the sun
        h_est = h * (1 + rng.normal(0, 0.25))            # Sen2Cor's guess of the cloud height
        off2 = h_est * math.tan(math.radians(sun_zen)) / 10.0
        dcol2, drow2 = -off2 * math.sin(math.radians(sun_az)), off2 * math.cos(math.radians(sun_az))
        pad = int(max(abs(dcol), abs(drow), abs(dcol2), abs(drow2))) + 4
        big = S + 2 * pad
        bigp = 1 << int(math.ceil(math.log2(big)))
        zeros = np.zeros((S, S), np.float32)
        if cover <= 0:
            return dict(a=zeros, shadow=zeros, shadow_det=zeros, cirrus=zeros, h=h)
        f = fbm(rng, (bigp, bigp), rng.uniform(2.6, 3.4))[:big, :big]
        thr = np.quantile(f, 1 - cover)
        a = np.clip((f - thr) / rng.uniform(0.4, 1.0), 0, 1) ** 0.8 * rng.uniform(0.85, 1.0)
        a = a.astype(np.float32)

        def win(dr, dc):
            r0, c0 = pad - int(round(dr)), pad - int(round(dc))
            return a[r0:r0 + S, c0:c0 + S]
        cir = zeros
        if rng.random() < 0.4:
            g = fbm(rng, (S, 4 * S), 3.0)
            g = ndimage.zoom(g, (1, 0.25))[:S, :S]
            g = ndimage.rotate(g, rng.uniform(0, 180), reshape=False, mode="reflect")
            cir = np.clip(g - 0.8, 0, None).astype(np.float32) * rng.uniform(0.06, 0.15)
        return dict(a=win(0, 0), shadow=win(drow, dcol), shadow_det=win(drow2, dcol2), cirrus=cir, h=h)

    # ---------------- rendering ----------------
    def render(self, outdir):
        S, F = self.S, self.F
        rng = np.random.default_rng([self.seed, 3])
        a = self.P.freeze()
        soil_base = SPEC[REGIONS[self.region]["soil"]]
        tex_static = fbm(rng, (F, F), 2.2)
        bright_tex = fbm(rng, (F, F), 1.6)
        d_b = np.clip(0.12 + 0.18 * (490 / WL) ** 2, 0, 0.4).astype(np.float32)
        pc = self.parcel
        texamp = a["tex"][pc]
        prof = dict(driver="GTiff", dtype="uint16", count=13, width=S, height=S, crs=f"EPSG:{self.epsg}",
                    transform=from_origin(self.x0, self.y0, 10, 10), nodata=0, compress="deflate",
                    predictor=2, tiled=True, blockxsize=min(256, S), blockysize=min(256, S))
        poppy_pix = a["cls"][pc] == C["poppy"]
        pp = np.zeros((S, S), bool)
        self.date_log = []
        ip = np.nonzero(a["cls"] == C["poppy"])[0]
        bloom = [float(plateau(d.timetuple().tm_yday - a["shift"][ip], a["tfl"][ip] - 8, a["tfl"][ip] + 8).mean())
                 if len(ip) else 0.0 for d in self.dates]
        self.bloom_idx = int(np.argmax(np.array(bloom) * (1 - np.asarray(self.cover)) * (1 - 0.5 * self.swath)))
        flags_poppy_total = 0
        for di, date in enumerate(self.dates):
            rng = np.random.default_rng([self.seed, 100 + di])
            doy = date.timetuple().tm_yday
            zen, az = sun_angles(doy, self.lat)
            wet = float(np.clip(rng.normal(0.3, 0.25), 0, 1))
            Sp, Vp, fcp = parcel_spectra(a, doy, soil_base, wet)
            tex = 0.75 * tex_static + 0.35 * fbm(rng, (F, F), 1.8)
            fcpx = np.clip(fcp[pc] + texamp * tex, 0, 1)
            # illumination (Lambert direct + sky diffuse), partially corrected by L2A
            cz, sz = math.cos(math.radians(zen)), math.sin(math.radians(zen))
            cos_i = cz * np.cos(self.slope_f) + sz * np.sin(self.slope_f) * np.cos(math.radians(az) - self.aspect_f)
            sky = (1 + np.cos(self.slope_f)) / 2
            shift = rng.integers(-1, 2, size=2)             # co-registration error (2.5 m steps)
            surf10 = np.empty((12, S, S), np.float32)
            for b in range(12):
                rb = Sp[pc, b] + fcpx * (Vp[pc, b] - Sp[pc, b])
                rb *= 1 + 0.035 * bright_tex
                T = (1 - d_b[b]) * np.clip(cos_i, 0, None) / cz + d_b[b] * sky
                rb *= np.power(np.maximum(T, 0.05), self.terrain_k)
                rb = np.roll(rb, tuple(shift), axis=(0, 1))
                rb = ndimage.gaussian_filter(rb, 0.45 * NATIVE[b] / FRES * (0.5 if NATIVE[b] > 10 else 1), mode="nearest")
                surf10[b] = rb.reshape(S, FINE, S, FINE).mean(axis=(1, 3))
            # atmosphere
            cl = self.clouds(self.cover[di], zen, az, np.random.default_rng([self.seed, 300 + di]))
            A, shd, cir = cl["a"], cl["shadow"], cl["cirrus"]
            haze_amt = rng.choice([0.0, 0.005, 0.015, 0.035], p=[.35, .3, .22, .13])
            hz = haze_amt * (0.5 + 0.5 * (fbm(rng, (S, S), 4.0) * 0.5 + 0.5)) + 0.3 * A * 0.05
            gain = 1 + rng.normal(0, 0.02) + rng.normal(0, 0.01, 12)
            offs = rng.normal(0, 0.003) * (490 / WL)
            obs = np.empty_like(surf10)
            for b in range(12):
                x = surf10[b] * (d_b[b] + (1 - d_b[b]) * (1 - 0.95 * shd))
                x = x * (1 - A) + A * SPEC["cloud"][b]
                x = x * (1 - cir) + cir * SPEC["cirrus"][b]
                x = x * (1 - 0.5 * hz) + hz * (490 / WL[b]) ** 1.5
                obs[b] = x * gain[b] + offs[b]
            # native resolution + noise
            noise_sd = np.array([.004, .003, .003, .003, .004, .004, .004, .004, .004, .006, .004, .004])
            for b in range(12):
                k = NATIVE[b] // 10
                x = obs[b]
                if k > 1:
                    m = -(-S // k) * k
                    xp = np.pad(x, ((0, m - S), (0, m - S)), mode="edge")
                    xs = xp.reshape(m // k, k, m // k, k).mean(axis=(1, 3))
                    xs += rng.normal(0, noise_sd[b], xs.shape)
                    x = np.repeat(np.repeat(xs, k, 0), k, 1)[:S, :S]
                else:
                    x = x + rng.normal(0, noise_sd[b], x.shape)
                obs[b] = x
            scl, nflag, flagged_mask = self.scl(obs, cl, di)
            # flagged poppy plots
            n_pf = 0
            for p in self.plots:
                if p["pid"] in self._flagged_pids:
                    n_pf += 1
            flags_poppy_total += n_pf
            dn = np.clip(np.round((obs + 0.1) * 1e4), 1, 65534).astype(np.uint16)
            # swath edge: diagonal no-data
            sw_frac = 0.0
            if self.swath[di]:
                ang = math.radians(rng.uniform(8, 22))
                frac = rng.uniform(0.1, 0.45)
                rr, cc = np.mgrid[0:S, 0:S]
                side = rng.choice([-1, 1])
                base = (cc - frac * S - (rr - S / 2) * math.tan(ang)) if side < 0 else \
                    ((S - cc) - frac * S + (rr - S / 2) * math.tan(ang))
                nod_any = np.zeros((S, S), bool)
                for b in range(12):
                    nod = base < rng.integers(-1, 3)
                    dn[b][nod] = 0
                    nod_any |= nod
                scl[nod_any] = 0
                sw_frac = float(nod_any.mean())
            name = f"L2A_{date.strftime('%Y%m%d')}.tif"
            with rasterio.open(os.path.join(outdir, name), "w", **prof) as dst:
                dst.write(dn, list(range(1, 13)))
                dst.write(scl.astype(np.uint16), 13)
                for k, bn in enumerate(BANDS + ["SCL"]):
                    dst.set_band_description(k + 1, bn)
                dst.scales = [1e-4] * 12 + [1.0]
                dst.offsets = [-0.1] * 12 + [0.0]
                dst.update_tags(ACQUISITION_DATE=date.isoformat(), SPACECRAFT=("Sentinel-2A" if di % 2 == 0 else "Sentinel-2B"),
                                SUN_ZENITH=f"{zen:.2f}", SUN_AZIMUTH=f"{az:.2f}", PRODUCT_TYPE="S2MSI2A",
                                SIMULATOR="indsim")
            self.date_log.append(dict(date=date.isoformat(), file=name, doy=doy, sun_zenith=round(zen, 1),
                                      sun_azimuth=round(az, 1), cloud_cover_target=round(float(self.cover[di]), 3),
                                      cloud_frac=round(float((A > 0.2).mean()), 3),
                                      shadow_frac=round(float((shd > 0.2).mean()), 3),
                                      cirrus=bool(cir.max() > 0), haze=float(haze_amt), swath_nodata_frac=round(sw_frac, 3),
                                      false_flag_px=int(nflag), poppy_plots_false_flagged=n_pf,
                                      coreg_shift_m=[float(s * FRES) for s in shift], soil_wetness=round(wet, 2)))
        self.log["poppy_plots_false_flagged_total"] = flags_poppy_total

    def scl(self, obs, cl, di):
        """Sen2Cor-like SCL at 20 m, replicated to 10 m, with realistic mistakes."""
        rng, S = np.random.default_rng([self.seed, 200 + di]), self.S
        m = -(-S // 2) * 2

        def r20(x):
            xp = np.pad(x, ((0, m - S), (0, m - S)), mode="edge")
            return xp.reshape(m // 2, 2, m // 2, 2).mean(axis=(1, 3))
        B = {n: r20(obs[i]) for i, n in enumerate(BANDS)}
        A, shd, cir = r20(cl["a"]), r20(cl["shadow_det"]), r20(cl["cirrus"])
        ndvi = (B["B08"] - B["B04"]) / (B["B08"] + B["B04"] + 1e-6)
        ndwi = (B["B03"] - B["B08"]) / (B["B03"] + B["B08"] + 1e-6)
        scl = np.where(ndvi > 0.4, 4, 5).astype(np.uint8)
        scl[(ndwi > 0.1) & (B["B08"] < 0.12)] = 6
        scl[(B["B08"] < 0.06) & (scl != 6)] = 2
        # cloud detection on the opacity with noise; thin cloud (< ~0.2) is missed,
        # and some cloud patches are under-detected
        adet = A + rng.normal(0, 0.03, A.shape)
        if A.max() > 0:
            lab, n = ndimage.label(A > 0.05)
            miss = rng.random(n + 1) < 0.2
            miss[0] = False
            adet = np.where(miss[lab], adet * 0.45, adet)
        cloudm = np.zeros_like(scl, bool)
        cloudm |= adet > 0.22
        shadowm = (shd > 0.3) & ~cloudm
        shadowm = ndimage.binary_dilation(shadowm, iterations=1) & ~cloudm
        scl[shadowm] = 3
        scl[(cir > 0.05) & (rng.random(cir.shape) < 0.8) & ~cloudm] = 10
        cl_d = ndimage.binary_dilation(cloudm, iterations=1)
        scl[cl_d] = 8
        scl[adet > 0.55] = 9
        # false alarms: bright white/pink flowering fields flagged as cloud or snow
        vis = (B["B02"] + B["B03"] + B["B04"]) / 3
        thr = np.median(vis[~cl_d] if (~cl_d).sum() > 100 else vis) + rng.uniform(0.035, 0.06)
        flower = (vis > thr) & (B["B02"] > 0.075) & (B["B02"] > 0.7 * B["B04"]) & (B["B11"] < 0.3) \
            & (ndvi > 0.3) & ~cl_d
        lab, n = ndimage.label(flower)
        p_flag = rng.choice([0.0, 0.25, 0.5, 0.8], p=[.3, .3, .25, .15])
        if di == self.bloom_idx:      # the date of peak poppy bloom always gets Sen2Cor false alarms
            p_flag = max(p_flag, 0.6)
        pick = rng.random(n + 1) < p_flag
        pick[0] = False
        kind = rng.choice([8, 9, 11], size=n + 1, p=[.5, .2, .3])
        fl = pick[lab]
        scl[fl] = kind[lab][fl]
        # bright roofs / greenhouses sometimes flagged as cloud
        roof = (vis > 0.25) & (B["B11"] > 0.3) & (rng.random(vis.shape) < 0.3) & ~cl_d
        scl[roof] = 8
        up = np.repeat(np.repeat(scl, 2, 0), 2, 1)[:S, :S]
        flagged = np.repeat(np.repeat(fl, 2, 0), 2, 1)[:S, :S]
        # which poppy parcels got (partly) flagged on this date
        pcl = self.parcel[FINE // 2::FINE, FINE // 2::FINE]
        self._flagged_pids = set(np.unique(pcl[flagged & (self.P.a["cls"][pcl] == C["poppy"])]).tolist())
        return up, int(fl.sum()) * 4, flagged

    # ---------------- vector outputs ----------------
    def to_wgs84(self, g):
        g = shapely.transform(g, lambda xy: np.column_stack([self.x0 + xy[:, 0], self.y0 - xy[:, 1]]))
        g = shapely.transform(g, lambda xy: np.column_stack(self.to_wgs.transform(xy[:, 0], xy[:, 1])))
        g = shapely.set_precision(g, 1e-7)
        if g.geom_type == "Polygon":
            return orient(g, 1.0)
        return shapely.MultiPolygon([orient(p, 1.0) for p in g.geoms])

    def write_vectors(self, outdir):
        rng = np.random.default_rng([self.seed, 4])
        truth = []
        lab_frac = rng.uniform(1 / 3, 1 / 2)
        nlab = max(1, int(round(lab_frac * len(self.plots)))) if self.plots else 0
        lab_idx = set(rng.choice(len(self.plots), nlab, replace=False).tolist()) if nlab else set()
        labels = []
        for k, p in enumerate(self.plots):
            g = self.to_wgs84(p["poly"])
            props = dict(id=k + 1, area_m2=round(p["poly"].area, 1), kind=p["kind"], colour=p["colour"],
                         late_sown=p["late"], density=p["density"], labelled=k in lab_idx)
            truth.append(dict(type="Feature", properties=props, geometry=mapping(g)))
            if k in lab_idx:
                labels.append(dict(type="Feature", properties={"class": "poppy", "id": f"L{len(labels)+1}"},
                                   geometry=mapping(g)))
        poppy_union = shapely.union_all([p["poly"] for p in self.plots]).buffer(3) if self.plots else Polygon()
        # fields: whole parcels, never containing poppy
        cls = self.P.a["cls"]
        hostset = {p["host"] for p in self.plots}
        fp = [p for p in self.field_geom if p not in hostset]
        rng.shuffle(fp)
        counts = np.bincount(self.parcel.ravel(), minlength=len(cls))
        chosen = [p for p in fp if counts[p] * FRES ** 2 >= 300][: int(0.22 * len(fp))][:300]
        mask_ids = np.zeros(len(cls), bool)
        mask_ids[chosen] = True
        m = mask_ids[self.parcel]
        best = {}
        for geom, val in features.shapes(self.parcel, mask=m, transform=Affine.scale(FRES)):
            g = shapely.geometry.shape(geom)
            v = int(val)
            if v not in best or g.area > best[v].area:
                best[v] = g
        for v, g in best.items():
            g = g.simplify(1.0)
            if g.area < 300 or g.intersects(poppy_union):
                continue
            b = g.bounds
            if b[0] <= 0 or b[1] <= 0 or b[2] >= self.ext or b[3] >= self.ext:
                continue
            labels.append(dict(type="Feature", properties={"class": CLASSES[cls[v]], "id": f"L{len(labels)+1}"},
                               geometry=mapping(self.to_wgs84(g))))
        # other candidate polygons (water, greenhouse, village buildings, ornamental park)
        for cname, g in self.labels_cand:
            g = g.intersection(box(0, 0, self.ext, self.ext))
            if g.is_empty or g.area < 40 or g.intersects(poppy_union) or g.geom_type not in ("Polygon", "MultiPolygon"):
                continue
            labels.append(dict(type="Feature", properties={"class": cname, "id": f"L{len(labels)+1}"},
                               geometry=mapping(self.to_wgs84(g))))
        # forest patches
        fo = np.argwhere(self.zone == 3)
        nf = 0
        for _ in range(60):
            if nf >= 8 or not len(fo):
                break
            r, c = fo[rng.integers(len(fo))]
            g = blob(rng, c * FRES, r * FRES, rng.uniform(3000, 15000))
            xs, ys = np.meshgrid(np.arange(g.bounds[0], g.bounds[2], 5.0), np.arange(g.bounds[1], g.bounds[3], 5.0))
            ins = shapely.contains_xy(g, xs.ravel(), ys.ravel())
            xi, yi = (xs.ravel()[ins] / FRES).astype(int), (ys.ravel()[ins] / FRES).astype(int)
            if len(xi) == 0 or xi.min() < 0 or yi.min() < 0 or xi.max() >= self.F or yi.max() >= self.F:
                continue
            if (self.zone[yi, xi] != 3).any() or g.intersects(poppy_union):
                continue
            if (cls[self.parcel[yi, xi]] != C["forest"]).mean() > 0.02:
                continue
            labels.append(dict(type="Feature", properties={"class": "forest", "id": f"L{len(labels)+1}"},
                               geometry=mapping(self.to_wgs84(g))))
            nf += 1
        for fn, feats in (("truth.geojson", truth), ("labels.geojson", labels)):
            with open(os.path.join(outdir, fn), "w") as f:
                json.dump(dict(type="FeatureCollection", features=feats), f)
        self.log["labels_per_class"] = {}
        for f_ in labels:
            c = f_["properties"]["class"]
            self.log["labels_per_class"][c] = self.log["labels_per_class"].get(c, 0) + 1

    def write_dem(self, outdir):
        rng = np.random.default_rng([self.seed, 5])
        S = self.S
        demo = ndimage.gaussian_filter(self.dem, 1.5) + rng.normal(0, 1.0, self.dem.shape)
        if self.seed % 3 == 0:
            # deliver like a 1 arc-second (~30 m) geographic DEM covering the scene
            xs = self.x0 + np.array([0, self.ext, 0, self.ext])
            ys = self.y0 - np.array([0, 0, self.ext, self.ext])
            lo, la = self.to_wgs.transform(xs, ys)
            res = 1 / 3600
            lon0, lat1 = math.floor(min(lo) / res) * res - 2 * res, math.ceil(max(la) / res) * res + 2 * res
            nx = int(math.ceil((max(lo) - lon0) / res)) + 3
            ny = int(math.ceil((lat1 - min(la)) / res)) + 3
            LON, LAT = np.meshgrid(lon0 + (np.arange(nx) + 0.5) * res, lat1 - (np.arange(ny) + 0.5) * res)
            tr = Transformer.from_crs(4326, self.epsg, always_xy=True)
            X, Y = tr.transform(LON, LAT)
            col = (X - self.x0) / 10 - 0.5
            row = (self.y0 - Y) / 10 - 0.5
            vals = ndimage.map_coordinates(ndimage.gaussian_filter(self.dem, 1.2), [row, col], order=1, mode="nearest")
            vals = vals + rng.normal(0, 2.0, vals.shape)
            prof = dict(driver="GTiff", dtype="float32", count=1, width=nx, height=ny, crs="EPSG:4326",
                        transform=from_origin(lon0, lat1, res, res), nodata=-32767.0, compress="deflate")
            out = vals.astype(np.float32)
            self.log["dem"] = "EPSG:4326, 1 arc-second (~30 m), noisy"
        else:
            prof = dict(driver="GTiff", dtype="float32", count=1, width=S, height=S, crs=f"EPSG:{self.epsg}",
                        transform=from_origin(self.x0, self.y0, 10, 10), nodata=-32767.0, compress="deflate")
            out = demo.astype(np.float32)
            self.log["dem"] = "same 10 m grid, smoothed + 1 m noise"
        with rasterio.open(os.path.join(outdir, "dem.tif"), "w", **prof) as dst:
            dst.write(out, 1)
            dst.set_band_description(1, "elevation_m")

    def write_classes(self, outdir):
        """Diagnostic classes.tif on the 10 m image grid (no random numbers are drawn here).
        Band 1: dominant class of the 16 fine 2.5 m cells (code table DIAG_CLASSES, lowest code wins
        ties). Band 2: poppy share of the fine cells in %, rounded. Built from the final parcel raster,
        i.e. without the per-date co-registration shift and PSF of the images."""
        S = self.S
        a = self.P.a
        n = len(a["cls"])
        D = {k: i for i, k in enumerate(DIAG_CLASSES)}
        lut = np.zeros(n, np.uint8)
        for pid in range(n):
            name = CLASSES[int(a["cls"][pid])]
            if pid in self.role:
                name = self.role[pid]
            elif name == "vegetables":
                name = "vegetables_bolting" if a["ffmax"][pid] > 0 else "vegetables"
            elif name == "paddy":
                name = "paddy_milk_vetch" if a["ffmax"][pid] > 0 else "paddy_fallow"
            else:
                name = {"water": "water_pond", "tree": "yard_tree", "clearing": "ravine_clearing",
                        "ornamental_poppy": "ornamental_poppy_park"}.get(name, name)
            lut[pid] = D[name]
        code_f = lut[self.parcel]                                      # (F, F) fine codes
        K = len(DIAG_CLASSES)
        blk = code_f.reshape(S, FINE, S, FINE).transpose(0, 2, 1, 3).reshape(S * S, FINE * FINE)
        cnt = np.zeros((S * S, K), np.int16)
        np.add.at(cnt, (np.repeat(np.arange(S * S), FINE * FINE), blk.ravel()), 1)
        dom = np.argmax(cnt, axis=1).astype(np.uint8).reshape(S, S)   # first max = lowest code
        pfrac = np.round(100.0 * cnt[:, D["poppy"]] / (FINE * FINE)).astype(np.uint8).reshape(S, S)
        prof = dict(driver="GTiff", dtype="uint8", count=2, width=S, height=S, crs=f"EPSG:{self.epsg}",
                    transform=from_origin(self.x0, self.y0, 10, 10), compress="deflate",
                    tiled=True, blockxsize=min(256, S), blockysize=min(256, S))
        with rasterio.open(os.path.join(outdir, "classes.tif"), "w", **prof) as dst:
            dst.write(dom, 1)
            dst.write(pfrac, 2)
            dst.set_band_description(1, "dominant_class")
            dst.set_band_description(2, "poppy_fraction_pct")
            dst.update_tags(CLASSES=json.dumps({str(i): c for i, c in enumerate(DIAG_CLASSES)}),
                            SIMULATOR="indsim", NOTE="diagnostic only; not an input")
        self.log["classes"] = {str(i): c for i, c in enumerate(DIAG_CLASSES)}

    def run(self, outdir):
        t0 = time.time()
        os.makedirs(outdir, exist_ok=True)
        for f in os.listdir(outdir):          # stale dates from an earlier run would mix in
            if f.startswith("L2A_") and f.endswith(".tif"):
                os.remove(os.path.join(outdir, f))
        self.labels_cand = []
        self.setup_geo()
        self.terrain()
        self.zones()
        self.fields()
        self.infrastructure()
        self.villages()
        self.ornamentals()
        self.poppy()
        self.pick_dates()
        self.render(outdir)
        self.write_vectors(outdir)
        self.write_dem(outdir)
        self.write_classes(outdir)
        n400 = sum(p["poly"].area >= 400 for p in self.plots)
        kinds = {}
        for p in self.plots:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
        meta = dict(seed=self.seed, size=self.S, prevalence=self.prev, region=self.region, epsg=self.epsg,
                    origin=[self.x0, self.y0], year=self.year, season_offset_days=round(self.season_offset, 1),
                    terrain_residual_k=round(self.terrain_k, 2), n_poppy=len(self.plots), n_poppy_ge400m2=int(n400),
                    poppy_kinds=kinds, dates=self.date_log, **self.log, runtime_s=round(time.time() - t0, 1))
        with open(os.path.join(outdir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--prevalence", type=float, default=0.01)
    args = ap.parse_args()
    meta = Scene(args.seed, args.size, args.prevalence).run(args.out)
    print(json.dumps({k: v for k, v in meta.items() if k != "dates"}, indent=1))
    for d in meta["dates"]:
        print(d["date"], "cloud", d["cloud_frac"], "shadow", d["shadow_frac"], "haze", d["haze"],
              "swath", d["swath_nodata_frac"], "flower-flags", d["false_flag_px"], "poppy-flagged", d["poppy_plots_false_flagged"])


if __name__ == "__main__":
    main()
