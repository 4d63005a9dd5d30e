"""WGS84 -> GCJ-02 ("Mars coordinates"), for phone map apps in mainland China.

Chinese map apps (Amap/Gaode, Tencent, and Apple/Google maps inside China) display base maps in
GCJ-02, an obfuscated datum mandated by Chinese regulation. A WGS84 point shown on such a map
lands 100-700 m from where it is on the ground. GCJ-02 copies of the CSV and KML let a field
team open targets directly in those apps. WGS84 stays the default everywhere else.

The transform is the widely published one (the leaked reference implementation, as in the
open-source "eviltransform" and "coordtransform" projects): Krasovsky-1940 ellipsoid constants
and a fixed polynomial-plus-sine offset field. Outside the rough China bounding box used by
eviltransform, coordinates are returned unchanged. There is no official inverse; ``gcj02_to_wgs84``
inverts numerically (fixed-point iteration, better than 1e-9 degrees inside China).
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

_A = 6378245.0                       # Krasovsky 1940 semi-major axis (m)
_EE = 0.00669342162296594323         # Krasovsky 1940 first eccentricity squared

# eviltransform's "out of China" test: outside this lon/lat box nothing is shifted.
CHINA_LON = (72.004, 137.8347)
CHINA_LAT = (0.8293, 55.8271)


def in_china(lon: ArrayLike, lat: ArrayLike) -> np.ndarray:
    """True where (lon, lat) falls in the box where GCJ-02 applies."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    return ((lon >= CHINA_LON[0]) & (lon <= CHINA_LON[1])
            & (lat >= CHINA_LAT[0]) & (lat <= CHINA_LAT[1]))


def _offset_m(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published offset field in 'metres-ish' units; x = lon - 105, y = lat - 35."""
    common = (20.0 * np.sin(6.0 * np.pi * x) + 20.0 * np.sin(2.0 * np.pi * x)) * 2.0 / 3.0
    d_lat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y
             + 0.2 * np.sqrt(np.abs(x)) + common
             + (20.0 * np.sin(np.pi * y) + 40.0 * np.sin(np.pi * y / 3.0)) * 2.0 / 3.0
             + (160.0 * np.sin(np.pi * y / 12.0) + 320.0 * np.sin(np.pi * y / 30.0)) * 2.0 / 3.0)
    d_lon = (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y
             + 0.1 * np.sqrt(np.abs(x)) + common
             + (20.0 * np.sin(np.pi * x) + 40.0 * np.sin(np.pi * x / 3.0)) * 2.0 / 3.0
             + (150.0 * np.sin(np.pi * x / 12.0) + 300.0 * np.sin(np.pi * x / 30.0)) * 2.0 / 3.0)
    return d_lon, d_lat


def _delta_deg(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GCJ-02 minus WGS84 in degrees at WGS84 (lon, lat), ignoring the China test."""
    d_lon_m, d_lat_m = _offset_m(lon - 105.0, lat - 35.0)
    rad_lat = np.radians(lat)
    w = 1.0 - _EE * np.sin(rad_lat) ** 2
    sqrt_w = np.sqrt(w)
    d_lat = d_lat_m * 180.0 / ((_A * (1.0 - _EE)) / (w * sqrt_w) * np.pi)
    d_lon = d_lon_m * 180.0 / (_A / sqrt_w * np.cos(rad_lat) * np.pi)
    return d_lon, d_lat


def wgs84_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Shift WGS84 (lon, lat) in degrees to GCJ-02; unchanged outside China. Arrays or scalars."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    d_lon, d_lat = _delta_deg(lon, lat)
    inside = in_china(lon, lat)
    return np.where(inside, lon + d_lon, lon), np.where(inside, lat + d_lat, lat)


def gcj02_to_wgs84(lon: ArrayLike, lat: ArrayLike, *, iterations: int = 8
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Numerical inverse of :func:`wgs84_to_gcj02` (fixed-point iteration)."""
    g_lon = np.asarray(lon, dtype=float)
    g_lat = np.asarray(lat, dtype=float)
    w_lon, w_lat = g_lon.copy(), g_lat.copy()
    for _ in range(iterations):
        f_lon, f_lat = wgs84_to_gcj02(w_lon, w_lat)
        w_lon = w_lon - (f_lon - g_lon)
        w_lat = w_lat - (f_lat - g_lat)
    return w_lon, w_lat


def shift_coords(coords: np.ndarray) -> np.ndarray:
    """(N, 2) lon/lat array -> GCJ-02; for ``shapely.transform``."""
    x, y = wgs84_to_gcj02(coords[:, 0], coords[:, 1])
    return np.column_stack([x, y])
