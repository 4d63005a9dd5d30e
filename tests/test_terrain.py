"""Terrain correction: slope/aspect on planes, sun position, C and SCS+C on a simulated hill."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import dask
import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from dask.callbacks import Callback
from pyproj import Transformer

from indices.terrain import (
    COS_I_MIN,
    correct_terrain,
    cos_incidence,
    estimate_c,
    overpass_sun_position,
    slope_aspect,
    sun_position,
)
from pipeline.errors import ConfigError, CRSError, InputError

RES = 10.0
N = 160
X0, Y0 = 500_000.0, 3_300_000.0  # UTM 50N, around 29.8 N 117 E (Zhejiang/Anhui hills)
BANDS = ["blue", "green", "red", "nir", "swir16"]
K_TRUE = np.array([0.12, 0.2, 0.15, 0.6, 0.35])  # the simulated C of each band
RHO = np.array([  # class reflectance per band: wheat, bare soil, white-flowering poppy
    [0.03, 0.07, 0.04, 0.40, 0.20],
    [0.09, 0.13, 0.17, 0.25, 0.32],
    [0.12, 0.18, 0.15, 0.46, 0.22],
])
DATES = np.array(["2021-04-10", "2021-04-25"], dtype="datetime64[ns]")
SUN = [(38.0, 140.0), (33.0, 135.0)]  # zenith, azimuth per date


def grid(n: int = N, north_up: bool = True) -> tuple[np.ndarray, np.ndarray]:
    x = X0 + RES * (np.arange(n) + 0.5)
    y = Y0 - RES * (np.arange(n) + 0.5) if north_up else Y0 + RES * (np.arange(n) + 0.5)
    return x, y


def dem_da(z: np.ndarray, x: np.ndarray, y: np.ndarray, crs: str = "EPSG:32650") -> xr.DataArray:
    return xr.DataArray(z, dims=("y", "x"), coords={"y": y, "x": x}).rio.write_crs(crs)


def hills() -> tuple[xr.DataArray, np.ndarray]:
    """A few Gaussian hills (10 m pixels) and the analytic cos(i) for each date."""
    x, y = grid()
    xx, yy = np.meshgrid(x - X0, y - Y0)
    z = np.full(xx.shape, 50.0)
    dzdx = np.zeros_like(z)
    dzdy = np.zeros_like(z)
    for h, cx, cy, s in [(260, 500, -500, 260), (180, 1200, -1100, 200), (220, 1300, -300, 230),
                         (150, 350, -1300, 180)]:
        g = h * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s ** 2))
        z += g
        dzdx += -g * (xx - cx) / s ** 2
        dzdy += -g * (yy - cy) / s ** 2
    slope = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    aspect = np.mod(np.degrees(np.arctan2(-dzdx, -dzdy)), 360)
    cos_i = np.stack([cos_incidence(slope, aspect, sz, saz) for sz, saz in SUN])
    return dem_da(z, x, y), cos_i


def synthetic_scene(cos_i: np.ndarray, seed: int = 0) -> tuple[xr.DataArray, np.ndarray]:
    """Reflectance = rho_class * (cos(i) + k) / (cos(sz) + k) * (1 + 2 % noise), plus scl."""
    rng = np.random.default_rng(seed)
    classes = np.kron(rng.integers(0, 3, (N // 8, N // 8)), np.ones((8, 8), int))
    data = np.empty((2, len(BANDS) + 1, N, N), np.float32)
    for t, (sz, _) in enumerate(SUN):
        cz = np.cos(np.radians(sz))
        for b in range(len(BANDS)):
            illum = (cos_i[t] + K_TRUE[b]) / (cz + K_TRUE[b])
            noise = 1 + 0.02 * rng.standard_normal((N, N))
            data[t, b] = RHO[classes, b] * illum * noise
        data[t, -1] = 4.0  # scl: vegetation
    data[0, :, 5:9, 5:9] = np.nan  # a masked patch
    x, y = grid()
    scene = xr.DataArray(
        data, dims=("time", "band", "y", "x"),
        coords={"time": DATES, "band": BANDS + ["scl"], "y": y, "x": x,
                "sun_zenith": ("time", [s[0] for s in SUN]),
                "sun_azimuth": ("time", [s[1] for s in SUN])},
        attrs={"sensor": "sentinel2"},
    ).rio.write_crs("EPSG:32650")
    return scene, classes


def within_class_slopes(values: np.ndarray, cos_i: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Slope of reflectance against cos(i) per (time, band, class), relative to class mean."""
    out = np.empty((values.shape[0], len(BANDS), 3))
    for t in range(values.shape[0]):
        for b in range(len(BANDS)):
            for k in range(3):
                sel = (classes == k) & np.isfinite(values[t, b])
                slope = np.polyfit(cos_i[t][sel], values[t, b][sel], 1)[0]
                out[t, b, k] = slope / values[t, b][sel].mean()
    return out


@pytest.fixture(scope="module")
def hilly():
    dem, cos_i = hills()
    scene, classes = synthetic_scene(cos_i)
    return dem, cos_i, scene, classes


# --- slope and aspect ---------------------------------------------------------------------------

@pytest.mark.parametrize("north_up", [True, False])
@pytest.mark.parametrize("gx,gy,aspect", [
    (0.0, 0.1, 180.0),    # rises to the north -> faces south
    (0.0, -0.1, 0.0),     # rises to the south -> faces north
    (-0.2, 0.0, 90.0),    # falls to the east -> faces east
    (0.2, 0.0, 270.0),    # rises to the east -> faces west
    (0.1, 0.1, 225.0),    # rises to the north-east -> faces south-west
])
def test_slope_aspect_of_planes(gx, gy, aspect, north_up):
    x, y = grid(20, north_up)
    xx, yy = np.meshgrid(x - X0, y - Y0)
    slope_deg, aspect_deg = slope_aspect(dem_da(gx * xx + gy * yy, x, y))
    assert slope_deg.dtype == np.float32 and slope_deg.dims == ("y", "x")
    np.testing.assert_allclose(slope_deg.values, np.degrees(np.arctan(np.hypot(gx, gy))),
                               atol=1e-4)
    diff = (aspect_deg.values - aspect + 180) % 360 - 180
    np.testing.assert_allclose(diff, 0, atol=1e-3)


def test_slope_aspect_dask_equals_numpy_and_is_lazy(hilly):
    dem = hilly[0]
    s_np, a_np = slope_aspect(dem)
    s_da, a_da = slope_aspect(dem.chunk({"y": 50, "x": 70}))
    assert isinstance(s_da.data, da.Array) and isinstance(a_da.data, da.Array)
    np.testing.assert_allclose(s_da.values, s_np.values, atol=1e-4)
    np.testing.assert_allclose(a_da.values, a_np.values, atol=1e-3)
    assert 20 < float(s_np.max()) < 60  # real hills


def test_slope_aspect_on_a_grid_in_degrees_uses_ground_metres():
    """Images in EPSG:4326 put the DEM on a grid in degrees: a plane rising 0.1 m per metre
    northward and 0.2 m per metre eastward has the same slope and aspect there as on a metre
    grid (steps measured on the ellipsoid at the grid's centre)."""
    lat0, lon0, step = 30.0, 116.0, 0.0001        # ~11 m x ~9.6 m pixels at 30 N
    n = 21
    x = lon0 + step * (np.arange(n) - n // 2)
    y = lat0 - step * (np.arange(n) - n // 2)
    m_per_deg_x, m_per_deg_y = 96_486.0, 110_861.0      # WGS84 at 30 N (pyproj.Geod)
    xx, yy = np.meshgrid((x - lon0) * m_per_deg_x, (y - lat0) * m_per_deg_y)
    dem = xr.DataArray(0.2 * xx + 0.1 * yy, dims=("y", "x"), coords={"y": y, "x": x})
    slope_deg, aspect_deg = slope_aspect(dem.rio.write_crs("EPSG:4326"))
    np.testing.assert_allclose(slope_deg.values, np.degrees(np.arctan(np.hypot(0.2, 0.1))),
                               atol=0.1)
    diff = (aspect_deg.values - np.degrees(np.arctan2(-0.2, -0.1)) % 360 + 180) % 360 - 180
    np.testing.assert_allclose(diff, 0, atol=0.2)


# --- illumination and sun ------------------------------------------------------------------------

def test_cos_incidence():
    assert cos_incidence(0.0, 123.0, 40.0, 150.0) == pytest.approx(np.cos(np.radians(40)))
    assert cos_incidence(30.0, 180.0, 30.0, 180.0) == pytest.approx(1.0)  # faces the sun
    assert cos_incidence(60.0, 0.0, 40.0, 180.0) < 0  # steep, facing away: self-shadow
    sz = xr.DataArray([30.0, 50.0], dims="time")
    out = cos_incidence(xr.DataArray(np.zeros((2, 2)), dims=("y", "x")), 0.0, sz, 180.0)
    assert out.dims == ("y", "x", "time") or set(out.dims) == {"time", "y", "x"}
    assert out.dtype == np.float32


def test_sun_position_known_geometry():
    # Greenwich, June solstice, noon UTC: zenith = lat - declination = 51.48 - 23.44
    zen, az = sun_position(datetime(2020, 6, 21, 12, 0), -0.0015, 51.4779)
    assert zen == pytest.approx(28.04, abs=0.3)
    assert az == pytest.approx(180.0, abs=2.0)
    # Equator at the March equinox, noon: sun almost overhead
    zen, _ = sun_position(datetime(2021, 3, 20, 12, 7), 0.0, 0.0)
    assert zen < 1.0
    # Sunrise at the equinox: on the horizon, due east
    # (06:07 UTC at lon 0 is 06:00 true solar time: the equation of time is about -7 min)
    zen, az = sun_position(datetime(2021, 3, 20, 6, 7), 0.0, 40.0)
    assert zen == pytest.approx(90.0, abs=1.0) and az == pytest.approx(90.0, abs=1.0)
    # overpass_sun_position uses mean solar time: 06:00 mean is ~7 min before true 06:00
    zen_mean, _ = overpass_sun_position(np.datetime64("2021-03-20"), 0.0, 40.0, solar_hour=6.0)
    assert zen_mean == pytest.approx(zen + 7 / 4 * np.cos(np.radians(40)), abs=0.3)
    # Aware datetimes are converted to UTC
    local = datetime(2021, 4, 15, 10, 30, tzinfo=timezone(timedelta(hours=8)))
    assert sun_position(local, 116.4, 39.9) == sun_position(datetime(2021, 4, 15, 2, 30),
                                                            116.4, 39.9)
    # Sentinel-2-like overpass over eastern China in April: south-east sun, zenith 25-45
    zen, az = overpass_sun_position(np.datetime64("2021-04-15"), 117.0, 29.8)
    assert 25 < zen < 45 and 110 < az < 170


def test_estimate_c_recovers_the_simulated_c():
    rng = np.random.default_rng(1)
    ci = rng.uniform(0.2, 1.0, 5000)
    refl = 0.3 * (ci + 0.4) / (0.8 + 0.4)
    assert estimate_c(refl, ci) == pytest.approx(0.4, rel=1e-6)
    assert np.isnan(estimate_c(refl, np.full_like(ci, 0.7)))  # flat: nothing to fit
    assert np.isnan(estimate_c(-refl, ci))  # darker when lit: refuse
    assert np.isnan(estimate_c(refl[:10], ci[:10]))  # too few pixels


# --- the correction ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["c", "scs+c"])
def test_correction_removes_illumination_dependence(hilly, method):
    dem, cos_i, scene, classes = hilly
    before = within_class_slopes(scene.values, cos_i, classes)
    out = correct_terrain(scene, dem, method)
    after = within_class_slopes(out.values, cos_i, classes)
    reduction = 1 - np.abs(after) / np.abs(before)
    assert reduction.min() >= 0.7, (method, reduction.round(3))
    # scl and masked pixels untouched, dtype kept
    np.testing.assert_array_equal(out.sel(band="scl").values, scene.sel(band="scl").values)
    assert np.isnan(out.values[0, :5, 5:9, 5:9]).all()
    assert np.isfinite(out.values[0, :5, 20:, 20:]).all()
    assert out.dtype == np.float32 and out.dims == scene.dims
    assert out.attrs["terrain_correction"] == method
    assert out.rio.crs == scene.rio.crs


def test_correction_is_lazy_with_one_small_compute(hilly):
    dem, _, scene, _ = hilly
    calls: list[int] = []
    lazy_scene = scene.chunk({"y": 64, "x": 64})  # also makes the sun-angle coords dask
    with dask.config.set(scheduler="synchronous"), Callback(start=lambda dsk: calls.append(1)):
        out = correct_terrain(lazy_scene, dem, "scs+c")
    assert isinstance(out.data, da.Array)
    assert len(calls) == 2  # the sun-angle coords, then the c regression sample
    calls.clear()
    numpy_sun = lazy_scene.assign_coords(sun_zenith=scene.sun_zenith, sun_azimuth=scene.sun_azimuth)
    with dask.config.set(scheduler="synchronous"), Callback(start=lambda dsk: calls.append(1)):
        correct_terrain(numpy_sun, dem, "scs+c")
    assert len(calls) == 1  # the c regression only
    eager = correct_terrain(scene, dem, "scs+c")
    np.testing.assert_allclose(out.values, eager.values, rtol=1e-5, equal_nan=True)


def test_many_chunks_fit_on_a_subset_still_corrects(hilly):
    dem, cos_i, scene, classes = hilly
    many = scene.chunk({"y": 16, "x": 16})  # 10 chunks per axis: c is fitted on 6 x 6 of them
    out = correct_terrain(many, dem, "c")
    assert isinstance(out.data, da.Array)
    before = within_class_slopes(scene.values, cos_i, classes)
    after = within_class_slopes(out.values, cos_i, classes)
    assert (1 - np.abs(after) / np.abs(before)).min() >= 0.7


def test_missing_sun_angles_fall_back_to_overpass_position(hilly, caplog):
    dem, _, scene, _ = hilly
    lon, lat = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True).transform(
        float(scene.x.mean()), float(scene.y.mean()))
    angles = [overpass_sun_position(t, lon, lat) for t in scene.time.values]
    explicit = scene.assign_coords(sun_zenith=("time", [a[0] for a in angles]),
                                   sun_azimuth=("time", [a[1] for a in angles]))
    unknown = scene.assign_coords(sun_zenith=("time", [np.nan, np.nan]),
                                  sun_azimuth=("time", [np.nan, np.nan]))
    with caplog.at_level(logging.INFO, logger="indices.terrain"):
        got = correct_terrain(unknown, dem, "c")
    assert any("sun angles missing" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(got.values, correct_terrain(explicit, dem, "c").values,
                               rtol=1e-6, equal_nan=True)
    with pytest.raises(CRSError):
        no_crs = unknown.drop_vars("spatial_ref")
        correct_terrain(no_crs, dem, "c")


def test_valid_mask_and_clipping(hilly):
    dem, cos_i, scene, classes = hilly
    # fit c on one class only: still a good correction for that class
    mask = xr.DataArray(classes == 0, dims=("y", "x"), coords={"y": scene.y, "x": scene.x})
    out = correct_terrain(scene, dem, "c", valid_mask=mask)
    after = within_class_slopes(out.values, cos_i, classes)
    before = within_class_slopes(scene.values, cos_i, classes)
    assert (np.abs(after[:, :, 0]) <= 0.3 * np.abs(before[:, :, 0])).all()
    # deep shadow: factor bounded by the COS_I_MIN clip
    ratio = out.values[:, :5] / scene.values[:, :5]
    cz = np.cos(np.radians(38.0))
    assert np.nanmax(ratio) <= (cz + 1.0) / COS_I_MIN  # generous bound, finite
    assert np.isfinite(ratio[np.isfinite(scene.values[:, :5])]).all()


def test_none_method_and_bad_inputs(hilly):
    dem, _, scene, _ = hilly
    assert correct_terrain(scene, dem, "none") is scene
    with pytest.raises(ConfigError, match="unknown"):
        correct_terrain(scene, dem, "minnaert")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="resample the DEM"):
        correct_terrain(scene, dem.isel(x=slice(0, 100)), "c")


def test_the_sun_fallback_uses_the_acquisition_time_when_there_is_one():
    """A flight at 07:00 UTC (15:00 local at 117 E) was given the 10:30 sun (zenith 30.8,
    azimuth 131): an afternoon sun in the west is the opposite illumination (an audit)."""
    zen, az = overpass_sun_position(np.datetime64("2024-04-10T07:00"), 117.0, 31.0)
    assert (zen, az) == sun_position(datetime(2024, 4, 10, 7, 0), 117.0, 31.0)
    assert 40 < zen < 50 and 240 < az < 260                   # NOAA: 44.6, 249.7
    # a date alone: the 10:30 local solar time position, as before
    morning = overpass_sun_position(np.datetime64("2024-04-10"), 117.0, 31.0)
    assert morning == overpass_sun_position(np.datetime64("2024-04-10T00:00"), 117.0, 31.0)
    assert 100 < morning[1] < 170
