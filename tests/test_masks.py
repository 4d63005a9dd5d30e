"""Masks: SCL classes, flower rescue, spectral fallback, NaN never zero, laziness."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr

from pipeline.masks import apply_masks

BANDS = ["coastal", "blue", "green", "red", "nir", "swir16", "scl"]
VEG = {"coastal": 0.05, "blue": 0.04, "green": 0.08, "red": 0.04, "nir": 0.40, "swir16": 0.20,
       "scl": 4}
FLOWER = {"coastal": 0.12, "blue": 0.30, "green": 0.35, "red": 0.30, "nir": 0.45,
          "swir16": 0.21}
CLOUD = {"coastal": 0.50, "blue": 0.50, "green": 0.50, "red": 0.50, "nir": 0.50,
         "swir16": 0.45}
SNOW = {"coastal": 0.80, "blue": 0.85, "green": 0.80, "red": 0.78, "nir": 0.70,
        "swir16": 0.05}
N = 128

# regions (rows, cols)
FLOWER_AT = (slice(60, 66), slice(30, 35))      # 30 px, across the chunk border at row 64
BIG_CLOUD = (slice(0, 30), slice(90, 120))      # 900 px, bright SWIR
PUFF = (slice(100, 104), slice(10, 14))         # 16 px, bright SWIR: a small real cloud
SNOWPATCH = (slice(100, 104), slice(100, 104))  # 16 px, snow: high NDSI
DARK_BIG = (slice(59, 69), slice(59, 69))       # 100 px, SWIR-dark, cut in 4 by chunk borders
SHADOW = (slice(40, 44), slice(0, 4))
NODATA = (slice(127, 128), slice(127, 128))


def _paint(arr: np.ndarray, where: tuple[slice, slice], values: dict, scl: int) -> None:
    for i, b in enumerate(BANDS):
        arr[i][where] = scl if b == "scl" else values[b]


def make_scene(flower_scl: tuple[int, int] = (8, 11), with_scl: bool = True,
               chunks: int = 64) -> xr.DataArray:
    data = np.empty((2, len(BANDS), N, N), dtype="float32")
    for t in range(2):
        arr = data[t]
        for i, b in enumerate(BANDS):
            arr[i] = VEG[b]
        _paint(arr, FLOWER_AT, FLOWER, flower_scl[t])
        _paint(arr, BIG_CLOUD, CLOUD, 9)
        _paint(arr, PUFF, CLOUD, 8)
        _paint(arr, SNOWPATCH, SNOW, 11)
        _paint(arr, DARK_BIG, FLOWER, 8)
        _paint(arr, SHADOW, {**VEG, "nir": 0.1}, 3)
        arr[:, NODATA[0], NODATA[1]] = np.nan           # the readers' no data
        arr[BANDS.index("scl")][NODATA] = 0
    bands = BANDS if with_scl else BANDS[:-1]
    da = xr.DataArray(
        data[:, : len(bands)], dims=("time", "band", "y", "x"),
        coords={"time": pd.to_datetime(["2024-04-10", "2024-04-20"]).values, "band": bands,
                "y": 1000.0 - 10 * np.arange(N) - 5, "x": 500.0 + 10 * np.arange(N) + 5,
                "sun_zenith": ("time", [40.0, 38.0])},
        attrs={"sensor": "sentinel2"})
    da = da.rio.write_crs("EPSG:32650")
    return da.chunk({"time": -1, "band": -1, "y": chunks, "x": chunks})


def _valid(out: xr.DataArray, region: tuple[slice, slice]) -> np.ndarray:
    return np.isfinite(out.values[:, :, region[0], region[1]])


def test_flowers_rescued_clouds_masked() -> None:
    scene = make_scene()
    out = apply_masks(scene)
    assert out.chunks is not None                      # lazy
    assert "scl" not in out["band"].values.tolist()
    assert out.dims == ("time", "band", "y", "x") and out.dtype == np.float32
    assert out.attrs["sensor"] == "sentinel2" and out.rio.crs == scene.rio.crs
    assert "sun_zenith" in out.coords
    v = out.compute()
    assert _valid(v, FLOWER_AT).all()                  # SCL 8 and 11 flowers kept, both dates
    np.testing.assert_allclose(v.sel(band="blue").values[:, 60:66, 30:35], 0.30)
    for region in (BIG_CLOUD, PUFF, SNOWPATCH, DARK_BIG, SHADOW, NODATA):
        assert not _valid(v, region).any(), region
    masked = np.isnan(v.values)
    assert masked.sum() > 0 and not (v.values == 0).any()   # masked = NaN, never zero
    assert _valid(v, (slice(80, 90), slice(40, 50))).all()  # plain vegetation untouched


def test_rescue_off_masks_flowers() -> None:
    out = apply_masks(make_scene(), rescue_flowers=False).compute()
    assert not _valid(out, FLOWER_AT).any()


def test_area_limit_is_a_parameter() -> None:
    out = apply_masks(make_scene(), max_flower_px=20).compute()
    assert not _valid(out, FLOWER_AT).any()            # 30 px is now too large
    out = apply_masks(make_scene(), max_flower_px=120).compute()
    assert _valid(out, DARK_BIG).all()                 # 100 px SWIR-dark now rescued
    assert not _valid(out, PUFF).any()                 # bright SWIR never rescued


@pytest.mark.parametrize("chunks", [16, 64, 128])
def test_result_does_not_depend_on_chunks(chunks: int) -> None:
    ref = apply_masks(make_scene(chunks=128)).compute()
    out = apply_masks(make_scene(chunks=chunks)).compute()
    np.testing.assert_array_equal(np.isnan(out.values), np.isnan(ref.values))


def test_a_window_equals_the_whole_result_cut_to_it() -> None:
    """A tile masks its window with the halo around it as context: the 100 px SWIR-dark
    patch cut to 30 px by the window's edge is still judged whole (masked), and no pixel
    differs; without the context the cut patch passes for flowers."""
    scene = make_scene(chunks=128)
    ref = apply_masks(scene).compute()
    win = (slice(DARK_BIG[0].start + 7, None), slice(0, 90))
    out = apply_masks(scene, window=win).compute()
    np.testing.assert_array_equal(out.values, ref.values[:, :, win[0], win[1]])
    assert out.rio.transform() == ref.isel(y=win[0], x=win[1]).rio.transform(recalc=True)
    cut = apply_masks(scene.isel(y=win[0], x=win[1])).compute()   # no context: not rescued
    assert np.isnan(cut.values).sum() < np.isnan(out.values).sum()


def test_without_scl_spectral_test() -> None:
    out = apply_masks(make_scene(with_scl=False)).compute()
    assert _valid(out, FLOWER_AT).all()
    assert _valid(out, SNOWPATCH).all()      # not a cloud by the spectral test (dark SWIR)
    assert not _valid(out, BIG_CLOUD).any() and not _valid(out, PUFF).any()
    assert _valid(out, DARK_BIG).all() and not _valid(out, NODATA).any()


def test_drone_nodata_and_saturation() -> None:
    data = np.full((1, 4, 8, 8), 0.2, dtype="float32")
    data[0, 1, 0, 0] = np.nan          # one band missing -> all bands NaN
    data[0, 3, 1, 1] = 2.0             # saturated
    da = xr.DataArray(data, dims=("time", "band", "y", "x"),
                      coords={"time": [np.datetime64("2024-04-20", "ns")],
                              "band": ["green", "red", "rededge2", "nir"],
                              "y": np.arange(8.0), "x": np.arange(8.0)},
                      attrs={"sensor": "mavic3m"}).chunk({"y": 4, "x": 4})
    out = apply_masks(da).compute()
    assert np.isnan(out.values[0, :, 0, 0]).all() and np.isnan(out.values[0, :, 1, 1]).all()
    assert np.isfinite(out.values).sum() == 4 * (64 - 2)


def test_nothing_is_computed() -> None:
    import dask

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("apply_masks computed something")

    scene = make_scene()
    with dask.config.set(scheduler=refuse):
        out = apply_masks(scene)
    assert out.chunks is not None


@pytest.mark.parametrize("swir, kept", [(0.27, True), (0.29, True), (0.33, False)])
def test_rescue_keeps_what_the_spectral_cloud_test_would_not_call_cloud(swir, kept) -> None:
    """Petals over soil reach a swir16 of 0.25-0.30 (the independent simulator's false-flagged
    plots, docs/classifier.md); the rescue's SWIR bound is the spectral cloud test's."""
    from pipeline.masks import CLOUD_SWIR16_MIN
    scene = make_scene().compute()
    scene.values[:, BANDS.index("swir16"), FLOWER_AT[0], FLOWER_AT[1]] = swir
    out = apply_masks(scene.chunk({"y": 64, "x": 64})).compute()
    assert _valid(out, FLOWER_AT).all() == kept
    assert (swir <= CLOUD_SWIR16_MIN) == kept
