"""Index catalogue and safe evaluator: spyndex as the oracle, hand values for our own indices."""
from __future__ import annotations

import logging
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr

from indices.catalogue import IndexDef, computable_indices, compute_indices, load_catalogue
from indices.expr import FormulaError, evaluate, names_in, parse
from pipeline.errors import BandError, ConfigError

spyndex = pytest.importorskip("spyndex")

BEN = Path(__file__).parent / "data" / "bigearthnet"

#: canonical band name -> spyndex (Awesome Spectral Indices) band letter.
TO_SPYNDEX_BAND = {
    "coastal": "A", "blue": "B", "green": "G", "red": "R", "rededge1": "RE1",
    "rededge2": "RE2", "rededge3": "RE3", "nir": "N", "nir08": "N2", "wv": "WV",
    "swir16": "S1", "swir22": "S2",
}
#: our constant name -> spyndex constant name (spyndex writes the EVI gain as lower-case g).
TO_SPYNDEX_PARAM = {"G": "g"}

REQUIRED = ["NDVI", "EVI", "SAVI", "GNDVI", "NDRE", "CIre", "MTCI", "NDYI", "NDWI", "MNDWI",
            "BSI", "PSRI", "NBR", "ExG", "VARI", "NGRDI"]

S2_FILES = {  # canonical band -> (BigEarthNet band, repeat factor to 10 m)
    "coastal": ("B01", 6), "blue": ("B02", 1), "green": ("B03", 1), "red": ("B04", 1),
    "rededge1": ("B05", 2), "rededge2": ("B06", 2), "rededge3": ("B07", 2), "nir": ("B08", 1),
    "nir08": ("B8A", 2), "wv": ("B09", 6), "swir16": ("B11", 2), "swir22": ("B12", 2),
}


def spyndex_value(index: IndexDef, bands: dict[str, np.ndarray]) -> np.ndarray:
    """Compute ``index`` with spyndex from canonical-named arrays and the catalogue constants."""
    params = {TO_SPYNDEX_BAND[b]: bands[b] for b in index.bands}
    params.update({TO_SPYNDEX_PARAM.get(k, k): v for k, v in index.params})
    with np.errstate(divide="ignore", invalid="ignore"):  # spyndex divides by zero as numpy does
        return np.asarray(spyndex.computeIndex(index.spyndex_name, params=params))


def make_scene(data: np.ndarray, bands: list[str], *, chunks: int | None = None) -> xr.DataArray:
    t, _, ny, nx = data.shape
    arr = da.from_array(data, chunks=(t, len(bands), chunks, chunks)) if chunks else data
    return xr.DataArray(
        arr, dims=("time", "band", "y", "x"),
        coords={"time": np.arange(t).astype("datetime64[D]").astype("datetime64[ns]"),
                "band": bands, "y": 1000.0 - 10 * np.arange(ny), "x": 10.0 * np.arange(nx),
                "sun_zenith": ("time", np.full(t, np.nan))},
        attrs={"sensor": "sentinel2"},
    )


def read_patch(folder: Path) -> np.ndarray:
    """One BigEarthNet patch as (band, 120, 120) float32 reflectance, canonical band order."""
    layers = []
    for _, (s2, rep) in S2_FILES.items():
        with rasterio.open(folder / f"{folder.name}_{s2}.tif") as src:
            dn = src.read(1)
        refl = np.where(dn == 0, np.nan, dn / 10000.0).astype(np.float32)
        layers.append(np.repeat(np.repeat(refl, rep, axis=0), rep, axis=1))
    return np.stack(layers)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, IndexDef]:
    return load_catalogue()


@pytest.fixture(scope="module")
def bigearthnet() -> tuple[xr.DataArray, list[str]]:
    folders = sorted(p for p in BEN.iterdir() if p.is_dir())
    data = np.stack([read_patch(f) for f in folders])
    return make_scene(data, list(S2_FILES)), [f.name for f in folders]


# --- catalogue content ---------------------------------------------------------------------

def test_catalogue_has_required_and_petal_indices(catalogue):
    for name in REQUIRED + ["PWI", "VWI", "RPI", "MPI"]:
        assert name in catalogue, name
        entry = catalogue[name]
        assert entry.reference and entry.description and entry.bands
    assert catalogue["SAVI"].constants == {"L": 0.5}
    assert catalogue["EVI"].constants == {"G": 2.5, "C1": 6.0, "C2": 7.5, "L": 1.0}


def test_spyndex_names_exist_and_formulas_use_the_same_bands(catalogue):
    for entry in catalogue.values():
        if entry.spyndex_name is None:
            continue
        ref = spyndex.indices[entry.spyndex_name]
        ours = {TO_SPYNDEX_BAND[b] for b in entry.bands}
        ours |= {TO_SPYNDEX_PARAM.get(k, k) for k, _ in entry.params}
        assert ours == set(ref.bands), (entry.name, ref.formula)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_every_index_equals_spyndex_on_random_reflectance(catalogue, dtype, rtol):
    rng = np.random.default_rng(42)
    bands = {b: rng.uniform(0.01, 0.6, 4000).astype(dtype) for b in TO_SPYNDEX_BAND}
    checked = 0
    for entry in catalogue.values():
        if entry.spyndex_name is None:
            continue
        ours = np.asarray(entry.evaluate(bands))
        ref = spyndex_value(entry, bands)
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=0, err_msg=entry.name)
        checked += 1
    assert checked >= 18


def test_the_pipelines_float32_indices_equal_spyndex_in_float64(catalogue):
    """The Scene is float32; the indices were evaluated in float32 too, 1e-4 to 1e-3 off
    near a zero numerator or denominator (CIre, BSI, EVI): evaluated in float64 now. The
    oracle gets the same float32 inputs, in float64."""
    rng = np.random.default_rng(7)
    n = 20_000
    refl = rng.uniform(0.0, 0.6, (1, len(TO_SPYNDEX_BAND), 1, n)).astype(np.float32)
    scene = xr.DataArray(refl, dims=("time", "band", "y", "x"),
                         coords={"band": list(TO_SPYNDEX_BAND)})
    result = compute_indices(scene).compute()
    assert result.dtype == np.float32
    arrays = {b: refl[0, i, 0].astype(np.float64) for i, b in enumerate(TO_SPYNDEX_BAND)}
    for entry in catalogue.values():
        if entry.spyndex_name is None:
            continue
        ref = spyndex_value(entry, arrays)
        ours = result.sel(band=entry.name).values[0, 0]
        finite = np.isfinite(ref)
        np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-5, atol=0,
                                   err_msg=entry.name)


def test_every_index_equals_spyndex_on_bigearthnet(catalogue, bigearthnet):
    scene, _ = bigearthnet
    result = compute_indices(scene).compute()
    assert result.dtype == np.float32
    arrays = {b: scene.sel(band=b).values.astype(np.float64) for b in TO_SPYNDEX_BAND}
    for entry in catalogue.values():
        if entry.spyndex_name is None:
            continue
        ref = spyndex_value(entry, arrays)
        ours = result.sel(band=entry.name).values
        finite = np.isfinite(ref)
        assert finite.mean() > 0.99, entry.name
        np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-5, atol=0,
                                   err_msg=entry.name)


def test_ndvi_on_real_patches(bigearthnet):
    scene, names = bigearthnet
    ndvi = compute_indices(scene, ["NDVI"]).sel(band="NDVI").compute()
    for i, name in enumerate(names):
        median = float(np.nanmedian(ndvi.isel(time=i)))
        if name.startswith("S2A_MSIL2A_20170617T113321"):  # Irish pasture in June
            assert 0.75 <= median <= 0.9, (name, median)
        if name.startswith("S2B_MSIL2A_20180204"):  # Finnish snow in February
            assert -0.1 <= median <= 0.3, (name, median)


# --- hand-checked values for indices spyndex lacks or writes differently ---------------------

def test_petal_indices_hand_values(catalogue):
    # Jia et al. 2011 canopy spectra, before and at white flowering (green, red, NIR).
    pre = {"green": 0.09, "red": 0.04, "nir": 0.46, "blue": 0.04}
    bloom = {"green": 0.18, "red": 0.15, "nir": 0.46, "blue": 0.15}
    pwi = catalogue["PWI"]
    assert pwi.evaluate(pre) == pytest.approx((0.13 - 0.92) / (0.13 + 0.92))  # -0.752
    assert pwi.evaluate(bloom) == pytest.approx((0.33 - 0.92) / (0.33 + 0.92))  # -0.472
    assert pwi.evaluate(bloom) - pwi.evaluate(pre) > 0.25
    vwi = catalogue["VWI"]
    assert vwi.evaluate({"blue": 0.6, "green": 0.6, "red": 0.6}) == pytest.approx(0.6)
    assert vwi.evaluate({"blue": 0.04, "green": 0.09, "red": 0.04}) == pytest.approx(
        9 * 0.04 * 0.09 * 0.04 / 0.17 ** 2)
    assert vwi.evaluate(bloom) > 3 * vwi.evaluate(pre)
    rpi = catalogue["RPI"]
    assert rpi.evaluate(pre) == pytest.approx(-0.05 / 0.13)
    assert rpi.evaluate({"red": 0.5, "green": 0.1}) == pytest.approx(0.4 / 0.6)
    mpi = catalogue["MPI"]
    assert mpi.evaluate({"red": 0.4, "blue": 0.3, "green": 0.1}) == pytest.approx(0.5 / 0.9)


def test_ndre2_separates_leaves_from_petals_soil_and_roofs(catalogue):
    """NDRE at 730-740 nm: a leaf's chlorophyll red edge keeps it well above 0; petals (no
    chlorophyll), soil and roofs have none (ratios of flat spectra are near 0)."""
    ndre2 = catalogue["NDRE2"]
    assert ndre2.bands == ("nir", "rededge2")
    assert ndre2.evaluate({"nir": 0.47, "rededge2": 0.30}) == pytest.approx(0.17 / 0.77)
    for flat in (0.63, 0.22, 0.09):                      # white petal, soil, dark roof
        assert abs(ndre2.evaluate({"nir": flat * 1.04, "rededge2": flat})) < 0.03
    assert ndre2.evaluate({"nir": 2 * 0.47, "rededge2": 2 * 0.30}) == pytest.approx(0.17 / 0.77)


def test_mpi_is_minus_gli(catalogue):
    rng = np.random.default_rng(1)
    b = {k: rng.uniform(0.01, 0.6, 500) for k in ("red", "green", "blue")}
    gli = spyndex.computeIndex("GLI", params={"R": b["red"], "G": b["green"], "B": b["blue"]})
    np.testing.assert_allclose(catalogue["MPI"].evaluate(b), -np.asarray(gli), rtol=1e-12)


# --- compute_indices behaviour ----------------------------------------------------------------

def test_missing_bands_are_skipped_with_one_notice(caplog):
    rng = np.random.default_rng(0)
    scene = make_scene(rng.uniform(0.01, 0.5, (1, 3, 8, 8)).astype(np.float32),
                       ["green", "red", "nir"])
    with caplog.at_level(logging.INFO, logger="indices.catalogue"):
        out = compute_indices(scene, ["NDVI", "EVI", "NDRE", "PWI"])
    assert out["band"].values.tolist() == ["NDVI", "PWI"]
    notices = [r for r in caplog.records if r.name == "indices.catalogue"]
    assert len(notices) == 1
    msg = notices[0].getMessage()
    assert "EVI" in msg and "blue" in msg and "NDRE" in msg and "rededge1" in msg
    assert notices[0].levelno == logging.INFO


def test_computable_indices_per_sensor():
    mavic3m = ["green", "red", "rededge1", "nir"]  # no blue
    names = computable_indices(mavic3m)
    assert {"NDVI", "SAVI", "GNDVI", "NDRE", "CIre", "NDWI", "NGRDI", "PWI", "RPI"} == set(names)
    assert computable_indices(["blue", "green", "red"]) == [
        "NDYI", "ExG", "VARI", "NGRDI", "VWI", "RPI", "MPI"]
    assert len(computable_indices(list(TO_SPYNDEX_BAND))) == len(load_catalogue())
    assert computable_indices(mavic3m, ["PWI", "EVI", "NDVI"]) == ["PWI", "NDVI"]


def test_unknown_index_name_is_a_config_error():
    scene = make_scene(np.ones((1, 2, 4, 4), np.float32), ["red", "nir"])
    with pytest.raises(ConfigError, match="NOPE"):
        compute_indices(scene, ["NDVI", "NOPE"])


def _refuse(*args, **kwargs):
    raise AssertionError("compute_indices computed something")


def test_compute_indices_stays_lazy_and_keeps_coords():
    rng = np.random.default_rng(3)
    bands = ["blue", "green", "red", "nir", "scl"]
    data = rng.uniform(0.01, 0.5, (2, 5, 32, 32)).astype(np.float32)
    scene = make_scene(data, bands, chunks=16)
    with dask.config.set(scheduler=_refuse):
        out = compute_indices(scene)
    assert isinstance(out.data, da.Array)
    assert out.dims == ("time", "band", "y", "x") and out.dtype == np.float32
    assert out.data.chunks[1] == (out.sizes["band"],)  # band in one chunk
    assert "NDVI" in out["band"].values and "scl" not in out["band"].values
    assert np.isnan(out["sun_zenith"].values).all() and out.attrs["sensor"] == "sentinel2"
    assert compute_indices(scene.rio.write_crs("EPSG:32650"), ["NDVI"]).rio.crs == "EPSG:32650"
    eager = compute_indices(make_scene(data, bands))
    np.testing.assert_allclose(out.values, eager.values, rtol=1e-6, equal_nan=True)
    nir, red = data[:, 3], data[:, 2]
    np.testing.assert_allclose(out.sel(band="NDVI").values, (nir - red) / (nir + red), rtol=1e-6)
    # results concatenate with reflectance bands
    assert xr.concat([scene, out], dim="band").sizes["band"] == 5 + out.sizes["band"]


def test_division_by_zero_gives_nan_and_nan_propagates():
    data = np.zeros((1, 2, 2, 2), np.float32)
    data[0, 1, 0, 0] = 0.3  # nir > 0, red 0 -> NDVI 1
    data[0, 0, 1, 1] = np.nan
    out = compute_indices(make_scene(data, ["red", "nir"]), ["NDVI"]).values[0, 0]
    assert out[0, 0] == pytest.approx(1.0)
    assert np.isnan(out[0, 1]) and np.isnan(out[1, 0]) and np.isnan(out[1, 1])
    assert not np.isinf(out).any()


# --- safe evaluator ---------------------------------------------------------------------------

@pytest.mark.parametrize("formula", [
    "__import__('os').system('echo pwned')",
    "nir.__class__",
    "red.real",
    "abs(nir)",
    "nir[0]",
    "nir if red else blue",
    "lambda: 1",
    "'text'",
    "nir > red",
    "nir // red",
    "nir % red",
    "True",
    "[nir, red]",
    "not nir",
    "__builtins__",
    "nir; red",
    "",
])
def test_evaluator_refuses_anything_but_arithmetic(formula):
    with pytest.raises(FormulaError):
        evaluate(formula, {"nir": 1.0, "red": 2.0, "blue": 3.0, "__builtins__": 1})


def test_evaluator_resists_resource_abuse():
    with pytest.raises(FormulaError, match="nested"):
        parse("1+" * 999 + "1")
    with pytest.raises(FormulaError):
        parse("nir + " * 500 + "nir")  # longer than 2000 characters
    assert np.isnan(evaluate("9 ** 9 ** 9", {}))  # float overflow -> NaN, not a bignum
    assert np.isnan(evaluate("red ** -1", {"red": 0.0}))


def test_evaluator_error_is_a_config_error_and_names_unknown():
    with pytest.raises(ConfigError, match="swir16"):
        evaluate("nir - swir16", {"nir": 1.0})


def test_evaluator_on_numpy_dask_and_xarray():
    rng = np.random.default_rng(7)
    nir = rng.uniform(0, 0.5, (6, 6)).astype(np.float32)
    red = rng.uniform(0, 0.5, (6, 6)).astype(np.float32)
    red[0, 0] = nir[0, 0] = 0.0
    formula = "-(1.0 + L) * (nir - red) / (nir + red + L * 0) ** 2"
    with np.errstate(invalid="ignore"):
        expected = -(1.5) * (nir - red) / (nir + red) ** 2
    expected[0, 0] = np.nan
    env = {"L": 0.5}
    as_np = evaluate(formula, {**env, "nir": nir, "red": red})
    as_da = evaluate(formula, {**env, "nir": da.from_array(nir, chunks=3),
                               "red": da.from_array(red, chunks=3)})
    as_xr = evaluate(formula, {**env, "nir": xr.DataArray(nir, dims=("y", "x")),
                               "red": xr.DataArray(red, dims=("y", "x"))})
    assert isinstance(as_da, da.Array) and isinstance(as_xr, xr.DataArray)
    for got in (as_np, as_da.compute(), as_xr.values):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, equal_nan=True)
    assert evaluate("1 / 0", {}) != evaluate("1 / 0", {})  # NaN, not an exception or inf
    assert names_in("G * (nir - red) / (nir + L)") == {"G", "nir", "red", "L"}
    assert parse("(nir)") is parse("(nir)")  # cached


def test_catalogue_file_changes_are_seen(tmp_path):
    path = tmp_path / "cat.yaml"
    entry = "indices:\n  X:\n    formula: {f}\n    bands: [nir, red]\n    reference: r\n" \
            "    description: d\n"
    path.write_text(entry.format(f="nir - red"))
    assert load_catalogue(path)["X"].evaluate({"nir": 3.0, "red": 1.0}) == 2.0
    path.write_text(entry.format(f="nir + red + 0"))
    assert load_catalogue(path)["X"].evaluate({"nir": 3.0, "red": 1.0}) == 4.0
    with pytest.raises(BandError):
        load_catalogue(path)["X"].evaluate({"nir": 3.0})
    with pytest.raises(ConfigError, match="not found"):
        load_catalogue(tmp_path / "missing.yaml")


def test_bad_catalogue_is_refused(tmp_path):
    bad = tmp_path / "cat.yaml"
    bad.write_text("indices:\n  X:\n    formula: nir - foo\n    bands: [nir]\n"
                   "    reference: r\n    description: d\n")
    with pytest.raises(ConfigError, match="undeclared"):
        load_catalogue(bad)
    bad.write_text("indices:\n  X:\n    formula: abs(nir)\n    bands: [nir]\n"
                   "    reference: r\n    description: d\n")
    with pytest.raises(ConfigError, match="Call"):
        load_catalogue(bad)
    bad.write_text("indices:\n  X:\n    formula: nir\n    bands: [NIR]\n"
                   "    reference: r\n    description: d\n")
    with pytest.raises(ConfigError, match="canonical"):
        load_catalogue(bad)
