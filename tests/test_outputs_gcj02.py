"""WGS84 -> GCJ-02 against reference points published by other implementations."""
from __future__ import annotations

import numpy as np
import pytest

from outputs.gcj02 import gcj02_to_wgs84, in_china, wgs84_to_gcj02

# googollee/eviltransform, python/test.py (TESTS): (wgsLat, wgsLng, gcjLat, gcjLng); that
# suite asserts 6 decimal places.
EVILTRANSFORM = [
    (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215),    # Shanghai
    (22.543847, 113.912316, 22.540796131694766, 113.9171764808363),    # Shenzhen
    (39.911954, 116.377817, 39.91334545536069, 116.38404722455657),    # Beijing
]
# wandergis/coordtransform, test/app.js: wgs84togcj02(116.404, 39.915) (lng, lat order).
COORDTRANSFORM = ((116.404, 39.915), (116.41024449916938, 39.91640428150164))
# hujiulong/gcoord, test/unit/crs/GCJ02.spec.js: GCJ02 -> WGS84 of [123, 45], toBeCloseTo(.., 5)
GCOORD_INVERSE = ((123.0, 45.0), (122.99395597, 44.99804071))


@pytest.mark.parametrize("wlat, wlon, glat, glon", EVILTRANSFORM)
def test_eviltransform_reference_points(wlat, wlon, glat, glon):
    lon, lat = wgs84_to_gcj02(wlon, wlat)
    assert float(lon) == pytest.approx(glon, abs=5e-7)
    assert float(lat) == pytest.approx(glat, abs=5e-7)


def test_coordtransform_reference_point():
    (lon, lat), (glon, glat) = COORDTRANSFORM
    x, y = wgs84_to_gcj02(lon, lat)
    assert float(x) == pytest.approx(glon, abs=1e-9) and float(y) == pytest.approx(glat, abs=1e-9)


def test_inverse_matches_gcoord_and_round_trips():
    (glon, glat), (wlon, wlat) = GCOORD_INVERSE
    x, y = gcj02_to_wgs84(glon, glat)
    assert float(x) == pytest.approx(wlon, abs=5e-6) and float(y) == pytest.approx(wlat, abs=5e-6)
    bx, by = wgs84_to_gcj02(x, y)
    assert float(bx) == pytest.approx(glon, abs=1e-9) and float(by) == pytest.approx(glat, abs=1e-9)


def test_outside_china_unchanged_and_vectorised():
    lon = np.array([2.35, -74.0, 183.0, 121.5272106, 140.0])
    lat = np.array([48.85, 40.7, 45.0, 31.1774276, 35.0])
    x, y = wgs84_to_gcj02(lon, lat)
    assert x.shape == lon.shape
    inside = in_china(lon, lat)
    assert inside.tolist() == [False, False, False, True, False]
    assert np.array_equal(x[~inside], lon[~inside]) and np.array_equal(y[~inside], lat[~inside])
    assert x[3] == pytest.approx(EVILTRANSFORM[0][3], abs=5e-7)


def test_shift_size_is_hundreds_of_metres_in_china():
    lon, lat = np.meshgrid(np.linspace(80, 130, 11), np.linspace(20, 50, 7))
    x, y = wgs84_to_gcj02(lon, lat)
    d = np.hypot((x - lon) * 111_320 * np.cos(np.radians(lat)), (y - lat) * 110_570)
    assert 100 < d.min() and d.max() < 800   # measured: 133 m to 640 m
