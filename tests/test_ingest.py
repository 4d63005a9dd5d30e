"""Ingest: the multi-band GeoTIFF input contract, one grid, AOI clipping, DEM, laziness."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import dask.array as darr
import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import xarray as xr
from affine import Affine
from dask_helpers import CountComputes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import Polygon, box, mapping

from pipeline.aoi import read_aoi
from pipeline.errors import InputError
from pipeline.geotiff import write_multiband
from pipeline.grid import Grid, align
from pipeline.ingest import open_scene, read_dem
from pipeline.readers import multiband

CRS = "EPSG:32650"
N = 32
TF = Affine(10, 0, 500000.0, 0, -10, 3340000.0)
S2 = ["B02", "B03", "B04", "B08"]
CANON = ["blue", "green", "red", "nir"]
_TO_WGS = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)


def ramp(n: int = N) -> np.ndarray:
    """(4, n, n) reflectance, linear in x and y (so bilinear resampling is exact)."""
    yy, xx = np.mgrid[0:n, 0:n].astype("float64")
    return np.stack([0.05 + 0.002 * xx + 0.003 * yy + 0.05 * k for k in range(4)])


def write_dn(path: Path, refl: np.ndarray, *, names=S2, tf: Affine = TF, crs: str = CRS,
             date: str | None = "2024-04-10", offset: float = 0.0, tags=None) -> Path:
    """uint16 DN = (refl - offset) * 10000 with nodata 0, the contract's usual form;
    ``date=None`` writes no ACQUISITION_DATE tag."""
    dn = np.where(np.isnan(refl), 0, np.round((refl - offset) * 10000)).astype("uint16")
    if date is not None:
        return write_multiband(path, dn, names, tf, crs, acquisition_date=date,
                               scales=[1e-4] * len(names), offsets=[offset] * len(names),
                               nodata=0, tags=tags)
    with rasterio.open(path, "w", driver="GTiff", width=dn.shape[2], height=dn.shape[1],
                       count=len(names), dtype="uint16", crs=crs, transform=tf,
                       nodata=0) as dst:
        dst.write(dn)
        for i, b in enumerate(names, start=1):
            dst.set_band_description(i, b)
        dst.scales = (1e-4,) * len(names)
        dst.offsets = (offset,) * len(names)
        dst.update_tags(**dict(tags or {}))
    return path




# --- the multi-band GeoTIFF reader -------------------------------------------------------------
def test_s2_names_and_canonical_names_read_the_same(tmp_path: Path) -> None:
    refl = ramp()
    a = write_dn(tmp_path / "a_20240410.tif", refl, names=S2)
    b = write_dn(tmp_path / "b_20240410.tif", refl, names=CANON)
    [da] = multiband.read(a)
    [db] = multiband.read(b)
    assert da["band"].values.tolist() == CANON == db["band"].values.tolist()
    assert da.dtype == np.float32
    np.testing.assert_array_equal(da.values, db.values)
    np.testing.assert_allclose(da.values, refl, atol=0.6e-4)


def test_offset_applied_after_nodata_masking(tmp_path: Path) -> None:
    refl = ramp()
    refl[:, 0, :4] = np.nan                                  # no data: DN 0 in both files
    plain = write_dn(tmp_path / "plain_20240410.tif", refl)
    # the baseline-04.00 form: DN = refl * 10000 + 1000, offset -0.1
    shifted = write_dn(tmp_path / "shifted_20240410.tif", refl, offset=-0.1)
    with rasterio.open(shifted) as src:
        dn = src.read(1)
        assert src.offsets[0] == pytest.approx(-0.1) and dn[5, 5] == round(refl[0, 5, 5] * 1e4) + 1000
    [a] = multiband.read(plain)
    [b] = multiband.read(shifted)
    np.testing.assert_allclose(b.values, a.values, atol=1e-6)
    assert np.isnan(b.values[:, 0, :4]).all()                 # not -0.1, not 0
    assert np.isfinite(b.values[:, 1:, :]).all()
    assert not (b.values == 0).any()


def test_masked_pixels_are_nan_never_zero_in_a_scene(tmp_path: Path) -> None:
    refl = ramp()
    refl[:, 10:12, 10:12] = np.nan
    s = open_scene([write_dn(tmp_path / "x_20240410.tif", refl)], chunks=16)
    v = s.values
    assert np.isnan(v[0, :, 10:12, 10:12]).all()
    assert np.count_nonzero(np.isnan(v)) == 4 * 4
    assert not (v == 0).any()


def test_date_from_tag_beats_the_file_name(tmp_path: Path) -> None:
    p = write_dn(tmp_path / "S2_20240101.tif", ramp(), date="2024-04-10T03:12:00Z")
    [da] = multiband.read(p)
    assert da.attrs["time"] == np.datetime64("2024-04-10T03:12:00", "ns")


@pytest.mark.parametrize("name,expected", [("S2_20240415_L2A.tif", "2024-04-15"),
                                           ("plot-2024-05-02.tif", "2024-05-02")])
def test_date_from_the_file_name(tmp_path: Path, name: str, expected: str) -> None:
    p = write_dn(tmp_path / name, ramp(), date=None)
    [da] = multiband.read(p)
    assert da.attrs["time"] == np.datetime64(expected, "ns")


def test_date_from_tifftag_datetime_warns(tmp_path: Path, caplog) -> None:
    p = write_dn(tmp_path / "scene.tif", ramp(), date=None)
    with rasterio.open(p, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2024:04:20 10:11:12")
    with caplog.at_level(logging.WARNING, logger="pipeline.readers.multiband"):
        [da] = multiband.read(p)
    assert da.attrs["time"] == np.datetime64("2024-04-20", "ns")
    assert any("TIFFTAG_DATETIME" in r.getMessage() and "scene.tif" in r.getMessage()
               for r in caplog.records)


def test_no_date_at_all_is_an_input_error(tmp_path: Path) -> None:
    p = write_dn(tmp_path / "scene.tif", ramp(), date=None)
    with pytest.raises(InputError, match="scene.tif.*ACQUISITION_DATE"):
        multiband.read(p)


def test_missing_crs_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "nocrs_20240410.tif"
    with rasterio.open(p, "w", driver="GTiff", width=N, height=N, count=4, dtype="uint16",
                       transform=TF, nodata=0) as dst:
        dst.write((ramp() * 1e4).astype("uint16"))
        for i, b in enumerate(S2, start=1):
            dst.set_band_description(i, b)
        dst.scales = (1e-4,) * 4
        dst.update_tags(ACQUISITION_DATE="2024-04-10")
    with pytest.raises(InputError, match="nocrs_20240410.tif.*CRS"):
        open_scene([p])


def test_missing_band_description_names_the_file_and_band(tmp_path: Path) -> None:
    p = write_dn(tmp_path / "nodesc_20240410.tif", ramp())
    with rasterio.open(p, "r+") as dst:
        dst.set_band_description(3, "")
    with pytest.raises(InputError, match=r"nodesc_20240410.tif: bands \[3\]"):
        open_scene([p])


def test_unknown_band_description_names_the_file(tmp_path: Path) -> None:
    p = write_dn(tmp_path / "odd_20240410.tif", ramp(), names=["B02", "B03", "B04", "Band 4"])
    with pytest.raises(InputError, match=r"odd_20240410.tif: bands \[4\]"):
        open_scene([p])


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken_20240410.tif"
    p.write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.raises(InputError, match="broken_20240410.tif"):
        open_scene([p])


def test_truncated_file_fails_at_open_not_in_a_compute(tmp_path: Path) -> None:
    """A cloud-optimised GeoTIFF (header first) cut short: its first block still reads."""
    import rasterio.shutil
    rng = np.random.default_rng(0)
    refl = rng.uniform(0.02, 0.5, (4, 300, 300))              # 2 x 2 blocks of 256
    src = write_dn(tmp_path / "src_20240410.tif", refl, tf=TF)
    p = tmp_path / "cut_20240410.tif"
    rasterio.shutil.copy(src, p, driver="COG", BLOCKSIZE=256)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 9 // 10])                # a download cut short
    with rasterio.open(p) as f:
        f.read(1, window=((0, 1), (0, 1)))                    # the header and block 1 are fine
    with pytest.raises(InputError, match="cut_20240410.tif"):
        open_scene([p], chunks=128)


def test_another_format_named_tif_is_named(tmp_path: Path) -> None:
    """A PNG renamed .tif (an RGB photo, a screenshot) was refused as 'no CRS;
    georeference the orthomosaic'."""
    png = tmp_path / "flight.png"
    with rasterio.open(png, "w", driver="PNG", width=8, height=8, count=3,
                       dtype="uint8") as dst:
        dst.write(np.full((3, 8, 8), 120, "uint8"))
    tif = png.rename(tmp_path / "flight_20240501.tif")
    with pytest.raises(InputError, match="flight_20240501.tif: not a GeoTIFF but a PNG image "
                                         "named .tif"):
        open_scene([tif], chunks=16)


# --- one grid ----------------------------------------------------------------------------------
def test_half_pixel_shift_is_aligned_onto_the_first_grid(tmp_path: Path) -> None:
    refl = ramp()
    a = write_dn(tmp_path / "a_20240401.tif", refl, date="2024-04-01")
    shifted = TF * Affine.translation(0.5, 0.5)               # half a pixel right and down
    b = write_dn(tmp_path / "b_20240415.tif", refl, tf=shifted, date="2024-04-15")
    s = open_scene([b, a], chunks=16)                         # b first on the command line
    # the grid is the first product's; the dates are sorted
    assert s.rio.transform() == shifted
    assert [str(t)[:10] for t in s["time"].values] == ["2024-04-01", "2024-04-15"]
    v = s.values
    np.testing.assert_allclose(v[1], refl, atol=1e-4)         # b on its own grid: untouched
    # a's pixels taken as measured (nearest), not averaged across the half pixel: every value
    # on the 0.001 lattice of the ramp (an average of neighbours lies between, e.g. 0.0525)
    inside = v[0, :, :N - 1, :N - 1]
    assert np.isfinite(inside).all()
    np.testing.assert_allclose(inside * 1000, np.round(inside * 1000), atol=0.05)
    assert np.isnan(v[0, :, -1, :]).all()                     # beyond a's edge: NaN, not 0


def test_a_date_on_another_lattice_keeps_its_measured_pixels(tmp_path: Path) -> None:
    """Each grid pixel takes the value of the image pixel holding its centre: no average of
    neighbours, which smooths away the contrast of a plot within a pixel and the texture of
    drone pixels (a Web Mercator flight regridded bilinearly flagged a third of the ground)."""
    rng = np.random.default_rng(0)
    refl = rng.uniform(0.02, 0.4, (4, N, N))                  # texture: a noise image
    a = write_dn(tmp_path / "a_20240401.tif", refl, date="2024-04-01")
    b = write_dn(tmp_path / "b_20240415.tif", refl, tf=TF * Affine.translation(0.4, 0.4),
                 date="2024-04-15")
    v = open_scene([b, a], chunks=16).values
    # b's pixel (i, j) has its centre at (i + 0.9, j + 0.9) of a: inside a's pixel (i, j)
    np.testing.assert_allclose(v[0], refl, atol=1e-4)


def test_a_finer_date_is_averaged_onto_the_grid(tmp_path: Path) -> None:
    """A date of 2.5 m pixels on a 5 m grid: the mean of the four pixels each grid pixel
    covers (nearest or bilinear would sample one or a few of them)."""
    rng = np.random.default_rng(1)
    fine = rng.uniform(0.02, 0.4, (4, 2 * N, 2 * N))
    coarse = fine.reshape(4, N, 2, N, 2).mean(axis=(2, 4))
    a = write_dn(tmp_path / "a_20240401.tif", coarse, tf=TF * Affine.scale(0.5),
                 date="2024-04-01")
    b = write_dn(tmp_path / "b_20240415.tif", fine, tf=TF * Affine.scale(0.25),
                 date="2024-04-15")
    v = open_scene([a, b], chunks=16).values
    np.testing.assert_allclose(v[1], coarse, atol=2e-4)


def test_grids_in_degrees_pixels_apart_are_not_the_same() -> None:
    """5 cm drone pixels in EPSG:4326 are 4.5e-7 degrees: two grids two pixels apart differ,
    a thousandth of a pixel apart they are the same."""
    px = 4.5e-7
    a = Grid(ProjCRS.from_epsg(4326), Affine(px, 0, 120.0, 0, -px, 30.0), 100, 100)
    two = Grid(a.crs, Affine(px, 0, 120.0 + 2 * px, 0, -px, 30.0), 100, 100)
    tiny = Grid(a.crs, Affine(px, 0, 120.0 + 1e-4 * px, 0, -px, 30.0), 100, 100)
    assert not a.same_as(two) and a.same_as(tiny)
    wider = Grid(a.crs, Affine(px * 1.001, 0, 120.0, 0, -px, 30.0), 100, 100)
    assert not a.same_as(wider)                    # 0.1 pixel off at the far edge


def test_images_in_web_mercator_are_aligned_onto_utm_at_their_ground_pixel(caplog) -> None:
    """Web Mercator units are 1 / cos(latitude) ground metres (+33 % in area at 30 N): every
    metric setting and target area would be off, so the scene is worked on its UTM grid."""
    import tempfile
    cos30 = np.cos(np.radians(30.0))
    tf = Affine(10 / cos30, 0, 13_380_000.0, 0, -10 / cos30, 3_503_549.0)   # ~120.2 E, 30 N
    with tempfile.TemporaryDirectory() as d, caplog.at_level(logging.WARNING):
        p = write_dn(Path(d) / "m_20240410.tif", ramp(), tf=tf, crs="EPSG:3857")
        s = open_scene([p], chunks=16).compute()
    assert s.rio.crs.to_epsg() == 32651
    assert abs(s.rio.transform().a) == pytest.approx(10.0, rel=0.01)
    assert s.sizes["y"] == pytest.approx(N, abs=2) and s.sizes["x"] == pytest.approx(N, abs=2)
    assert np.isfinite(s.values).mean() > 0.8
    assert "EPSG:3857" in caplog.text and "aligned onto EPSG:32651" in caplog.text


def test_a_projected_grid_at_true_scale_is_kept() -> None:
    from pipeline.grid import true_scale_grid
    assert true_scale_grid(Grid(ProjCRS.from_user_input(CRS), TF, N, N)) is None
    assert true_scale_grid(Grid(ProjCRS.from_epsg(4326), Affine(1e-4, 0, 120, 0, -1e-4, 30),
                                N, N)) is None
    # a grid in US survey feet: areas would be in square feet; worked in metres on UTM
    feet = Grid(ProjCRS.from_epsg(2227), Affine(10, 0, 6_100_000, 0, -10, 2_000_000), N, N)
    utm, scale = true_scale_grid(feet)
    assert scale == pytest.approx(1 / 0.3048, rel=1e-3)
    assert utm.crs.to_epsg() == 32610 and abs(utm.transform.a) == pytest.approx(3.048, rel=1e-3)


def test_images_in_a_local_crs_are_refused_in_one_line(tmp_path: Path) -> None:
    """A drone mosaic exported in "arbitrary" coordinates (no GCPs): a pyproj traceback."""
    from pipeline.errors import CRSError
    local = ('LOCAL_CS["arbitrary",UNIT["metre",1],AXIS["Easting",EAST],'
             'AXIS["Northing",NORTH]]')
    p = write_dn(tmp_path / "a_20240401.tif", ramp(), crs=local)
    with pytest.raises(CRSError, match=r"a_20240401.tif: its CRS \(arbitrary\) is a local "
                                       "coordinate system, not tied to the Earth"):
        open_scene([p], chunks=16)
    # no CRS at all is not called a local one (the readers refuse it, naming the file)
    from pipeline.ingest import check_earth_crs
    check_earth_crs([xr.DataArray(np.zeros((2, 2)), dims=("y", "x"))])


def test_a_date_in_another_utm_zone_is_aligned(tmp_path: Path) -> None:
    refl = ramp(64)
    a = write_dn(tmp_path / "a_20240401.tif", refl, date="2024-04-01")
    dst_crs = "EPSG:32651"
    tf51, w, h = calculate_default_transform(CRS, dst_crs, 64, 64, *rasterio.transform
                                             .array_bounds(64, 64, TF), resolution=10)
    out = np.full((4, h, w), np.nan)
    reproject(refl, out, src_transform=TF, src_crs=CRS, dst_transform=tf51, dst_crs=dst_crs,
              resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan)
    b = write_dn(tmp_path / "b_20240415.tif", out, tf=tf51, crs=dst_crs, date="2024-04-15")
    s = open_scene([a, b], chunks=32)
    # the survey grid: a's CRS and pixel lattice, over b's bounds too (b's zone-51 box of
    # a's ground is wider in zone 50: its corners hold no data)
    assert s.rio.crs.to_epsg() == 32650
    tf = s.rio.transform()
    col, row = ~TF * (tf.c, tf.f)
    assert tf.a == TF.a and tf.e == TF.e and col == int(col) <= 0 and row == int(row) <= 0
    c, r = -int(col), -int(row)
    assert s.sizes["y"] >= r + 64 and s.sizes["x"] >= c + 64
    v = s.values[:, :, r:r + 64, c:c + 64]
    np.testing.assert_allclose(v[0], refl, atol=1e-4)
    core = (slice(None), slice(8, -8), slice(8, -8))          # edges lose pixels twice
    np.testing.assert_allclose(v[1][core], refl[core], atol=3e-3)
    assert np.isfinite(v[1][core]).all()
    assert json.loads(s.attrs["unsurveyed"]) == {"images_outside_grid_share": 0.0}


def test_a_dem_among_the_images_is_left_out(tmp_path: Path) -> None:
    """``--images scene/*.tif`` with the DEM in the scene's folder: the DEM (named dem.*, or
    the file given as the DEM) is not read as an image."""
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    for name in ("dem.tif", "elevation.tif"):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=N, height=N, count=1,
                           dtype="float32", crs=CRS, transform=TF) as dst:
            dst.write(np.full((1, N, N), 300, "float32"))
    s = open_scene([a, tmp_path / "dem.tif", tmp_path / "elevation.tif"], chunks=16,
                   dem=tmp_path / "elevation.tif")
    assert s.sizes["time"] == 1 and s["band"].values.tolist() == CANON
    # not given as the DEM: one band, no recognised name, so not an image either
    s = open_scene([a, tmp_path / "elevation.tif"], chunks=16)
    assert s.sizes["time"] == 1 and s["band"].values.tolist() == CANON
    with pytest.raises(InputError, match="elevation.tif: bands \\[1\\] have no recognised"):
        open_scene([tmp_path / "elevation.tif"], chunks=16)      # alone: the reader's reason
    with pytest.raises(InputError, match="dem.tif: a DEM .*not an image; give the images"):
        open_scene([tmp_path / "dem.tif"], chunks=16)          # it was "no images given"
    s = open_scene([tmp_path], chunks=16, dem=tmp_path / "elevation.tif")   # the folder
    assert s.sizes["time"] == 1 and s["band"].values.tolist() == CANON


def test_dem_in_another_crs_is_aligned(tmp_path: Path) -> None:
    s = open_scene([write_dn(tmp_path / "a_20240401.tif", ramp())], chunks=16)
    grid = Grid.of(s)
    # a lon/lat DEM, elevation linear in lon and lat, 0.00005 deg (~5 m) pixels
    lon0, lat0 = _TO_WGS.transform(499900.0, 3340100.0)
    dtf = Affine(0.00005, 0, lon0, 0, -0.00005, lat0)
    n = 120
    rows, cols = np.mgrid[0:n, 0:n] + 0.5
    lon, lat = dtf * (cols, rows)
    elev = (200 + 1e5 * (lon - lon0) + 3e5 * (lat0 - lat)).astype("float32")
    p = tmp_path / "dem.tif"
    with rasterio.open(p, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
                       crs="EPSG:4326", transform=dtf, nodata=-9999) as dst:
        dst.write(elev, 1)
    with CountComputes() as cc:
        dem = read_dem(p, grid, chunks=16)
    assert cc.runs == 0 and isinstance(dem.data, darr.Array)
    assert dem.dims == ("y", "x") and dem.shape == (N, N) and dem.dtype == np.float32
    assert dem.rio.crs.to_epsg() == 32650 and dem.rio.transform() == TF
    r, c = np.mgrid[0:N, 0:N] + 0.5
    x, y = TF * (c, r)
    plon, plat = _TO_WGS.transform(x, y)
    want = 200 + 1e5 * (plon - lon0) + 3e5 * (lat0 - plat)
    np.testing.assert_allclose(dem.values, want, atol=0.05)


def test_dem_without_crs_is_an_input_error(tmp_path: Path) -> None:
    p = tmp_path / "dem.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="float32") as dst:
        dst.write(np.zeros((1, 8, 8), "float32"))
    with pytest.raises(InputError, match="dem.tif.*CRS"):
        read_dem(p, Grid(ProjCRS.from_user_input(CRS), TF, N, N))


# --- AOI ---------------------------------------------------------------------------------------
def _lonlat(geom):
    return shapely.transform(geom, lambda xy: np.column_stack(
        _TO_WGS.transform(xy[:, 0], xy[:, 1])))


#: a triangle over the lower-left half of pixels 4..27 (metres, EPSG:32650)
TRIANGLE = Polygon([TF * (4, 4), TF * (4, 28), TF * (28, 28)])


def _check_clipped(s, expect_shape=(24, 24)) -> None:
    assert s.shape[2:] == expect_shape
    v = s.values[0, 0]
    # the scene's top-left is the triangle's bbox corner
    x0, y0 = s.rio.transform() * (0, 0)
    assert (x0, y0) == pytest.approx(TF * (4, 4), abs=1e-6)
    assert np.isfinite(v[20, 2]) and np.isfinite(v[12, 6])    # inside the triangle
    assert np.isnan(v[2, 20]) and np.isnan(v[5, 18])          # outside, inside the bbox


def test_geojson_aoi_in_wgs84_clips(tmp_path: Path) -> None:
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": mapping(_lonlat(TRIANGLE))}]}))
    geom = read_aoi(aoi, CRS)
    with CountComputes() as cc:
        s = open_scene([a], chunks=16, aoi=geom)
    assert cc.runs == 0, "open_scene with an AOI computed something"
    assert isinstance(s.data, darr.Array) and s.dtype == np.float32
    _check_clipped(s)


def test_geopackage_aoi_in_cgcs2000_clips(tmp_path: Path) -> None:
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    to_4490 = Transformer.from_crs(CRS, "EPSG:4490", always_xy=True)
    g = shapely.transform(TRIANGLE, lambda xy: np.column_stack(
        to_4490.transform(xy[:, 0], xy[:, 1])))
    gpkg = tmp_path / "aoi.gpkg"
    pyogrio.raw.write(gpkg, np.array([shapely.to_wkb(g)], dtype=object),
                      [np.array(["unit"], dtype=object)], ["name"],
                      crs=ProjCRS("EPSG:4490").to_wkt(), geometry_type="Polygon")
    s = open_scene([a], chunks=16, aoi=read_aoi(gpkg, CRS))
    _check_clipped(s)


def test_aoi_keeps_the_pixels_whose_centre_it_holds(tmp_path: Path) -> None:
    """A pixel the AOI only grazes is outside: a target over it would lie mostly outside the
    AOI ("detect inside them only")."""
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    x0, _ = TF * (4, 0)
    _, y1 = TF * (0, 12)
    x1, _ = TF * (10.3, 0)                # 0.3 of column 10, not its centre
    _, y0 = TF * (0, 4)
    s = open_scene([a], chunks=16, aoi=box(x0, y1, x1, y0)).isel(time=0, band=0).values
    assert s.shape == (8, 7)               # the window still reaches column 10
    assert np.isfinite(s[:, :6]).all() and np.isnan(s[:, 6]).all()


def test_a_corridor_aoi_one_pixel_wide_keeps_neighbours_for_the_slope(tmp_path: Path) -> None:
    """A 10 m wide corridor (one pixel): the scene was one pixel wide, and a DEM on it was
    refused ('DEM needs ... at least 2 pixels'), blaming the DEM. The window is widened to 3
    pixels; the pixels beside the corridor stay NaN."""
    from indices.terrain import slope_aspect
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    x0, y0 = TF * (10.2, 2)
    x1, y1 = TF * (10.8, 20)
    s = open_scene([a], chunks=16, aoi=box(x0, y1, x1, y0))
    v = s.isel(time=0, band=0).values
    assert v.shape == (18, 3)
    assert np.isfinite(v[:, 1]).all() and np.isnan(v[:, [0, 2]]).all()
    dem = tmp_path / "dem.tif"
    with rasterio.open(dem, "w", driver="GTiff", width=N, height=N, count=1, dtype="float32",
                       crs=CRS, transform=TF) as dst:
        dst.write(np.tile(np.arange(N, dtype="float32") * 5.0, (N, 1))[None])
    d = read_dem(dem, Grid.of(s.isel(time=0, band=0)), chunks=16)
    slope, _ = slope_aspect(d)
    assert np.isfinite(slope.values).any()


def test_aoi_outside_the_images_is_an_input_error(tmp_path: Path) -> None:
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    far = box(600000, 3000000, 601000, 3001000)
    with pytest.raises(InputError, match="AOI does not overlap"):
        open_scene([a], chunks=16, aoi=far)


def test_an_aoi_smaller_than_a_pixel_is_refused_for_what_it_is(tmp_path: Path) -> None:
    """A 3 m box (or an AOI shrunk by a wrong CRS): inspect said clear_fraction 0 and detect
    'every pixel is clouded, shadowed or without data', blaming the clouds."""
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    x, y = TF * (10.2, 10.2)                  # 3 m box between pixel centres
    with pytest.raises(InputError, match=r"the AOI holds no pixel centre of the images \(it covers 0.09 "
                                         "pixel"):
        open_scene([a], chunks=16, aoi=box(x - 1.5, y - 1.5, x + 1.5, y + 1.5))
    # a field beside the images that overlaps them by a sliver: 'lies outside' then 'every
    # pixel is clouded'
    x, y = TF * (N, 10)
    with pytest.raises(InputError, match=r"holds no pixel centre of the images \(it covers 1 "):
        open_scene([a], chunks=16, aoi=box(x - 1, y - 100, x + 500, y))


def test_aoi_whose_bbox_overlaps_but_polygon_does_not(tmp_path: Path) -> None:
    """An L-shaped AOI wrapping around the scene: its box covers the scene, it does not."""
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    x0, y0 = TF * (0, 0)
    x1, y1 = TF * (N, N)
    ring = box(x0 - 500, y1 - 500, x1 + 500, y0 + 500).difference(box(x0 - 100, y1 - 100,
                                                                       x1 + 100, y0 + 100))
    with pytest.raises(InputError, match="AOI does not overlap"):
        open_scene([a], chunks=16, aoi=ring)


# --- laziness ----------------------------------------------------------------------------------
def test_open_scene_is_lazy_and_chunked_on_y_x(tmp_path: Path) -> None:
    refl = ramp(64)
    a = write_dn(tmp_path / "a_20240401.tif", refl, date="2024-04-01")
    b = write_dn(tmp_path / "b_20240415.tif", refl, tf=TF * Affine.translation(0.5, 0.5),
                 date="2024-04-15")
    with CountComputes() as cc:
        s = open_scene([a, b], chunks=32)
    assert cc.runs == 0
    assert isinstance(s.data, darr.Array)
    assert s.dims == ("time", "band", "y", "x") and s.dtype == np.float32
    assert s.chunks[0] == (2,) and s.chunks[1] == (4,)
    assert s.chunks[2] == (32, 32) and s.chunks[3] == (32, 32)
    assert s.attrs["sensor"] == "sentinel2"
    assert np.isnan(s["sun_zenith"].values).all()


# --- folders -----------------------------------------------------------------------------------
def test_images_of_different_places_are_refused(tmp_path: Path) -> None:
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    far = TF * Affine.translation(10000, 0)                   # 100 km east
    b = write_dn(tmp_path / "b_20240415.tif", ramp(), tf=far)
    with pytest.raises(InputError, match="b_20240415.tif.*does not overlap"):
        open_scene([a, b], chunks=16)


def test_a_folder_of_product_folders_of_one_place_is_one_scene(tmp_path: Path) -> None:
    """Two dates of one BigEarthNet patch as per-band folders inside one parent folder."""
    import shutil
    patch = Path(__file__).parent / "data" / "bigearthnet" / "S2A_MSIL2A_20170613T101031_87_48"
    parent = tmp_path / "season"
    a = Path(shutil.copytree(patch, parent / patch.name))
    b = Path(shutil.copytree(patch, parent / "second"))
    for f in b.iterdir():
        f.rename(b / f.name.replace(patch.name, "second"))
    meta = b / "second_labels_metadata.json"
    doc = json.loads(meta.read_text())
    doc["acquisition_date"] = "2017-06-23 10:10:31"
    meta.write_text(json.dumps(doc))
    with CountComputes() as cc:
        s = open_scene([parent], chunks=64)
    assert cc.runs == 0
    assert s.shape == (2, 12, 120, 120)
    assert [str(t)[:10] for t in s["time"].values] == ["2017-06-13", "2017-06-23"]
    assert set(s["source"].values.tolist()) == {str(a), str(b)}
    np.testing.assert_array_equal(s.isel(time=0, band=3).values, s.isel(time=1, band=3).values)


def test_a_class_map_beside_the_dates_is_left_out_of_a_folder(tmp_path: Path, caplog) -> None:
    """A folder of dates may hold other rasters (a class map, an elevation or slope file):
    without a date and without a recognised band they are not images and are left out; a
    folder of nothing else says why."""
    write_dn(tmp_path / "a_20240401.tif", ramp(), date="2024-04-01")
    write_dn(tmp_path / "b_20240415.tif", ramp(), date="2024-04-15")
    with rasterio.open(tmp_path / "classes.tif", "w", driver="GTiff", width=N, height=N,
                       count=2, dtype="uint8", crs=CRS, transform=TF) as dst:
        dst.write(np.ones((2, N, N), "uint8"))
        dst.descriptions = ("dominant_class", "poppy_fraction_pct")
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
        s = open_scene([tmp_path], chunks=16)
    assert s.sizes["time"] == 2
    assert "classes.tif: left out of the images" in caplog.text
    # given by name with the dates (--images scene/*.tif), it is left out the same way
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
        s = open_scene(sorted(tmp_path.glob("*.tif")), chunks=16)
    assert s.sizes["time"] == 2 and "classes.tif: left out of the images" in caplog.text
    # given alone, it is read and refused with the reader's reason
    with pytest.raises(InputError, match="classes.tif"):
        open_scene([tmp_path / "classes.tif"])
    only = tmp_path / "only"
    only.mkdir()
    (tmp_path / "classes.tif").rename(only / "classes.tif")
    with pytest.raises(InputError, match=r"only: no image of the scene in the folder "
                                         r"\(classes.tif: 2 band\(s\), none with a "
                                         r"recognised name"):
        open_scene([only])


def test_integer_bands_without_a_scale_are_refused(tmp_path: Path) -> None:
    """DN x 10000 without a GDAL scale would read as reflectance in the thousands."""
    dn = (ramp() * 10000).astype("uint16")
    p = write_multiband(tmp_path / "noscale_20240410.tif", dn, S2, TF, CRS,
                        acquisition_date="2024-04-10", nodata=0)
    with pytest.raises(InputError, match=r"noscale_20240410.tif: integer bands \['blue'"):
        open_scene([p])
    # float reflectance needs no scale
    f = write_multiband(tmp_path / "float_20240410.tif", ramp().astype("float32"), S2, TF, CRS,
                        acquisition_date="2024-04-10", nodata=float("nan"))
    np.testing.assert_allclose(open_scene([f]).values[0], ramp(), rtol=1e-6)


def test_float_fill_below_minus_half_is_no_data_without_a_nodata_value(tmp_path: Path) -> None:
    """A float contract file whose -10000 fill is not declared as nodata: those pixels are no
    data (as in the drone reader), not reflectance -10000 averaged into the means."""
    refl = ramp().astype("float32")
    filled = refl.copy()
    filled[:, :, :8] = -10000
    filled[1, 20, 20] = -32767
    p = write_multiband(tmp_path / "fill_20240410.tif", filled, S2, TF, CRS,
                        acquisition_date="2024-04-10", nodata=None)
    [da] = multiband.read(p)
    v = da.values
    assert np.isnan(v[:, :, :8]).all() and np.isnan(v[1, 20, 20])
    keep = np.ones(v.shape, bool)
    keep[:, :, :8] = False
    keep[1, 20, 20] = False
    np.testing.assert_allclose(v[keep], refl[keep], rtol=1e-6)
    scene = open_scene([p], chunks=16)
    assert np.nanmin(scene.values) > 0


def test_integer_dn_0_is_no_data_without_a_nodata_value(tmp_path: Path) -> None:
    """uint16 DN with a scale and the -0.1 offset but no declared nodata: DN 0 (a swath's
    edge) is no data, not reflectance -0.1; SCL 0 stays a class code."""
    dn = np.round((ramp() + 0.1) * 10000).astype("uint16")
    dn[:, :, :5] = 0
    scl = np.full((1, N, N), 4, "uint16")
    scl[0, 0, 0] = 0
    p = write_multiband(tmp_path / "edge_20240410.tif", np.concatenate([dn, scl]),
                        S2 + ["SCL"], TF, CRS, acquisition_date="2024-04-10",
                        scales=[1e-4] * 4 + [1], offsets=[-0.1] * 4 + [0], nodata=None)
    [da] = multiband.read(p)
    v = da.values
    assert np.isnan(v[:4, :, :5]).all() and np.isfinite(v[:4, :, 5:]).all()
    np.testing.assert_allclose(v[:4, :, 5:], ramp()[:, :, 5:], atol=1e-4)
    assert v[4, 0, 0] == 0


@pytest.mark.parametrize("keep", [600, 1000, 0.5])
def test_a_file_cut_short_is_damaged_not_ungeoreferenced(tmp_path: Path, keep: float) -> None:
    """A copy that stopped early loses the end of the file and, with it, often the GeoKeys:
    the error says the file is incomplete or unreadable (it said "no CRS; georeference the
    orthomosaic" when the header survived without them)."""
    import rasterio.shutil
    refl = np.random.default_rng(0).uniform(0.02, 0.5, (4, 256, 256))
    full = write_dn(tmp_path / "full_20240410.tif", refl)
    cog = tmp_path / "cog_20240410.tif"              # header first, as many tools write
    rasterio.shutil.copy(full, cog, driver="COG")
    data = cog.read_bytes()
    cut = tmp_path / "cut_20240410.tif"
    cut.write_bytes(data[:int(keep * len(data)) if keep < 1 else int(keep)])
    with pytest.raises(InputError) as e:
        open_scene([cut])
    msg = str(e.value)
    assert msg.startswith(str(cut)) and "no CRS" not in msg
    assert "damaged or incomplete" in msg or "not a readable raster" in msg


def test_dem_elsewhere_is_refused_and_partial_dem_warned(tmp_path: Path, caplog) -> None:
    grid = Grid(ProjCRS.from_user_input(CRS), TF, N, N)

    def dem(name: str, tf: Affine) -> Path:
        p = tmp_path / name
        with rasterio.open(p, "w", driver="GTiff", width=N, height=N, count=1,
                           dtype="float32", crs=CRS, transform=tf, nodata=-9999) as dst:
            dst.write(np.full((1, N, N), 100.0, "float32"))
        return p
    with pytest.raises(InputError, match="far.tif: the DEM does not cover the images"):
        read_dem(dem("far.tif", TF * Affine.translation(1000, 0)), grid)
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
        half = read_dem(dem("half.tif", TF * Affine.translation(N // 2, 0)), grid, chunks=16)
    assert any("covers 50%" in r.getMessage() for r in caplog.records)
    v = half.values
    assert np.isnan(v[:, : N // 2]).all() and (v[:, N // 2 + 1:] == 100).all()


def test_earth_engine_band_names(tmp_path: Path) -> None:
    """Earth Engine exports name Sentinel-2 bands B2, B3, B4, B8 (and B8A, B11)."""
    p = write_dn(tmp_path / "gee_20240410.tif", ramp(), names=["B2", "B3", "b4", "B8"])
    [da] = multiband.read(p)
    assert da["band"].values.tolist() == CANON


def test_products_of_one_day_are_mosaicked_into_one_date(tmp_path: Path) -> None:
    """Two overlapping tiles of one pass: one date, each pixel observed once."""
    refl = ramp()
    left = refl.copy()
    left[:, :, 20:] = np.nan                                  # tile a's swath ends at col 20
    a = write_dn(tmp_path / "tile_a.tif", left, date="2024-04-10T03:05:00")
    right = refl + 0.01                                       # tell the tiles apart
    right[:, :, 10:] = np.nan                                 # tile b: cols 16-25 of the grid
    b = write_dn(tmp_path / "tile_b.tif", right, tf=TF * Affine.translation(16, 0),
                 date="2024-04-10T03:05:07")
    c = write_dn(tmp_path / "later.tif", refl, date="2024-04-20")
    with CountComputes() as cc:
        s = open_scene([c, b, a], chunks=16)                  # c's grid
    assert cc.runs == 0
    assert [str(t)[:19] for t in s["time"].values] == ["2024-04-10T03:05:00",
                                                       "2024-04-20T00:00:00"]
    assert s["source"].values[0] == f"{a}; {b}"               # in time order
    v = s.values[0]
    np.testing.assert_allclose(v[:, :, :20], refl[:, :, :20], atol=1e-4)     # a first
    np.testing.assert_allclose(v[:, :, 20:26], right[:, :, 4:10], atol=1e-4)  # b fills in
    assert np.isnan(v[:, :, 26:]).all()                                        # neither


# --- property: whole-pixel shifts align exactly --------------------------------------------------
def _da(values: np.ndarray, tf: Affine, names=("red", "scl")) -> xr.DataArray:
    ny, nx = values.shape[1:]
    y = tf.f + tf.e * (np.arange(ny) + 0.5)
    x = tf.c + tf.a * (np.arange(nx) + 0.5)
    da = xr.DataArray(darr.from_array(values.astype("float32"), chunks=(-1, 8, 8)),
                      dims=("band", "y", "x"), coords={"band": list(names), "y": y, "x": x})
    return da.rio.write_crs(CRS).rio.write_transform(tf)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dx=st.integers(-6, 6), dy=st.integers(-6, 6), seed=st.integers(0, 1000))
def test_property_whole_pixel_shift_aligns_exactly(dx: int, dy: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    src = np.stack([rng.uniform(0.01, 0.6, (16, 16)),
                    rng.integers(0, 12, (16, 16)).astype(float)])    # reflectance, SCL classes
    grid = Grid(ProjCRS.from_user_input(CRS), TF, 16, 16)
    out = align(_da(src, TF * Affine.translation(dx, dy)), grid).values
    want = np.full_like(src, np.nan)
    ys, xs = slice(max(dy, 0), 16 + min(dy, 0)), slice(max(dx, 0), 16 + min(dx, 0))
    sy, sx = slice(max(-dy, 0), 16 + min(-dy, 0)), slice(max(-dx, 0), 16 + min(-dx, 0))
    want[:, ys, xs] = src[:, sy, sx]
    # inside: exactly the source pixels (SCL by nearest, never blended); outside: NaN
    np.testing.assert_allclose(out[:, ys, xs], want[:, ys, xs], rtol=1e-6)
    assert np.isnan(out[0]).sum() == 256 - (ys.stop - ys.start) * (xs.stop - xs.start)
    assert set(np.unique(out[1][np.isfinite(out[1])])) <= set(range(12))


def test_aoi_partly_outside_the_grid_is_warned(tmp_path: Path, caplog) -> None:
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    x0, y0 = TF * (16, 0)
    half_out = box(x0, y0 - 320, x0 + 320, y0)                # its right half is off the grid
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
        s = open_scene([a], chunks=16, aoi=half_out)
    assert s.shape[2:] == (32, 16)
    assert any("50% of the AOI lies outside" in r.getMessage() for r in caplog.records)
    # and the share travels with the scene into detect's report.json
    assert json.loads(s.attrs["unsurveyed"])["aoi_outside_grid_share"] == pytest.approx(0.5)


def test_an_adjacent_tile_is_surveyed_with_the_first(tmp_path: Path) -> None:
    """Two tiles of one date, the second half beyond the first: the survey grid spans both
    (it was the first image's, and a third of the ground given was cut away), on the first
    image's pixel lattice; a later date of the first tile alone is no data beyond it."""
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    b = write_dn(tmp_path / "b_20240401.tif", ramp() + 0.01,
                 tf=TF * Affine.translation(N // 2, 0))
    later = write_dn(tmp_path / "a_20240420.tif", ramp(), date="2024-04-20")
    with CountComputes() as cc:
        s = open_scene([a, b, later], chunks=16)
    assert cc.runs == 0
    assert s.sizes["time"] == 2 and s.shape[2:] == (N, N + N // 2)
    assert s.rio.transform() == TF
    v = s.values
    np.testing.assert_allclose(v[0, :, :, :N], ramp(), atol=1e-4)             # a first
    np.testing.assert_allclose(v[0, :, :, N:], ramp()[:, :, N // 2:] + 0.01, atol=1e-4)  # b
    np.testing.assert_allclose(v[1, :, :, :N], ramp(), atol=1e-4)
    assert np.isnan(v[1, :, :, N:]).all()
    assert json.loads(s.attrs["unsurveyed"]) == {"images_outside_grid_share": 0.0}


def test_tiles_that_chain_are_one_place_and_abutting_tiles_join(tmp_path: Path) -> None:
    """A-B-C in a row, C apart from A but touching B (patches cut edge to edge, as
    BigEarthNet's): one place, in any order; C alone with A is another place."""
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    b = write_dn(tmp_path / "b_20240401.tif", ramp(), tf=TF * Affine.translation(N, 0))
    c = write_dn(tmp_path / "c_20240401.tif", ramp(), tf=TF * Affine.translation(2 * N, 0))
    s = open_scene([a, c, b], chunks=16)
    assert s.shape[2:] == (N, 3 * N) and s.rio.transform() == TF
    assert np.isfinite(s.values).all()                    # no seam between the patches
    with pytest.raises(InputError, match="c_20240401.tif does not overlap .*a_20240401.tif"):
        open_scene([a, c], chunks=16)


def test_a_tile_above_and_left_moves_the_grid_origin(tmp_path: Path) -> None:
    """The grid's origin follows the ground, not the first file: a tile up and to the left
    (given second) widens the grid that way, on the first image's lattice."""
    a = write_dn(tmp_path / "a_20240401.tif", ramp())
    up_left = TF * Affine.translation(-8, -4)
    b = write_dn(tmp_path / "b_20240401.tif", ramp(), tf=up_left)
    s = open_scene([a, b], chunks=16)
    assert s.rio.transform() == up_left and s.shape[2:] == (N + 4, N + 8)
    np.testing.assert_allclose(s.values[0, :, 4:, 8:], ramp(), atol=1e-4)   # a first


# --- contract variants found by an outside-style audit (session 16) ---------------------------
def test_b10_is_dropped_not_refused(tmp_path: Path) -> None:
    """The contract names B01..B12: a file with B10 (cirrus, which poppyscan does not use)
    reads as the same file without it."""
    refl = np.concatenate([ramp(), ramp()[:1] * 0 + 0.01])
    with_b10 = write_dn(tmp_path / "a_20240410.tif", refl, names=[*S2, "B10"])
    plain = write_dn(tmp_path / "b_20240410.tif", ramp())
    [a], [b] = multiband.read(with_b10), multiband.read(plain)
    assert a["band"].values.tolist() == CANON
    np.testing.assert_array_equal(a.values, b.values)
    # the layers an L2A export carries beside the bands (Earth Engine's S2_SR_HARMONIZED: AOT,
    # WVP, MSK_CLDPRB, QA60) were refused as "no recognised description"
    extra = np.concatenate([ramp(), np.full((4, N, N), 0.02)])
    with_layers = write_dn(tmp_path / "c_20240410.tif", extra,
                           names=[*S2, "AOT", "WVP", "MSK_CLDPRB", "QA60"])
    [c] = multiband.read(with_layers)
    assert c["band"].values.tolist() == CANON
    np.testing.assert_array_equal(c.values, b.values)


@pytest.mark.parametrize("tag,sensor", [("Sentinel-2A", "sentinel2"), ("SENTINEL-2B", "sentinel2"),
                                        ("S2C", "sentinel2"), ("MSI", "sentinel2"),
                                        ("sentinel2", "sentinel2"),
                                        ("some processor 1.2", "sentinel2")])
def test_a_sensor_tag_names_sentinel2_in_any_spelling(tmp_path: Path, tag, sensor) -> None:
    """A SENSOR tag is not part of the contract: Sentinel-2A and -2B dates are one sensor,
    and a value that names no sensor leaves the bands to decide."""
    p = write_dn(tmp_path / "a_20240410.tif", ramp(), tags={"SENSOR": tag})
    [da] = multiband.read(p)
    assert da.attrs["sensor"] == sensor
    q = write_dn(tmp_path / "b.tif", ramp(), date="2024-04-20", tags={"SENSOR": "Sentinel-2B"})
    assert open_scene([p, q], chunks=16).sizes["time"] == 2


@pytest.mark.parametrize("value", ["2024:05:03 02:31:00", "2024/05/03", "2024.05.03"])
def test_acquisition_date_in_tiff_and_slash_forms(tmp_path: Path, value) -> None:
    p = write_dn(tmp_path / "scene.tif", ramp(), date=None, tags={"ACQUISITION_DATE": value})
    [da] = multiband.read(p)
    assert da.attrs["time"].astype("datetime64[D]") == np.datetime64("2024-05-03")


def test_mixed_separators_are_not_a_date() -> None:
    assert multiband.parse_date("2024-05_03") is None
    assert multiband.parse_date("v2024.05-03") is None


def test_dated_single_band_rasters_in_a_folder_are_left_out(tmp_path: Path, caplog) -> None:
    """A cloud mask or a DEM copy carrying a date (cloudmask_20240421.tif, elevation.tif with
    an ACQUISITION_DATE tag) is not an image: under three bands, none recognised."""
    write_dn(tmp_path / "a_20240401.tif", ramp(), date="2024-04-01")
    for name in ("cloudmask_20240421.tif", "elevation.tif"):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=N, height=N, count=1,
                           dtype="float32", crs=CRS, transform=TF) as dst:
            dst.write(np.ones((1, N, N), "float32"))
            dst.update_tags(ACQUISITION_DATE="2024-04-21")
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
        s = open_scene([tmp_path], chunks=16)
    assert s.sizes["time"] == 1
    assert "cloudmask_20240421.tif: left out" in caplog.text
    assert "elevation.tif: left out" in caplog.text


def test_scl_on_some_dates_masks_those_dates(tmp_path: Path) -> None:
    """SCL present on some dates only: kept where it is (its clouds masked), the other dates
    masked by the spectral test; before, SCL was dropped from every date."""
    from pipeline.masks import apply_masks
    refl = ramp()
    with_scl = np.concatenate([refl, np.full((1, N, N), 4.0)])
    with_scl[4, :8, :8] = 9                                   # a cloud SCL marks (large: 64 px)
    a = write_dn(tmp_path / "a_20240401.tif", refl)           # no SCL
    dn = np.round(with_scl * np.array([1e4] * 4 + [1])[:, None, None]).astype("uint16")
    b = write_multiband(tmp_path / "b_20240415.tif", dn, [*S2, "SCL"], TF, CRS,
                        acquisition_date="2024-04-15", scales=[1e-4] * 4 + [1.0],
                        offsets=[0.0] * 5, nodata=0)
    s = open_scene([a, b], chunks=16)
    assert "scl" in s["band"].values.tolist()
    assert np.isnan(s.sel(band="scl").values[0]).all()
    m = apply_masks(s, max_flower_px=50).values
    assert np.isnan(m[1, :, :8, :8]).all() and np.isfinite(m[1, :, 8:, 8:]).all()
    assert np.isfinite(m[0]).all()                            # spectral test: clear ramp


def test_dem_scale_and_offset_are_applied(tmp_path: Path) -> None:
    s = open_scene([write_dn(tmp_path / "a_20240401.tif", ramp())], chunks=16)
    elev_dm = np.full((N, N), 2500, "uint16")                 # 250 m in decimetres
    p = tmp_path / "dem.tif"
    with rasterio.open(p, "w", driver="GTiff", width=N, height=N, count=1, dtype="uint16",
                       crs=CRS, transform=TF, nodata=0) as dst:
        dst.write(elev_dm, 1)
        dst.scales, dst.offsets = (0.1,), (5.0,)
    dem = read_dem(p, Grid.of(s), chunks=16)
    np.testing.assert_allclose(dem.values, 255.0, atol=1e-3)


def test_undeclared_dem_void_fills_are_no_data(tmp_path: Path) -> None:
    """SRTM's -32768 (or 32767, -9999) in a DEM that declares no nodata was read as an
    elevation: targets at -32700 m, and an elevation calendar's phases shifted by years."""
    s = open_scene([write_dn(tmp_path / "a_20240401.tif", ramp())], chunks=16)
    z = np.full((N, N), 1200, "int16")
    z[:4, :4], z[-4:, -4:], z[10, 10], z[11, 11] = -32768, 32767, -9999, -420   # Dead Sea
    p = tmp_path / "dem.tif"
    with rasterio.open(p, "w", driver="GTiff", width=N, height=N, count=1, dtype="int16",
                       crs=CRS, transform=TF) as dst:
        dst.write(z, 1)
    v = read_dem(p, Grid.of(s), chunks=16).values
    assert np.isnan(v[:4, :4]).all() and np.isnan(v[-4:, -4:]).all() and np.isnan(v[10, 10])
    assert v[11, 11] == -420 and v[5, 5] == 1200


def test_a_dem_without_valid_elevation_or_in_a_local_crs_is_refused(tmp_path: Path) -> None:
    """An all-NaN DEM over the images was taken silently (every target without elevation,
    an elevation calendar's phases unknown); a DEM in a local CRS was a traceback."""
    from pipeline.errors import CRSError
    grid = Grid(ProjCRS.from_user_input(CRS), TF, N, N)
    p = tmp_path / "dem.tif"
    with rasterio.open(p, "w", driver="GTiff", width=N, height=N, count=1, dtype="float32",
                       crs=CRS, transform=TF, nodata=np.nan) as dst:
        dst.write(np.full((1, N, N), np.nan, "float32"))
    with pytest.raises(InputError, match="dem.tif: the DEM has no valid elevation over the "
                                         "images"):
        read_dem(p, grid)
    with rasterio.open(p, "r+") as dst:          # one valid corner is enough
        z = np.full((N, N), np.nan, "float32")
        z[-6:, -6:] = 800.0
        dst.write(z, 1)
    assert np.nanmax(read_dem(p, grid).values) == 800.0
    with rasterio.open(p, "r+") as dst:
        dst.crs = rasterio.crs.CRS.from_wkt('LOCAL_CS["arbitrary",UNIT["metre",1]]')
    with pytest.raises(CRSError, match="dem.tif: its CRS .* is a local coordinate system"):
        read_dem(p, grid)


def test_a_float_files_zero_collar_is_no_data_and_percent_is_refused(tmp_path: Path) -> None:
    """Float reflectance without a declared nodata: a pixel 0 in every reflectance band (the
    collar of a clipped mosaic) is no data, SCL keeps its code; it was read as ground and
    scored. Float values in percent were all masked as implausible ('nothing was seen'):
    refused in one line saying what to set."""
    refl = ramp().astype("float32")
    refl[:, :, :4] = 0.0
    scl = np.full((1, N, N), 4, "float32")
    p = write_multiband(tmp_path / "f_20240410.tif", np.concatenate([refl, scl]), S2 + ["SCL"],
                        TF, CRS, acquisition_date="2024-04-10", nodata=None)
    [da] = multiband.read(p)
    v = da.values
    assert np.isnan(v[:4, :, :4]).all() and (v[4, :, :4] == 4).all()
    np.testing.assert_allclose(v[:4, :, 4:], ramp()[:, :, 4:], rtol=1e-6)
    pct = write_multiband(tmp_path / "pct_20240410.tif", (ramp() * 100).astype("float32"), S2,
                          TF, CRS, acquisition_date="2024-04-10", nodata=None)
    with pytest.raises(InputError) as exc:
        multiband.read(pct)
    assert "\n" not in str(exc.value) and "-scale 0.01" in str(exc.value)


def test_a_rotated_image_is_inside_its_own_grid(tmp_path: Path, caplog) -> None:
    """A rotated orthomosaic (docs/outputs.md: supported) warned that 100 % of its ground lay
    outside the survey grid, whose footprint was drawn from two corners."""
    import logging
    rot = TF * Affine.rotation(20)
    p = write_dn(tmp_path / "rot_20240410.tif", ramp(), tf=rot)
    with caplog.at_level(logging.WARNING):
        scene = open_scene([p], chunks=16)
    assert json.loads(scene.attrs["unsurveyed"])["images_outside_grid_share"] == 0.0
    assert "outside the survey grid" not in caplog.text


def test_scl_0_stays_the_no_data_class_under_nodata_0(tmp_path: Path) -> None:
    """With nodata 0 declared (the usual L2A coding), SCL 0 equalled the nodata value and was
    read as 'no SCL', so the masks judged the pixel by its spectrum and counted it clear; it
    stays class 0 (no data), which the masks drop. Reflectance DN 0 is still no data."""
    dn = np.round(ramp() * 10000).astype("uint16")
    dn[:, 0, 1] = 0
    scl = np.full((1, N, N), 4, "uint16")
    scl[0, 0, 0] = 0
    p = write_multiband(tmp_path / "s_20240410.tif", np.concatenate([dn, scl]), S2 + ["SCL"],
                        TF, CRS, acquisition_date="2024-04-10", scales=[1e-4] * 4 + [1],
                        offsets=[0] * 5, nodata=0)
    [da] = multiband.read(p)
    v = da.values
    assert v[4, 0, 0] == 0 and np.isfinite(v[:4, 0, 0]).all()
    assert np.isnan(v[:4, 0, 1]).all()
    from pipeline.masks import apply_masks
    masked = apply_masks(open_scene([p], chunks=16)).values
    assert np.isnan(masked[0, :4, 0, 0]).all() and np.isfinite(masked[0, :4, 5, 5]).all()
