"""Drone orthomosaics and sensor files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import spyndex
from affine import Affine
from rasterio.enums import ColorInterp

from pipeline.bands import CANONICAL_BANDS
from pipeline.errors import ConfigError, InputError, SensorNeeded
from pipeline.readers import drone
from pipeline.sensors import SensorSpec, known_sensors, load_sensor

#: canonical name -> spyndex.bands key
SPYNDEX_KEY = {"coastal": "A", "blue": "B", "green": "G", "red": "R", "rededge1": "RE1",
               "rededge2": "RE2", "rededge3": "RE3", "nir": "N", "nir08": "N2", "wv": "WV",
               "swir16": "S1", "swir22": "S2"}
SHIPPED = ["mavic3m", "p4m", "rededge-mx", "rededge-mx-dual", "rgb", "sentinel2"]
H = W = 40
TF = Affine(0.05, 0, 500000.0, 0, -0.05, 3300000.0)   # 5 cm pixels, UTM 50N
CRS = "EPSG:32650"


def _refl(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.02, 0.6, size=(n, H, W)).astype("float32")
    r[:, :3, :3] = np.nan                                   # a no-data corner
    return r


def _write(path: Path, data: np.ndarray, *, nodata: float | None = None,
           descriptions: list[str] | None = None, tags: dict | None = None,
           alpha: bool = False) -> Path:
    count = data.shape[0]
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=count,
                       dtype=data.dtype.name, crs=CRS, transform=TF, nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
        if alpha:
            ci = list(dst.colorinterp)
            ci[-1] = ColorInterp.alpha
            dst.colorinterp = ci
    return path


# --- sensor files ------------------------------------------------------------------------------
def test_shipped_sensors_load() -> None:
    assert known_sensors() == SHIPPED
    for name in SHIPPED:
        spec = load_sensor(name)
        assert isinstance(spec, SensorSpec) and spec.name == name
        assert spec.kind == ("satellite" if name == "sentinel2" else "drone")
        canon = [b.canonical for b in spec.bands]
        assert len(set(canon)) == len(canon) and set(canon) <= set(CANONICAL_BANDS)
        for b in spec.bands:
            _name, _canonical, wl, res, *_ = b          # (name, canonical, wavelength, res)
            assert wl > 0 and res > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_canonical_band_matches_spyndex_range(name: str) -> None:
    """Each band's centre lies in its canonical band's range in spyndex.bands; if it lies in
    no range, its canonical band is the range nearest to it, except a drone red edge at
    717-730 nm, which the input contract (issue #2) names rededge2."""
    ranges = {c: (spyndex.bands[k].min_wavelength, spyndex.bands[k].max_wavelength)
              for c, k in SPYNDEX_KEY.items()}

    def gap(wl: float, c: str) -> float:
        lo, hi = ranges[c]
        return max(lo - wl, 0.0, wl - hi)

    for b in load_sensor(name).bands:
        inside = [c for c in ranges if gap(b.wavelength_nm, c) == 0]
        if inside:
            assert b.canonical in inside, (name, b)
        elif 717 <= b.wavelength_nm <= 730:
            assert b.canonical == "rededge2", (name, b)
        else:
            assert b.canonical == min(ranges, key=lambda c: gap(b.wavelength_nm, c)), (name, b)
            assert gap(b.wavelength_nm, b.canonical) <= 5, (name, b)


def test_drone_red_edges_and_dual_choices() -> None:
    assert load_sensor("p4m").canonical["rededge"] == "rededge2"          # 730 nm
    assert load_sensor("mavic3m").canonical == {"green": "green", "red": "red",
                                                "rededge": "rededge2", "nir": "nir"}
    assert load_sensor("rededge-mx").canonical["rededge"] == "rededge2"   # 717 nm: contract
    dual = load_sensor("rededge-mx-dual")
    assert dual.wavelengths() == {"coastal": 444, "blue": 475, "green": 560, "red": 650,
                                  "rededge1": 705, "rededge2": 740, "nir": 842}
    assert {b.wavelength_nm for b in dual.dropped} == {531, 668, 717}
    assert len(dual.stack_order) == 10


def test_unknown_sensor_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="p4m") as exc:
        load_sensor("phantom9")
    assert "mavic3m" in str(exc.value)
    bad = tmp_path / "cam.yaml"
    bad.write_text("name: cam\nkind: drone\nresolution_m: 0.1\nbands:\n"
                   "  - {name: x, canonical: infrared, wavelength_nm: 800}\n")
    with pytest.raises(ConfigError, match="infrared"):
        load_sensor(bad)
    bad.write_text("name: cam\nkind: drone\nresolution_m: 0.1\ncolour: red\nbands: []\n")
    with pytest.raises(ConfigError, match="colour"):
        load_sensor(bad)
    bad.write_text("name: cam\nkind: drone\nresolution_m: 0.1\nclassification_band: B04\n"
                   "bands:\n  - {name: x, canonical: nir, wavelength_nm: 800}\n")
    with pytest.raises(ConfigError, match="classification_band"):
        load_sensor(bad)


def test_custom_sensor_file(tmp_path: Path) -> None:
    cam = tmp_path / "mycam.yaml"
    cam.write_text("name: mycam\nkind: drone\nresolution_m: 0.1\nscaling: dn10000\nbands:\n"
                   "  - {name: G, canonical: green, wavelength_nm: 550}\n"
                   "  - {name: NIR, canonical: nir, wavelength_nm: 850}\n")
    spec = load_sensor(cam)
    assert spec.band_order == ("green", "nir") and spec.scaling == "dn10000"
    refl = _refl(2)
    dn = np.where(np.isnan(refl), 0, np.round(refl * 10000)).astype("uint16")
    f = _write(tmp_path / "plot_20250420.tif", dn)
    [da] = drone.read(f, spec, chunks=16)
    np.testing.assert_allclose(da.values, refl, atol=1e-4)


# --- orthomosaics ------------------------------------------------------------------------------
def _terra_flight(folder: Path) -> np.ndarray:
    """A DJI Terra P4M flight: result_<band>.tif float32 files, nodata -10000; its
    reflectance."""
    folder.mkdir()
    refl = _refl(5)
    for i, name in enumerate(["Blue", "Green", "Red", "RedEdge", "NIR"]):
        band = np.where(np.isnan(refl[i]), -10000, refl[i]).astype("float32")[None]
        _write(folder / f"result_{name}.tif", band, nodata=-10000)
    return refl


def test_p4m_dji_terra_per_band_float(tmp_path: Path) -> None:
    folder = tmp_path / "flight_2025-04-20"
    refl = _terra_flight(folder)
    assert drone.can_read(folder)
    [da] = drone.read(folder, None, chunks=16)
    assert da.attrs["sensor"] == "p4m"
    assert da.attrs["time"] == np.datetime64("2025-04-20", "ns")
    assert da["band"].values.tolist() == ["blue", "green", "red", "rededge2", "nir"]
    assert da.dtype == np.float32 and da.chunks is not None
    assert da.rio.crs.to_epsg() == 32650 and da.rio.transform() == TF
    np.testing.assert_allclose(da.values, refl, rtol=1e-6)       # NaN where no data
    assert np.isnan(da.values[:, :3, :3]).all()
    # one band file given alone: its group is read
    [one] = drone.read(folder / "result_NIR.tif", None, chunks=16)
    assert one["band"].values.tolist() == da["band"].values.tolist()
    # the same files under another name: the band names and the 5 cm pixels tell the camera
    # (RedEdge-MX also calls a band 'rededge', at 8 cm)
    other = tmp_path / "survey_2025-04-20"
    other.mkdir()
    for f in folder.iterdir():
        (other / f.name.replace("result_", "plot7_")).write_bytes(f.read_bytes())
    [named] = drone.read(other, None, chunks=16)
    assert named.attrs["sensor"] == "p4m"
    np.testing.assert_allclose(named.values, da.values, rtol=1e-6)


def test_a_flights_band_files_given_one_by_one_are_one_product(tmp_path: Path) -> None:
    """--images flight/result_*.tif: each file read the whole flight, which was then
    'mosaicked' with itself five times (five times the reading, and a log line saying so)."""
    from pipeline.ingest import open_scene, read_products
    folder = tmp_path / "flight_2025-04-20"
    _terra_flight(folder)
    files = sorted(folder.glob("result_*.tif"))
    assert len(read_products(files, chunks=16)) == 1
    s = open_scene(files, chunks=16)
    assert s.sizes["time"] == 1 and s["source"].values.tolist() == [str(folder)]


def test_metashape_uint16_equals_float(tmp_path: Path) -> None:
    refl = _refl(5, seed=1)
    flt = _write(tmp_path / "terra_20250420.tif", np.nan_to_num(refl, nan=-10000),
                 nodata=-10000, descriptions=["Blue", "Green", "Red", "RedEdge", "NIR"])
    dn = np.where(np.isnan(refl), 0, np.round(refl * 32768)).astype("uint16")
    ms = _write(tmp_path / "metashape_20250420.tif", dn,
                tags={"TIFFTAG_SOFTWARE": "Agisoft Metashape 2.1.0"})
    spec = load_sensor("p4m")
    [a] = drone.read(flt, spec, chunks=16)
    [b] = drone.read(ms, spec, chunks=16)   # no descriptions: the sensor's band order
    assert a["band"].values.tolist() == b["band"].values.tolist()
    np.testing.assert_allclose(b.values, a.values, atol=0.5 / 32768)
    assert np.isnan(b.values[:, :3, :3]).all()


def test_mavic3m_pix4d_per_band_with_alpha(tmp_path: Path) -> None:
    refl = _refl(4, seed=2)
    for i, name in enumerate(["green", "red", "red edge", "nir"]):
        value = np.nan_to_num(refl[i], nan=0.0)
        alpha = np.where(np.isnan(refl[i]), 0, 255).astype("float32")
        _write(tmp_path / f"orchard_20250421_transparent_reflectance_{name}.tif",
               np.stack([value, alpha]), alpha=True)
    assert drone.can_read(tmp_path)
    [da] = drone.read(tmp_path, None, chunks=16)
    assert da.attrs["sensor"] == "mavic3m"
    assert da["band"].values.tolist() == ["green", "red", "rededge2", "nir"]
    np.testing.assert_allclose(da.values, refl, rtol=1e-6)


@pytest.mark.parametrize("edge,camera", [("rededge2", "p4m"), ("rededge1", None)])
def test_per_band_files_named_by_canonical_bands(tmp_path: Path, edge: str, camera: str) -> None:
    """Per-band files named as the input contract names bands (a drone red edge at 717-730 nm,
    the P4M's and the RedEdge-MX's, is 'rededge2'): one flight of a camera (at 5 cm the P4M),
    not 'no images'; 'rededge1' with these four is no shipped camera's set."""
    refl = _refl(5, seed=4)
    for i, name in enumerate(["blue", "green", "red", edge, "nir"]):
        _write(tmp_path / f"flight_20250420_{name}.tif", refl[i:i + 1])
    assert drone.can_read(tmp_path)
    if camera is None:
        with pytest.raises(SensorNeeded, match=r"bands \(blue, green, nir, red, rededge1\) "
                                               r"are not those of a drone camera"):
            drone.read(tmp_path, None, chunks=16)
        return
    [da] = drone.read(tmp_path, None, chunks=16)
    assert da.attrs["sensor"] == camera
    assert sorted(da["band"].values.tolist()) == sorted(["blue", "green", "red", edge, "nir"])
    np.testing.assert_allclose(da.sel(band=edge).values, refl[3], rtol=1e-6)


def test_a_gdal_mask_band_is_no_data_in_both_readers(tmp_path: Path) -> None:
    """No data given as a GDAL mask band (an internal TIFF mask, as gdalwarp writes with
    GDAL_TIFF_INTERNAL_MASK), the collar 0.0 in every band: NaN, not reflectance 0, whether
    the file has an ACQUISITION_DATE tag (the contract reader), the date in its name (the
    drone reader) or is one of per-band files; across chunk borders."""
    from pipeline.ingest import open_scene
    refl = np.nan_to_num(_refl(5, seed=8), nan=0.3)
    yy, xx = np.mgrid[0:H, 0:W]
    collar = (yy + xx) < 30                              # crosses the 16 px chunks
    refl[:, collar] = 0.0
    names = ["blue", "green", "red", "rededge2", "nir"]

    def write(path: Path, data: np.ndarray, descriptions, tags=None) -> Path:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
                path, "w", driver="GTiff", width=W, height=H, count=len(data), dtype="float32",
                crs=CRS, transform=TF) as dst:
            dst.write(data)
            dst.write_mask(np.where(collar, 0, 255).astype("uint8"))
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
            if tags:
                dst.update_tags(**tags)
        return path

    (tmp_path / "bands").mkdir()
    for i, n in enumerate(names):
        write(tmp_path / "bands" / f"flight_20250420_{n}.tif", refl[i:i + 1], [n])
    for path in (write(tmp_path / "tagged.tif", refl, names, {"ACQUISITION_DATE": "2025-04-20"}),
                 write(tmp_path / "flight_20250420.tif", refl, names), tmp_path / "bands"):
        scene = open_scene([path], chunks=16)
        got = scene.isel(time=0).sel(band=names).values
        assert np.isnan(got[:, collar]).all(), path
        np.testing.assert_allclose(got[:, ~collar], refl[:, ~collar], rtol=1e-6)


def test_rgb_alpha_is_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(3, H, W), dtype="uint8")
    alpha = np.full((1, H, W), 255, dtype="uint8")
    alpha[0, -5:, :] = 0
    f = _write(tmp_path / "village_2025_04_22.tif", np.concatenate([rgb, alpha]), alpha=True)
    assert drone.can_read(f)
    [da] = drone.read(f, None, chunks=16)
    assert da.attrs["sensor"] == "rgb"
    assert da["band"].values.tolist() == ["blue", "green", "red"]
    assert da.attrs["time"] == np.datetime64("2025-04-22", "ns")
    np.testing.assert_allclose(da.sel(band="red").values[:-5], rgb[0, :-5] / 255.0, rtol=1e-6)
    assert np.isnan(da.values[:, -5:, :]).all()
    assert np.isfinite(da.values[:, :-5, :]).all()   # black pixels are colours, not no data


def test_rgb_without_alpha_black_collar(tmp_path: Path) -> None:
    rgb = np.full((3, H, W), 120, dtype="uint8")
    rgb[:, :4, :] = 0                 # collar
    rgb[0, 10, 10] = 0                # a pure green-blue pixel is a colour, not no data
    [da] = drone.read(_write(tmp_path / "v_20250422.tif", rgb), None, chunks=16)
    assert np.isnan(da.values[:, :4, :]).all()
    assert np.isfinite(da.values[:, 4:, :]).all() and da.sel(band="red").values[10, 10] == 0


def _rgb8(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(1, 255, size=(3, H, W), dtype="uint8")
    rgb[:, 5, 5] = 255                # white: a colour, not saturation to mask
    rgb[0, 6, 6] = 0                  # no red: a colour, not no data
    return rgb


@pytest.mark.parametrize("layout", ["named", "bgr-named", "unnamed", "photometric", "alpha",
                                    "rgba"])
def test_uint16_rgb_is_display_brightness_like_uint8(tmp_path: Path, layout: str) -> None:
    """A 16-bit RGB export (65535 = white) is display brightness / 65535, as uint8 is / 255:
    read as Metashape's 32768 = 1.0 it doubled in brightness and lost its bright pixels to
    the > 1.5 mask; without band names it could not be read at all."""
    rgb8 = _rgb8()
    rgb16 = rgb8.astype("uint16") * 257
    f = tmp_path / "ortho_2025-04-22.tif"
    if layout == "named":
        _write(f, rgb16, descriptions=["Red", "Green", "Blue"])
    elif layout == "bgr-named":
        _write(f, rgb16[::-1].copy(), descriptions=["blue", "green", "red"])
    elif layout == "unnamed":
        _write(f, rgb16)
    else:
        alpha = np.full((1, H, W), 65535, dtype="uint16")
        alpha[0, -5:, :] = 0
        if layout == "alpha":    # named bands and a band described as alpha
            _write(f, np.concatenate([rgb16, alpha]),
                   descriptions=["red", "green", "blue", "alpha"])
        else:                    # photometric RGB: unnamed bands, alpha as an extra sample
            count = 3 if layout == "photometric" else 4
            with rasterio.open(f, "w", driver="GTiff", width=W, height=H, count=count,
                               dtype="uint16", crs=CRS, transform=TF, photometric="RGB",
                               **({"alpha": "YES"} if count == 4 else {})) as dst:
                dst.write(np.concatenate([rgb16, alpha])[:count])
    assert drone.can_read(f)
    [da] = drone.read(f, None, chunks=16)
    assert da.attrs["sensor"] == "rgb"
    masked = layout in ("alpha", "rgba")
    rows = slice(None, -5) if masked else slice(None)
    for k, band in enumerate(["red", "green", "blue"]):
        np.testing.assert_allclose(da.sel(band=band).values[rows], rgb8[k][rows] / 255.0,
                                   rtol=1e-6)
    if masked:
        assert np.isnan(da.values[:, -5:, :]).all()
    u8 = _write(tmp_path / "ortho8_2025-04-22.tif", rgb8)
    [da8] = drone.read(u8, None, chunks=16)
    np.testing.assert_allclose(da.values[:, rows], da8.values[:, rows], rtol=1e-6)


def test_four_unnamed_uint16_bands_are_not_taken_for_rgb(tmp_path: Path) -> None:
    """Four unnamed uint16 bands may be RGB + alpha or a Mavic 3M stack: not guessed; the
    hint names the RGB case too."""
    dn = np.full((4, H, W), 9000, dtype="uint16")
    with pytest.raises(SensorNeeded, match="red, green, blue") as exc:
        drone.read(_write(tmp_path / "ortho_2025-04-22.tif", dn), None)
    assert "rgb" in exc.value.sensors


def _ms_uint16(tmp_path: Path, factor: float, name: str, tags: dict | None = None,
               scales: bool = False) -> tuple[Path, np.ndarray]:
    refl = _refl(5, seed=8)
    dn = np.where(np.isnan(refl), 0, np.round(refl * factor)).astype("uint16")
    f = _write(tmp_path / name, dn, descriptions=["blue", "green", "red", "rededge2", "nir"],
               tags=tags)
    if scales:
        with rasterio.open(f, "r+") as dst:
            dst.scales = [1 / factor] * 5
    return f, refl


def test_uint16_multispectral_beyond_metashape_range_is_refused(tmp_path: Path) -> None:
    """uint16 reflectance without a GDAL scale or a Metashape software tag whose values
    exceed what 32768 = 1.0 allows (reflectance 1.5) is not Metashape's: one line saying what
    to set, instead of a reading the masks then throw away."""
    f, _ = _ms_uint16(tmp_path, 65535 / 0.6, "raw_20250420.tif")
    with pytest.raises(InputError) as exc:
        drone.read(f, None, chunks=16)
    msg = str(exc.value)
    assert "\n" not in msg and "raw_20250420.tif" in msg and "Metashape" in msg
    assert "scaling" in msg and "dn10000" in msg and "docs/inputs.md" in msg
    # a sensor file that says how the file is scaled reads it without a question
    import dataclasses
    [da] = drone.read(f, dataclasses.replace(load_sensor("p4m"), scaling="dn10000"), chunks=16)
    assert da.attrs["sensor"] == "p4m"


def test_the_metashape_range_check_samples_a_striped_file_across_its_width(tmp_path) -> None:
    """A striped GeoTIFF (GDAL's default) has blocks a row wide: windows at block corners all
    sat in the first columns, here the mosaic's no-data collar, and the check saw nothing."""
    from affine import Affine
    dn = np.full((5, 400, 600), 60000, "uint16")
    dn[:, :, :150] = 0                                         # the collar
    f = tmp_path / "striped_20250420.tif"
    with rasterio.open(f, "w", driver="GTiff", width=600, height=400, count=5, dtype="uint16",
                       crs="EPSG:32650", transform=Affine(0.05, 0, 500000, 0, -0.05, 3300000),
                       tiled=False) as dst:
        dst.write(dn)
        dst.descriptions = ("blue", "green", "red", "rededge2", "nir")
    with rasterio.open(f) as src:
        assert src.block_shapes[0][1] == 600                   # a strip spans the width
    with pytest.raises(InputError, match="Metashape"):
        drone.read(f, None, chunks=64)


def test_a_fourth_band_is_alpha_only_when_the_file_says_so(tmp_path) -> None:
    """A photometric-RGB uint16 file with a fourth band that is not marked alpha (an RGB +
    NIR stack) is not taken for RGB + alpha: its NIR would have become a mask."""
    from affine import Affine
    from rasterio.enums import ColorInterp

    from pipeline.readers.drone import _alpha_index, _rgb_layout
    layouts = {"nir": ColorInterp.undefined, "alpha": ColorInterp.alpha}
    got = {}
    for name, fourth in layouts.items():
        f = tmp_path / f"{name}.tif"
        with rasterio.open(f, "w", driver="GTiff", width=8, height=8, count=4, dtype="uint16",
                           crs="EPSG:32650", transform=Affine(0.05, 0, 5e5, 0, -0.05, 3.3e6),
                           photometric="RGB",
                           **({"alpha": "YES"} if fourth == ColorInterp.alpha else {})) as dst:
            dst.write(np.full((4, 8, 8), 1000, "uint16"))
            dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, fourth)
        with rasterio.open(f) as src:
            got[name] = _rgb_layout(src, _alpha_index(src))
    assert got == {"nir": (False, None), "alpha": (True, 4)}


def test_uint16_multispectral_without_metashape_tag_warns(tmp_path: Path, caplog) -> None:
    """Within Metashape's range the file is read as Metashape's, with a warning (not an info
    line) that says how it reads either way and how to change the scaling."""
    import logging
    f, refl = _ms_uint16(tmp_path, 10000, "x10000_20250420.tif")
    with caplog.at_level(logging.INFO, logger="pipeline.readers.drone"):
        [da] = drone.read(f, None, chunks=16)
    np.testing.assert_allclose(da.values, np.round(refl * 10000) / 32768, rtol=1e-6)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, caplog.text
    text = warned[0].getMessage()
    assert "x10000_20250420.tif" in text and "32768" in text and "dn10000" in text
    assert "docs/inputs.md" in text
    # Metashape's own files and files with a GDAL scale: as before, nothing to warn about
    caplog.clear()
    ms, _ = _ms_uint16(tmp_path, 32768, "ms_20250420.tif",
                       tags={"TIFFTAG_SOFTWARE": "Agisoft Metashape 2.1.0"})
    sc, _ = _ms_uint16(tmp_path, 10000, "scaled_20250420.tif", scales=True)
    with caplog.at_level(logging.INFO, logger="pipeline.readers.drone"):
        [a] = drone.read(ms, None, chunks=16)
        [b] = drone.read(sc, None, chunks=16)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.text
    np.testing.assert_allclose(a.values, refl, atol=0.5 / 32768)
    np.testing.assert_allclose(b.values, refl, atol=0.5 / 10000)


def test_dual_stacked_by_descriptions(tmp_path: Path) -> None:
    names = ["Blue", "Green", "Red", "NIR", "Red edge", "Blue-444", "Green-531", "Red-650",
             "Red edge-705", "Red edge-740"]
    refl = _refl(10, seed=4)
    f = _write(tmp_path / "dual_20250423.tif", np.nan_to_num(refl, nan=-32767),
               nodata=-32767, descriptions=names)
    [da] = drone.read(f, None, chunks=16)
    assert da.attrs["sensor"] == "rededge-mx-dual"
    assert da["band"].values.tolist() == ["coastal", "blue", "green", "red", "rededge1",
                                          "rededge2", "nir"]
    np.testing.assert_allclose(da.sel(band="red").values, refl[7], rtol=1e-6)      # 650 nm
    np.testing.assert_allclose(da.sel(band="rededge1").values, refl[8], rtol=1e-6)  # 705 nm
    np.testing.assert_allclose(da.sel(band="coastal").values, refl[5], rtol=1e-6)


def test_ambiguous_camera_needs_sensor(tmp_path: Path) -> None:
    f = _write(tmp_path / "field_20250420.tif", np.nan_to_num(_refl(5), nan=-10000),
               nodata=-10000)
    assert drone.can_read(f)
    # the reader says what every command can do (train and detect have no --sensor);
    # inspect adds its --sensor from the cameras listed
    with pytest.raises(SensorNeeded, match="name the bands in the file") as exc:
        drone.read(f, None)
    assert "--sensor" not in str(exc.value) and "p4m" in exc.value.sensors
    with pytest.raises(InputError, match="sentinel2"):
        drone.read(f, "sentinel2")
    [mx] = drone.read(f, "rededge-mx", chunks=16)   # band 5 is the red edge for the MX
    assert mx["band"].values.tolist() == ["blue", "green", "red", "rededge2", "nir"]
    refl = np.nan_to_num(_refl(5), nan=np.nan)
    np.testing.assert_allclose(mx.sel(band="nir").values, refl[3], rtol=1e-6)
    np.testing.assert_allclose(mx.sel(band="rededge2").values, refl[4], rtol=1e-6)


def test_no_date_and_contract_files(tmp_path: Path) -> None:
    f = _write(tmp_path / "field.tif", np.nan_to_num(_refl(5), nan=-10000), nodata=-10000)
    with pytest.raises(InputError, match="flight date"):
        drone.read(f, "p4m")
    contract = _write(tmp_path / "s2.tif", _refl(2), tags={"ACQUISITION_DATE": "2025-04-20"})
    assert not drone.can_read(contract)       # the multi-band contract's reader takes it
    with rasterio.open(tmp_path / "s2_10m.tif", "w", driver="GTiff", width=4, height=4,
                       count=1, dtype="float32", crs=CRS,
                       transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(np.zeros((1, 4, 4), "float32"))
    assert not drone.can_read(tmp_path / "s2_10m.tif")   # 10 m pixels: not a drone product


def test_contract_file_at_drone_pixels_is_the_camera_of_its_canonical_bands(
        tmp_path: Path) -> None:
    """A drone flight written to the input contract (canonical band names, DN with a GDAL
    scale and an offset of -0.1, no SENSOR tag) reads as P4M through either reader: with an
    ACQUISITION_DATE tag (multi-band reader) or with the date only in its name (drone reader)."""
    from pipeline.ingest import open_scene
    refl = _refl(5, seed=7)
    dn = np.where(np.isnan(refl), 0, np.round((refl + 0.1) / 1e-4)).astype("uint16")
    names = ["blue", "green", "red", "rededge2", "nir"]
    scenes = []
    for name, tags in (("tagged.tif", {"ACQUISITION_DATE": "2025-04-20"}),
                       ("flight_20250420.tif", None)):
        f = _write(tmp_path / name, dn, nodata=0, descriptions=names, tags=tags)
        with rasterio.open(f, "r+") as dst:
            dst.scales, dst.offsets = [1e-4] * 5, [-0.1] * 5
        scenes.append(open_scene([f], chunks=16))
    assert not drone.can_read(tmp_path / "tagged.tif") and drone.can_read(
        tmp_path / "flight_20250420.tif")
    for scene in scenes:
        assert scene.attrs["sensor"] == "p4m"
        assert scene["band"].values.tolist() == ["blue", "green", "red", "rededge2", "nir"]
        np.testing.assert_allclose(scene.isel(time=0).sel(band="rededge2").values, refl[3],
                                   atol=1e-4)
    # other bands at drone pixels: a drone, not Sentinel-2 (the label models are checked by)
    f = _write(tmp_path / "four.tif", _refl(4), descriptions=["blue", "green", "red", "nir"],
               tags={"ACQUISITION_DATE": "2025-04-20"})
    assert open_scene([f], chunks=16).attrs["sensor"] == "drone"


@pytest.mark.parametrize("pixel,camera,edge", [(0.05, "p4m", "rededge2"),
                                               (0.08, "rededge-mx", "rededge2")])
def test_a_flight_named_by_its_cameras_own_band_names_reads_as_that_camera(
        tmp_path: Path, pixel: float, camera: str, edge: str) -> None:
    """'Blue, Green, Red, RedEdge, NIR' (what the camera software writes) is a P4M flight at
    5 cm: P4M and RedEdge-MX both call a band 'rededge', the pixel size tells them apart.
    Through either reader (date in a tag or in the name), any case."""
    from pipeline.ingest import open_scene
    refl = _refl(5, seed=3)
    names = ["Blue", "Green", "Red", "RedEdge", "NIR"]
    tf = Affine(pixel, 0, 500000.0, 0, -pixel, 3300000.0)
    for name, tags in (("tagged.tif", {"ACQUISITION_DATE": "2025-04-20"}),
                       ("flight_20250420.tif", None)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=W, height=H, count=5,
                           dtype="float32", crs=CRS, transform=tf, nodata=float("nan")) as dst:
            dst.write(refl)
            dst.descriptions = tuple(names)
            if tags:
                dst.update_tags(**tags)
        scene = open_scene([tmp_path / name], chunks=16)
        assert scene.attrs["sensor"] == camera, name
        assert scene["band"].values.tolist() == ["blue", "green", "red", edge, "nir"]
        np.testing.assert_allclose(scene.isel(time=0).sel(band=edge).values, refl[3])


def test_read_is_lazy(tmp_path: Path) -> None:
    import dask

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read computed pixels")

    refl = _refl(5, seed=5)
    dn = np.where(np.isnan(refl), 0, np.round(refl * 32768)).astype("uint16")
    f = _write(tmp_path / "ms_20250420.tif", dn)
    with dask.config.set(scheduler=refuse):
        [da] = drone.read(f, "p4m", chunks=16)
    assert da.chunks is not None


def test_per_band_files_on_different_grids_are_aligned(tmp_path: Path) -> None:
    refl = _refl(5, seed=6)
    refl[:] = 0.3                                       # flat field: resampling keeps 0.3
    for i, name in enumerate(["blue", "green", "red", "rededge", "nir"]):
        _write(tmp_path / f"p4m_20250420_{name}.tif", refl[i:i + 1])
    nir = tmp_path / "p4m_20250420_nir.tif"
    with rasterio.open(nir, "r+") as dst:               # NIR camera grid shifted 2.5 cm
        dst.transform = TF @ Affine.translation(0.5, 0.5)
    [da] = drone.read(tmp_path, None, chunks=16)
    assert da.attrs["sensor"] == "p4m" and da.shape == (5, H, W)
    assert da.rio.transform() == TF
    v = da.sel(band="nir").values
    np.testing.assert_allclose(v[1:-1, 1:-1], 0.3, rtol=1e-5)


def test_band_names_that_fit_two_cameras_pick_by_pixel_size_and_say_so(caplog):
    """'RedEdge' is the P4M's 730 nm band and the RedEdge-MX's 717 nm one: the camera whose
    nominal pixel size is nearest is taken, and the log says which and how to name it."""
    import logging

    from pipeline.sensors import drone_camera_for_names
    names = ["Blue", "Green", "Red", "RedEdge", "NIR"]
    caplog.set_level(logging.INFO, logger="pipeline.sensors")
    assert drone_camera_for_names(names, 0.05).name == "p4m"
    assert "the p4m is taken" in caplog.text and "file name" in caplog.text
    assert drone_camera_for_names(names, 0.08).name == "rededge-mx"
    assert drone_camera_for_names(names, None) is None       # no pixel size: no guess


def test_a_sensor_file_in_the_config_reads_the_images_with_it(tmp_path: Path) -> None:
    """A P4M stack exported in x10000 units without band names: no reader can tell the
    camera or the scaling, and train/detect have no --sensor; a sensor file as the config's
    `sensor:` reads it (a shipped name stays for the record)."""
    from pipeline.config import load_config, with_overrides
    from pipeline.survey import prepare_scene
    refl = _refl(5)
    dn = np.where(np.isnan(refl), 0, np.round(refl * 10000)).astype("uint16")
    f = _write(tmp_path / "ortho_2025-04-20.tif", dn, nodata=0)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "survey-drone.yaml")
    with pytest.raises(SensorNeeded):
        prepare_scene([f], cfg, dem=None)
    cam = tmp_path / "p4m-x10000.yaml"
    cam.write_text((Path(__file__).resolve().parents[1] / "configs" / "sensors" / "p4m.yaml")
                   .read_text().replace("name: p4m", "name: p4m-x10000")
                   .replace("scaling: auto", "scaling: dn10000"))
    scene, _ = prepare_scene([f], with_overrides(cfg, sensor=str(cam)), dem=None)
    assert scene.attrs["sensor"] == "p4m-x10000"
    assert scene["band"].values.tolist()[:5] == ["blue", "green", "red", "rededge2", "nir"]
    np.testing.assert_allclose(scene.isel(time=0).sel(band="nir").values, refl[4], atol=1e-4)


def test_a_sensor_file_in_the_config_names_a_contract_files_bands(tmp_path: Path) -> None:
    """The multi-band reader (contract GeoTIFFs with an ACQUISITION_DATE tag) takes the band
    order from a sensor file in the config as the drone reader does (it got the file's path
    and ignored it)."""
    from affine import Affine

    from pipeline.config import load_config, with_overrides
    from pipeline.sensors import load_sensor
    from pipeline.survey import prepare_scene
    root = Path(__file__).resolve().parents[1]
    spec = load_sensor(root / "configs" / "sensors" / "sentinel2.yaml")
    n = len(spec.band_order)
    p = tmp_path / "S2_20240410.tif"
    with rasterio.open(p, "w", driver="GTiff", height=32, width=32, count=n, dtype="float32",
                       crs="EPSG:32650", transform=Affine(10, 0, 5e5, 0, -10, 3.3e6)) as dst:
        dst.write(np.full((n, 32, 32), 0.2, "float32"))
        dst.update_tags(ACQUISITION_DATE="2024-04-10")
    cfg = load_config()
    with pytest.raises(SensorNeeded):
        prepare_scene([p], cfg, dem=None)
    scene, _ = prepare_scene([p], with_overrides(
        cfg, sensor=str(root / "configs" / "sensors" / "sentinel2.yaml")), dem=None)
    assert scene["band"].values.tolist()[:4] == ["coastal", "blue", "green", "red"]


# --- contract variants found by an outside-style audit (session 16) ---------------------------
P4M_CANON = ["blue", "green", "red", "rededge2", "nir"]


def _flight(tmp_path: Path, name: str, descriptions: list[str], order: list[int],
            tags: dict | None = None, data: np.ndarray | None = None,
            **kw) -> tuple[Path, np.ndarray]:
    refl = _refl(5, seed=5) if data is None else data
    sub = tmp_path / name
    sub.parent.mkdir(parents=True, exist_ok=True)
    return _write(sub, refl[order], descriptions=[descriptions[k] for k in order], tags=tags,
                  **kw), refl


def _read_bands(path: Path) -> tuple[dict[str, np.ndarray], str]:
    from pipeline.ingest import open_scene
    s = open_scene([path], chunks=16).isel(time=0)
    return {b: s.sel(band=b).values for b in s["band"].values.tolist()}, s.attrs["sensor"]


@pytest.mark.parametrize("names", [["B02", "B03", "B04", "B06", "B08"], P4M_CANON])
def test_named_bands_in_any_order_without_a_date_tag(tmp_path: Path, names) -> None:
    """Sentinel-2 or canonical names, shuffled, date only in the file name (the drone
    reader's path): each band is read by its name, never by the camera's stack order."""
    path, refl = _flight(tmp_path, "flight_20240502.tif", names, [4, 2, 0, 3, 1])
    bands, sensor = _read_bands(path)
    assert sensor == "p4m"
    for k, b in enumerate(P4M_CANON):
        np.testing.assert_allclose(bands[b], refl[k])


def test_a_band_name_the_camera_lacks_is_refused_not_read_in_stack_order(tmp_path) -> None:
    path, _ = _flight(tmp_path, "p4m_flight_20240502.tif",
                      ["Blue", "Green", "Red", "RedEdge", "Thermal"], [0, 1, 2, 3, 4])
    with pytest.raises(SensorNeeded, match=r"\['Thermal'\] are not p4m bands"):
        _read_bands(path)


@pytest.mark.parametrize("where,tags", [("individual_flights/flight_20240502.tif", None),
                                        ("flight_20240502.tif",
                                         {"NOTE": "bands: blue green red rededge nir"})])
def test_camera_words_inside_other_words_or_notes_do_not_pick_the_camera(
        tmp_path: Path, where, tags) -> None:
    """Contract band names decide the camera; a folder 'individual_flights' is no Dual and a
    NOTE tag listing 'rededge' no RedEdge-MX."""
    path, refl = _flight(tmp_path, where, P4M_CANON, [0, 1, 2, 3, 4], tags=tags)
    bands, sensor = _read_bands(path)
    assert sensor == "p4m" and list(bands) == P4M_CANON
    np.testing.assert_allclose(bands["nir"], refl[4])


def test_per_band_gdal_scale_and_offset_without_a_date_tag(tmp_path: Path) -> None:
    """uint16 with a different scale or offset per band: each band's own (rioxarray drops
    them when they differ, and the reader fell back to Metashape's 32768)."""
    refl = _refl(5, seed=5)
    scales, offsets = [1e-4] * 3 + [2e-4] * 2, [-0.1] * 3 + [0.0] * 2
    dn = np.stack([np.where(np.isnan(r), 0, np.round((r - o) / s)) for r, s, o
                   in zip(refl, scales, offsets)]).astype("uint16")
    path = tmp_path / "flight_20240502.tif"
    _write(path, dn, nodata=0, descriptions=P4M_CANON)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = scales, offsets
    bands, _ = _read_bands(path)
    for k, b in enumerate(P4M_CANON):
        np.testing.assert_allclose(bands[b], refl[k], atol=2e-4)


@pytest.mark.parametrize("tags", [None, {"ACQUISITION_DATE": "2024-05-02"}])
def test_an_alpha_band_named_alpha_masks_in_both_readers(tmp_path: Path, tags) -> None:
    refl = np.concatenate([_refl(5, seed=5), np.full((1, H, W), 255, "float32")])
    refl[5, :, :4] = 0                                   # the collar: transparent
    refl[:5, :, :4] = 0
    path, _ = _flight(tmp_path, "flight_20240502.tif", [*P4M_CANON, "alpha"],
                      [0, 1, 2, 3, 4, 5], tags=tags, data=refl)
    bands, _ = _read_bands(path)
    assert list(bands) == P4M_CANON
    assert np.isnan(bands["red"][:, :4]).all() and np.isfinite(bands["red"][3:, 4:]).all()


def test_a_float_collar_of_zeros_is_no_data_not_ground(tmp_path: Path) -> None:
    """A float orthomosaic clipped with a 0.0 collar and no nodata declared: the collar (0 in
    every band) is no data. It was read as ground, scored, and flagged pixels of it grew a
    target; a pixel 0 in one band only stays."""
    refl = _refl(5)
    refl[:, :, -6:] = 0.0                 # the collar
    refl[4, 20, 10] = 0.0                 # one band 0: still ground
    f = _write(tmp_path / "flight_20250420.tif", refl,
               descriptions=["Blue", "Green", "Red", "RedEdge", "NIR"])
    [da] = drone.read(f, None, chunks=16)
    v = da.values
    assert np.isnan(v[:, :, -6:]).all()
    assert np.isfinite(v[:, 20, 10]).all() and v[4, 20, 10] == 0
    np.testing.assert_allclose(v[:, 5:, :-6], refl[:, 5:, :-6], rtol=1e-6)


def test_float_reflectance_in_percent_is_refused(tmp_path: Path) -> None:
    """Float bands of 0-100 read as reflectance were all masked as implausible and detect
    said 'nothing was seen'; now one line says what the file holds and what to set. With a
    GDAL scale of 0.01 the same file reads."""
    refl = _refl(5) * 100
    names = ["Blue", "Green", "Red", "RedEdge", "NIR"]
    f = _write(tmp_path / "pct_20250420.tif", refl, descriptions=names)
    with pytest.raises(InputError) as exc:
        drone.read(f, None, chunks=16)
    msg = str(exc.value)
    assert "\n" not in msg and "pct_20250420.tif" in msg and "percent" in msg
    assert "-scale 0.01" in msg
    with rasterio.open(f, "r+") as dst:
        dst.scales = [0.01] * 5
    [da] = drone.read(f, None, chunks=16)
    np.testing.assert_allclose(da.values[:, 5:, 5:], refl[:, 5:, 5:] / 100, rtol=1e-5)
    # reflectance x 10000 is told its own scale (it was told 0.01, still 100 x too high)
    f = _write(tmp_path / "x10k_20250420.tif", refl * 100, descriptions=names)
    with pytest.raises(InputError, match=r"reflectance x 10000\? give it a scale "
                                         r"\(gdal_edit.py -scale 0.0001\)"):
        drone.read(f, None, chunks=16)


@pytest.mark.parametrize("names", [["NIR", "RedEdge", "Red", "Green", "Blue"],
                                   ["Blue", "Green", "Red", "Red edge", "NIR"]])
def test_named_bands_and_an_unnamed_last_band_keep_their_names(tmp_path: Path, names) -> None:
    """Five named bands and an unnamed alpha: the names were dropped for the camera's stack
    order (NIR read as blue, without a word). The names hold; the last band is the mask."""
    refl = np.concatenate([_refl(5, seed=5), np.full((1, H, W), 255, "float32")])
    refl[5, :, :4] = 0
    refl[:5, :, :4] = 0
    canon = {"nir": "nir", "rededge": "rededge2", "red edge": "rededge2", "red": "red",
             "green": "green", "blue": "blue"}
    path = _write(tmp_path / "p4m_flight_20240502.tif", refl, descriptions=[*names, ""])
    bands, _ = _read_bands(path)
    assert sorted(bands) == sorted(P4M_CANON)
    for k, n in enumerate(names):
        got = bands[canon[n.lower()]]
        np.testing.assert_allclose(got[3:, 4:], refl[k][3:, 4:])
        assert np.isnan(got[:, :4]).all()                 # the mask holds


def test_an_8_bit_image_whose_fourth_band_is_nir_is_refused(tmp_path: Path) -> None:
    """RGB + NIR in 8 bits: the NIR band was taken for alpha and the black collar scored."""
    data = np.random.default_rng(1).integers(1, 255, (4, H, W)).astype("uint8")
    path = _write(tmp_path / "flight_20240502.tif", data,
                  descriptions=["Red", "Green", "Blue", "NIR"])
    with pytest.raises(InputError, match="an 8-bit image whose 4th band is 'NIR', not alpha"):
        _read_bands(path)
    alpha = _write(tmp_path / "rgba_20240502.tif", data,        # named alpha: still RGB + mask
                   descriptions=["Red", "Green", "Blue", "Alpha"])
    bands, sensor = _read_bands(alpha)
    assert sensor == "rgb" and sorted(bands) == ["blue", "green", "red"]


def test_a_drone_file_named_like_a_sentinel2_band_file_is_read_whole(tmp_path: Path) -> None:
    """plot_B08.tif, five named bands: read as Sentinel-2's NIR (its first band, blue) with
    the other four dropped."""
    path, refl = _flight(tmp_path, "plot_B08.tif", P4M_CANON, [0, 1, 2, 3, 4],
                         tags={"ACQUISITION_DATE": "2024-05-02"})
    bands, sensor = _read_bands(path)
    assert sensor == "p4m" and list(bands) == P4M_CANON
    np.testing.assert_allclose(bands["nir"], refl[4])


def test_a_dji_terra_export_at_coarse_pixels_is_a_dji_camera(tmp_path: Path) -> None:
    """DJI Terra result_*.tif of a P4M flight at 10 cm was read as a RedEdge-MX by its pixel
    size (its 730 nm red edge as rededge1), and its model then passed on RedEdge-MX flights.
    The software tag says DJI: P4 Multispectral with a blue band, Mavic 3M without."""
    coarse = Affine(0.10, 0, 500000.0, 0, -0.10, 3300000.0)
    for bands, camera in ((["Blue", "Green", "Red", "RedEdge", "NIR"], "p4m"),
                          (["Green", "Red", "RedEdge", "NIR"], "mavic3m")):
        folder = tmp_path / f"{camera}_2025-04-20".replace("p4m", "survey").replace(
            "mavic3m", "other")
        folder.mkdir()
        for i, name in enumerate(bands):
            with rasterio.open(folder / f"result_{name}.tif", "w", driver="GTiff", width=W,
                               height=H, count=1, dtype="float32", crs=CRS, transform=coarse,
                               nodata=-10000) as dst:
                dst.write(_refl(1, seed=i))
                dst.update_tags(TIFFTAG_SOFTWARE="DJI Terra 4.0")
        [da] = drone.read(folder, None, chunks=16)
        assert da.attrs["sensor"] == camera


def test_bands_all_named_but_of_no_known_camera_are_not_told_to_name_them(tmp_path):
    """red, green, blue, nir (no camera of ours has that set) was refused with "name the
    bands in the file", which they were."""
    path = _write(tmp_path / "flight_20240502.tif", _refl(4),
                  descriptions=["red", "green", "blue", "nir"])
    with pytest.raises(SensorNeeded, match=r"its bands \(red, green, blue, nir\) are not those "
                                           r"of a drone camera poppyscan knows \(.*p4m: blue, "
                                           r"green, red, rededge2, nir.*sensor file") as exc:
        drone.read(path, None, chunks=16)
    assert "name the bands" not in str(exc.value)


@pytest.mark.parametrize("order", ["band numbers", "wavelengths"])
def test_an_unnamed_rededge_mx_stack_in_either_order_reads_nir_as_nir(tmp_path, order, caplog):
    """MicaSense's Atlas writes blue, green, red, red edge, NIR; Pix4D writes the band
    numbers' order (NIR 4th, red edge 5th). The reader assumed the latter: an Atlas stack had
    NIR and red edge swapped, silently. NIR is the brighter: a darker 4th band is red edge."""
    import logging
    rng = np.random.default_rng(3)
    veg = {"blue": 0.04, "green": 0.08, "red": 0.05, "rededge2": 0.22, "nir": 0.45}
    refl = {b: (v * rng.uniform(0.7, 1.3, (H, W))).astype("float32") for b, v in veg.items()}
    stack = ["blue", "green", "red", "nir", "rededge2"] if order == "band numbers" else \
        ["blue", "green", "red", "rededge2", "nir"]
    f = _write(tmp_path / "micasense_20250420.tif", np.stack([refl[b] for b in stack]))
    with caplog.at_level(logging.INFO, logger="pipeline.readers.drone"):
        [da] = drone.read(f, None, chunks=16)
    assert da.attrs["sensor"] == "rededge-mx"
    np.testing.assert_allclose(da.sel(band="nir").values, refl["nir"], rtol=1e-6)
    np.testing.assert_allclose(da.sel(band="rededge2").values, refl["rededge2"], rtol=1e-6)
    assert ("read in wavelength order" in caplog.text) is (order == "wavelengths")


def test_an_index_map_given_with_the_band_files_is_left_out(tmp_path: Path, caplog) -> None:
    """--images flight/map/*.tif brought DJI Terra's result_NDVI.tif, refused as "cannot tell
    which camera took it" (given the folder, it was left out)."""
    import logging

    from pipeline.ingest import read_products
    folder = tmp_path / "flight_2025-04-20"
    refl = _terra_flight(folder)
    _write(folder / "result_NDVI.tif", np.zeros((1, H, W), "float32"), nodata=-10000)
    with caplog.at_level(logging.WARNING, logger="pipeline.readers.drone"):
        [da] = read_products(sorted(folder.glob("*.tif")), chunks=16)
    assert da.attrs["sensor"] == "p4m"
    np.testing.assert_allclose(da.values, refl, rtol=1e-6)
    assert "result_NDVI.tif: an index map (NDVI) beside the flight's band files" in caplog.text


def test_a_dji_flight_folder_name_gives_the_date(tmp_path: Path) -> None:
    """DJI names a flight's folder DJI_<YYYYMMDDhhmm>_<n>: the date ran on into the time
    and was not read (refused: no date)."""
    from pipeline.readers.multiband import _date_in
    folder = tmp_path / "DJI_202405071021_001"
    _terra_flight(folder)
    [da] = drone.read(folder, None, chunks=16)
    assert da.attrs["time"] == np.datetime64("2024-05-07", "ns")
    assert _date_in("DJI_20240507102133_002") == np.datetime64("2024-05-07", "ns")
    # not a date: ten digits, or a separated date running on into digits
    assert _date_in("plot_2024050710") is None and _date_in("2024-05-071021") is None


@pytest.mark.parametrize("inner", ["3_dsm_ortho/2_mosaic", "4_index/reflectance"])
def test_a_pix4d_project_folder_gives_the_date(tmp_path: Path, inner: str) -> None:
    """Pix4D writes a project's mosaic three folders down (plotA/3_dsm_ortho/2_mosaic/...)
    and names it after the project: a date in the project folder, or in the folder of the day
    holding it, was not looked at (refused: no date)."""
    refl = _refl(5)
    for project in (tmp_path / "20240507_plotA", tmp_path / "2024-05-08" / "plotB"):
        folder = project / inner
        folder.mkdir(parents=True)
        f = _write(folder / f"{project.name}_transparent_mosaic_group1.tif",
                   np.where(np.isnan(refl), -10000, refl).astype("float32"), nodata=-10000,
                   descriptions=["Blue", "Green", "Red", "RedEdge", "NIR"])
        [da] = drone.read(f, None, chunks=16)
        assert da.attrs["time"] == np.datetime64(f"2024-05-0{7 + (project.name == 'plotB')}",
                                                 "ns")
    # a folder of that name elsewhere is not a project's step: nothing above it is read
    other = tmp_path / "20240509" / "x" / "y" / "2_mosaic"
    other.mkdir(parents=True)
    f = _write(other / "m.tif", np.where(np.isnan(refl), -10000, refl).astype("float32"),
               nodata=-10000, descriptions=["Blue", "Green", "Red", "RedEdge", "NIR"])
    with pytest.raises(InputError, match="no acquisition or flight date"):
        drone.read(f, None, chunks=16)
