"""`python run.py inspect`: one JSON object describing what poppyscan reads from the images."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.bands import CANONICAL_BANDS
from pipeline.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "bigearthnet"
PATCH = DATA / "S2A_MSIL2A_20170613T101031_87_48"
KEYS = {"sensor", "crs", "resolution", "shape", "dates", "bands", "clear_fraction",
        "mean_reflectance"}


def inspect_cli(*args: str, capsys) -> tuple[int, str, str]:
    """run.py main in this process (no interpreter start-up); the root logger is restored."""
    import run as cli
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli.main(["inspect", *args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


def inspect_json(*args: str, capsys) -> dict:
    code, out, err = inspect_cli(*args, capsys=capsys)
    assert code == 0, err
    doc = json.loads(out)                       # the whole of stdout is ONE JSON object
    # resolution_note: only where the metres are approximate (a geographic CRS)
    assert isinstance(doc, dict) and set(doc) - {"resolution_note"} == KEYS
    n = doc["shape"][0]
    assert len(doc["dates"]) == len(doc["clear_fraction"]) == len(doc["mean_reflectance"]) == n
    assert doc["shape"][1] == len(doc["bands"])
    for mean in doc["mean_reflectance"]:
        assert set(mean) <= set(CANONICAL_BANDS)
    return doc


def _band(folder: Path, band: str) -> np.ndarray:
    with rasterio.open(folder / f"{folder.name}_{band}.tif") as src:
        return src.read(1).astype("float64") / 10000


def test_bigearthnet_patch_folder(capsys) -> None:
    doc = inspect_json("--images", str(PATCH), capsys=capsys)
    assert doc["sensor"] == "sentinel2"
    assert doc["crs"] == "EPSG:32633"
    assert doc["resolution"] == 10.0
    assert doc["shape"] == [1, 12, 120, 120]
    assert doc["dates"] == ["2017-06-13"]
    assert doc["bands"] == list(CANONICAL_BANDS)
    assert doc["clear_fraction"] == [1.0]          # a clear June patch, no SCL
    [mean] = doc["mean_reflectance"]
    for band, name in (("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir")):
        assert mean[name] == pytest.approx(_band(PATCH, band).mean(), abs=1e-5)
    # a 20 m band replicated onto the 10 m grid keeps its mean
    assert mean["swir16"] == pytest.approx(_band(PATCH, "B11").mean(), abs=1e-5)


def test_parent_folder_of_patches_is_one_clear_error(capsys) -> None:
    """The six patches are six places on six grids: one line asking for one patch folder."""
    code, out, err = inspect_cli("--images", str(DATA), capsys=capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("poppyscan: error:")
    assert "different places" in lines[0] and "one product or patch folder" in lines[0]
    assert str(DATA) in lines[0]


def test_safe_zip(tmp_path: Path, capsys) -> None:
    """A SAFE (baseline 05.10, BOA offset -1000, SCL cloud band) zipped, read in place."""
    from test_sentinel2 import build_safe, zip_safe
    z = zip_safe(build_safe(tmp_path), tmp_path / "S2A_MSIL2A_20170613.zip")
    doc = inspect_json("--images", str(z), capsys=capsys)
    assert doc["crs"] == "EPSG:32633" and doc["dates"] == ["2017-06-13"]
    assert doc["bands"] == list(CANONICAL_BANDS) + ["scl"]
    # SCL (20 m): rows 0-9 cloud (rows 0-19 at 10 m), one no-data pixel (2 x 2 at 10 m)
    clear = np.ones((120, 120), bool)
    clear[:20] = False
    clear[-2:, -2:] = False
    assert doc["clear_fraction"] == [pytest.approx(clear.mean(), abs=1e-4)]
    [mean] = doc["mean_reflectance"]
    # the offset is applied: the same reflectance as the offset-free BigEarthNet files
    for band, name in (("B02", "blue"), ("B04", "red"), ("B08", "nir")):
        assert mean[name] == pytest.approx(_band(PATCH, band)[clear].mean(), abs=1e-5)


def test_simulator_output(tmp_path: Path, capsys) -> None:
    res = simulate(tmp_path / "sim", size=64, seed=2)
    doc = inspect_json("--images", *map(str, res.images), capsys=capsys)
    assert doc["dates"] == res.dates
    assert doc["shape"] == [len(res.dates), 13, 64, 64]
    assert doc["crs"].startswith("EPSG:") and doc["resolution"] == 10.0
    for date, frac, mean, path in zip(res.dates, doc["clear_fraction"],
                                      doc["mean_reflectance"], sorted(res.images)):
        assert date.replace("-", "") in path.name
        with rasterio.open(path) as src:
            scl = src.read(list(src.descriptions).index("SCL") + 1)
        # SCL decides; only small bright (8/9/11) patches can be rescued as flowers
        scl_clear = np.isin(scl, (2, 4, 5, 6, 7)).mean()
        bright = np.isin(scl, (8, 9, 11)).mean()
        assert scl_clear - 1e-4 <= frac <= scl_clear + bright + 1e-4
        if frac > 0:
            assert 0.0 < mean["red"] < mean["nir"] < 0.7
        else:
            assert all(v is None for v in mean.values())      # no clear pixel: null, never 0


def _p4m_pair(tmp_path: Path) -> tuple[Path, Path]:
    from test_drone import _refl, _write
    refl = _refl(5, seed=4)
    flt = _write(tmp_path / "terra_20250420.tif", np.nan_to_num(refl, nan=-10000),
                 nodata=-10000, descriptions=["Blue", "Green", "Red", "RedEdge", "NIR"])
    dn = np.where(np.isnan(refl), 0, np.round(refl * 32768)).astype("uint16")
    ms = _write(tmp_path / "metashape_20250420.tif", dn,
                tags={"TIFFTAG_SOFTWARE": "Agisoft Metashape 2.1.0"})
    return flt, ms


def test_drone_float_and_metashape_uint16_agree(tmp_path: Path, capsys) -> None:
    flt, ms = _p4m_pair(tmp_path)
    a = inspect_json("--images", str(flt), "--sensor", "p4m", capsys=capsys)
    b = inspect_json("--images", str(ms), "--sensor", "p4m", capsys=capsys)
    assert a["sensor"] == b["sensor"] == "p4m"
    assert a["dates"] == b["dates"] == ["2025-04-20"]
    assert a["resolution"] == b["resolution"] == 0.05
    from pipeline.sensors import load_sensor
    assert a["bands"] == b["bands"] == list(load_sensor("p4m").band_order)
    assert a["clear_fraction"] == b["clear_fraction"] == [1.0]   # the NaN corner is no data
    for k, v in a["mean_reflectance"][0].items():
        assert b["mean_reflectance"][0][k] == pytest.approx(v, abs=2e-5)


def test_metashape_uint16_without_sensor_is_a_clear_error(tmp_path: Path, capsys) -> None:
    _, ms = _p4m_pair(tmp_path)
    code, out, err = inspect_cli("--images", str(ms), capsys=capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--sensor" in err


def test_uint16_drone_files_the_metashape_rule_does_not_fit(tmp_path: Path, capsys) -> None:
    """A 16-bit RGB orthomosaic without band names reads as the same RGB in 8 bits (it was
    refused, and read as Metashape's 32768 = 1.0 when named); a multispectral uint16 file whose
    values cannot be Metashape's is exit 2 with one line saying what to set."""
    from test_drone import _refl, _rgb8, _write
    rgb8 = _rgb8()
    u8 = _write(tmp_path / "ortho8_2025-04-22.tif", rgb8)
    u16 = _write(tmp_path / "ortho16_2025-04-22.tif", rgb8.astype("uint16") * 257)
    a = inspect_json("--images", str(u8), capsys=capsys)
    b = inspect_json("--images", str(u16), capsys=capsys)
    assert a["sensor"] == b["sensor"] == "rgb" and a["bands"] == b["bands"]
    assert a["clear_fraction"] == b["clear_fraction"] == [1.0]
    for k, v in a["mean_reflectance"][0].items():
        assert b["mean_reflectance"][0][k] == pytest.approx(v, abs=1e-6)
    dn = np.where(np.isnan(r := _refl(5)), 0, np.round(r * 65535 / 0.6)).astype("uint16")
    raw = _write(tmp_path / "raw_20250420.tif", dn,
                 descriptions=["blue", "green", "red", "rededge2", "nir"])
    code, out, err = inspect_cli("--images", str(raw), capsys=capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "raw_20250420.tif" in lines[0] and "scaling" in lines[0], err


@pytest.mark.parametrize("content", [b"II*\x00not really a tiff", b"", b"GIF89a"])
def test_unreadable_input_exit_2_one_line_naming_the_file(tmp_path: Path, capsys,
                                                          content: bytes) -> None:
    bad = tmp_path / "S2_20240420.tif"
    bad.write_bytes(content)
    code, out, err = inspect_cli("--images", str(bad), capsys=capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "S2_20240420.tif" in lines[0], err


def test_missing_path_and_empty_folder(tmp_path: Path, capsys) -> None:
    code, _, err = inspect_cli("--images", str(tmp_path / "nope.tif"), capsys=capsys)
    assert code == 2 and "nope.tif" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = inspect_cli("--images", str(tmp_path / "empty"), capsys=capsys)
    assert code == 2 and "empty" in err and len(err.strip().splitlines()) == 1


def test_aoi_limits_shape_fraction_and_means(tmp_path: Path, capsys) -> None:
    from shapely.geometry import box, mapping
    from test_ingest import CRS, TF, _lonlat, ramp, write_dn
    refl = ramp()                                              # 32 x 32
    full = write_dn(tmp_path / "S2_20240410.tif", refl)
    refl[:, 20:28, 4:6] = np.nan                               # no data inside the AOI
    img = write_dn(tmp_path / "S2_20240420.tif", refl, date="2024-04-20")
    x0, y1 = TF * (0, 32)
    x1, y0 = TF * (16, 0)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {}, "geometry": mapping(_lonlat(box(x0, y1, x1, y0)))}]}))
    doc = inspect_json("--images", str(img), str(full), "--aoi", str(aoi), capsys=capsys)
    assert doc["crs"] == CRS and doc["shape"] == [2, 4, 32, 16]
    assert doc["dates"] == ["2024-04-10", "2024-04-20"]
    assert doc["bands"] == ["blue", "green", "red", "nir"]
    # no SWIR: no cloud test; the hole counts against its date (the other date saw there)
    assert doc["clear_fraction"] == [1.0, pytest.approx(1 - 16 / (32 * 16), abs=1e-4)]
    left = refl[:, :, :16]
    for k, name in enumerate(doc["bands"]):
        assert doc["mean_reflectance"][1][name] == pytest.approx(np.nanmean(left[k]), abs=2e-5)


@pytest.mark.parametrize("sensor,name", [("drone", "p4m"), ("drone-rgb", "rgb")])
def test_simulated_drone_flight(tmp_path: Path, capsys, sensor: str, name: str) -> None:
    from pipeline.bands import order_bands
    from pipeline.sensors import load_sensor
    res = simulate(tmp_path / "sim", sensor=sensor, size=64, seed=1)
    doc = inspect_json("--images", *map(str, res.images), capsys=capsys)
    assert doc["sensor"] == name and doc["dates"] == res.dates and len(res.dates) == 1
    assert doc["bands"] == order_bands(load_sensor(name).band_order)   # canonical order
    assert doc["shape"] == [1, len(doc["bands"]), 64, 64]
    assert 0 < doc["resolution"] < 1                      # centimetre pixels
    assert 0.5 < doc["clear_fraction"][0] <= 1.0
    assert all(0 < v < 1 for v in doc["mean_reflectance"][0].values())


def test_unsupported_file_type_names_the_file(tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("field notes")
    code, out, err = inspect_cli("--images", str(notes), capsys=capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "notes.txt: unsupported input" in err


def test_resolution_is_metres_in_a_geographic_crs(tmp_path: Path, capsys) -> None:
    """EPSG:4326 pixels of 1e-4 degree are ~9.6 m wide at 30 N: inspect reports metres (the
    contract's unit), measured at the scene centre and noted as approximate, not 0.0001."""
    from affine import Affine
    from test_ingest import ramp, write_dn
    img = write_dn(tmp_path / "S2_20240410.tif", ramp(),
                   tf=Affine(1e-4, 0, 120.0, 0, -1e-4, 30.2), crs="EPSG:4326")
    doc = inspect_json("--images", str(img), capsys=capsys)
    lat = 30.2 - 16e-4                                           # the centre of 32 rows
    expected = np.radians(1e-4) * 6378137.0 * np.cos(np.radians(lat))
    assert doc["crs"] == "EPSG:4326"
    assert doc["resolution"] == pytest.approx(expected, rel=0.005)
    assert "approximate" in doc["resolution_note"] and "scene centre" in doc["resolution_note"]
    (tmp_path / "utm").mkdir()
    utm = write_dn(tmp_path / "utm" / "S2_20240410.tif", ramp())    # 10 m, EPSG:32650
    doc = inspect_json("--images", str(utm), capsys=capsys)
    assert doc["resolution"] == 10.0 and "resolution_note" not in doc


def _undescribed_s2(path: Path, count: int) -> Path:
    """A Sentinel-2 stack of the input contract (B01..B12, then SCL when ``count`` is 13)
    whose band descriptions were lost."""
    from test_ingest import CRS, TF
    rng = np.random.default_rng(0)
    data = rng.integers(500, 3000, (count, 16, 16)).astype("uint16")
    scales = [1e-4] * 12
    if count == 13:
        data[12] = 4                                             # SCL: vegetation
        scales.append(1.0)
    with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=count,
                       dtype="uint16", crs=CRS, transform=TF, nodata=0) as dst:
        dst.write(data)
        dst.scales = scales
        dst.update_tags(ACQUISITION_DATE="2024-04-10")
    return path


@pytest.mark.parametrize("count", [12, 13])
def test_sentinel2_stack_without_descriptions_reads_with_sensor(tmp_path: Path, capsys,
                                                                count: int) -> None:
    """--sensor sentinel2 names 12 undescribed bands by the sensor's order, and 13 as that
    order plus SCL (the contract's Sentinel-2 stack, as fetch and simulate write it)."""
    f = _undescribed_s2(tmp_path / "S2_20240410.tif", count)
    doc = inspect_json("--images", str(f), "--sensor", "sentinel2", capsys=capsys)
    assert doc["bands"] == list(CANONICAL_BANDS) + (["scl"] if count == 13 else [])
    code, _, err = inspect_cli("--images", str(f), capsys=capsys)   # no --sensor: asked for
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "name the bands in the file" in err and "--sensor (" in err and "sentinel2" in err


def test_train_and_detect_do_not_ask_for_a_sensor_option_they_lack(tmp_path: Path,
                                                                   capsys) -> None:
    import run as cli
    f = _undescribed_s2(tmp_path / "S2_20240410.tif", 13)
    labels = tmp_path / "labels.geojson"
    labels.write_text('{"type": "FeatureCollection", "features": []}')
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        for argv in (["train", "--images", str(f), "--labels", str(labels), "--model",
                      str(tmp_path / "m")],
                     ["detect", "--images", str(f), "--model", str(tmp_path / "m"), "--out",
                      str(tmp_path / "o")]):
            assert cli.main(["-q", *argv]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "--sensor" not in err, err
            assert "S2_20240410.tif" in err and "name the bands in the file" in err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert not (tmp_path / "m").exists() and not (tmp_path / "o").exists()


def test_products_of_one_input_on_other_ground_the_same_day_are_all_read(tmp_path, capsys):
    """One folder or product holding several of one day on other ground (two tiles' per-band
    files, two flights' Pix4D exports, a SAFE's granules) was read as its first: the rest
    dropped without a word (a duplicate check keyed on the source and the day only)."""
    from affine import Affine
    patch = Path(__file__).parent / "data" / "bigearthnet" / "S2A_MSIL2A_20170613T101031_87_48"
    tiles = tmp_path / "S2_20170613"
    tiles.mkdir()
    for f in sorted(patch.glob("*_B*.tif")):
        with rasterio.open(f) as src:
            data, profile = src.read(), src.profile
        for tile, dx in (("T33UUP", 0), ("T33UUQ", 1200)):   # side by side, 120 px each
            shifted = dict(profile, transform=Affine.translation(dx, 0) * profile["transform"])
            band = f.name.rsplit("_", 1)[1]
            with rasterio.open(tiles / f"{tile}_20170613T101031_{band}", "w", **shifted) as dst:
                dst.write(data)
    assert inspect_json("--images", str(tiles), capsys=capsys)["shape"] == [1, 12, 120, 240]
    flights = tmp_path / "20240420"
    flights.mkdir()
    rng = np.random.default_rng(0)
    for stem, x0 in (("plotA", 600000), ("plotB", 600010)):    # 10 m apart, 200 px of 5 cm
        for name, low in (("blue", .03), ("green", .08), ("red", .05), ("red edge", .25),
                          ("nir", .45)):
            with rasterio.open(flights / f"{stem}_transparent_reflectance_{name}.tif", "w",
                               driver="GTiff", width=200, height=200, count=1,
                               dtype="float32", crs="EPSG:32650",
                               transform=Affine(0.05, 0, x0, 0, -0.05, 3300000)) as dst:
                dst.write(rng.uniform(low, low + 0.05, (1, 200, 200)).astype("float32"))
    assert inspect_json("--images", str(flights), capsys=capsys)["shape"] == [1, 5, 200, 400]
