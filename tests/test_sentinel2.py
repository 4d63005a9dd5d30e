"""Sentinel-2 reader: BigEarthNet per-band folders, a SAFE folder and a zip built from one."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.bands import S2_BAND_ID, S2_BANDS
from pipeline.errors import InputError
from pipeline.readers import sentinel2

DATA = Path(__file__).parent / "data" / "bigearthnet"
PATCHES = sorted(p for p in DATA.iterdir() if p.is_dir())
PATCH = DATA / "S2A_MSIL2A_20170613T101031_87_48"
GRANULE = "L2A_T33UUP_A010316_20170613T101608"
SAFE_NAME = "S2A_MSIL2A_20170613T101031_N0510_R022_T33UUP_20230101T000000.SAFE"
RES_DIR = {10: "R10m", 20: "R20m", 60: "R60m"}

MTD = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2017-06-13T10:10:31.026Z</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>2017-06-13T10:10:31.026Z</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{safe}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>05.10</PROCESSING_BASELINE>
      <GENERATION_TIME>2023-01-01T00:00:00.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2A_20170613T101031_010316_N05.10">
        <SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>2017-06-13T10:10:31.026Z</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>22</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="{granule}" imageFormat="JPEG2000">
{image_files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      <BOA_ADD_OFFSET_VALUES_LIST>
{offsets}
      </BOA_ADD_OFFSET_VALUES_LIST>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""

MTD_TL = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">S2A_OPER_MSI_L2A_TL_2APS_20230101T000000_A010316_T33UUP_N05.10</TILE_ID>
    <SENSING_TIME metadataLevel="Standard">2017-06-13T10:16:08.460Z</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone 33N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:32633</HORIZONTAL_CS_CODE>
    </Tile_Geocoding>
    <Tile_Angles metadataLevel="Standard">
      <Mean_Sun_Angle>
        <ZENITH_ANGLE unit="deg">30.5183</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">152.3142</AZIMUTH_ANGLE>
      </Mean_Sun_Angle>
      <Mean_Viewing_Incidence_Angle_List>
        <Mean_Viewing_Incidence_Angle bandId="0">
          <ZENITH_ANGLE unit="deg">5.1</ZENITH_ANGLE>
          <AZIMUTH_ANGLE unit="deg">100.2</AZIMUTH_ANGLE>
        </Mean_Viewing_Incidence_Angle>
      </Mean_Viewing_Incidence_Angle_List>
    </Tile_Angles>
  </n1:Geometric_Info>
</n1:Level-2A_Tile_ID>
"""


def _write_jp2(path: Path, data: np.ndarray, profile: dict) -> None:
    """Lossless JPEG 2000 through GDAL's JP2OpenJPEG driver."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[1],
                       height=data.shape[0], count=1, dtype="uint16", crs=profile["crs"],
                       transform=profile["transform"], QUALITY=100, REVERSIBLE="YES") as dst:
        dst.write(data, 1)


def _scl_20m(shape: tuple[int, int]) -> np.ndarray:
    scl = np.full(shape, 4, dtype="uint16")          # vegetation
    scl[:10, :] = 8                                  # a cloud band
    scl[10:20, :30] = 5                              # bare soil
    scl[-1, -1] = 0                                  # one no-data pixel
    return scl


def build_safe(root: Path, patch: Path = PATCH, offset: int = 1000) -> Path:
    """An L2A SAFE (baseline 05.10, BOA_ADD_OFFSET -offset) holding the patch's pixels."""
    safe = root / SAFE_NAME
    img = safe / "GRANULE" / GRANULE / "IMG_DATA"
    tile = "T33UUP_20170613T101031"
    files = []
    for tif in sorted(patch.glob("*_B*.tif")):
        band = tif.stem.rsplit("_", 1)[1]
        with rasterio.open(tif) as src:
            dn = src.read(1)
            profile = src.profile
            res = round(src.res[0])
        dn = np.where(dn == 0, 0, dn.astype("uint32") + offset).astype("uint16")
        name = f"{RES_DIR[res]}/{tile}_{band}_{res}m"
        _write_jp2(img / f"{name}.jp2", dn, profile)
        files.append(name)
        if band == "B05":  # a real L2A also has 20 m copies of 10 m bands; SCL at 20 m
            _write_jp2(img / f"R20m/{tile}_SCL_20m.jp2", _scl_20m(dn.shape), profile)
            files.append(f"R20m/{tile}_SCL_20m")
    with rasterio.open(patch / f"{patch.name}_B04.tif") as src:  # B04 at 20 m: must be ignored
        coarse = (src.read(1)[::2, ::2] + 5000).astype("uint16")
        p20 = dict(src.profile, transform=src.transform @ src.transform.scale(2, 2))
    _write_jp2(img / f"R20m/{tile}_B04_20m.jp2", coarse, p20)
    image_files = "\n".join(f"            <IMAGE_FILE>GRANULE/{GRANULE}/IMG_DATA/{f}</IMAGE_FILE>"
                            for f in files)
    offsets = "\n".join(f'        <BOA_ADD_OFFSET band_id="{i}">{-offset}</BOA_ADD_OFFSET>'
                        for i in range(13))
    (safe / "MTD_MSIL2A.xml").write_text(MTD.format(safe=SAFE_NAME, granule=GRANULE,
                                                    image_files=image_files, offsets=offsets))
    (safe / "GRANULE" / GRANULE / "MTD_TL.xml").write_text(MTD_TL)
    return safe


def zip_safe(safe: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(safe.rglob("*")):
            zf.write(f, f.relative_to(safe.parent).as_posix())
    return dest


@pytest.fixture(scope="module")
def safe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_safe(tmp_path_factory.mktemp("safe"))


@pytest.fixture
def safe_copy(safe: Path, tmp_path: Path) -> Path:
    """A private copy of the SAFE for tests that edit it."""
    return Path(shutil.copytree(safe, tmp_path / safe.name))


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_bigearthnet_patch_folder(patch: Path) -> None:
    assert sentinel2.can_read(patch)
    chunks = 64 if patch == PATCH else 1024        # one patch read in several chunks
    [da] = sentinel2.read(patch, None, chunks=chunks)
    meta = __import__("json").loads(next(patch.glob("*_labels_metadata.json")).read_text())
    assert da.attrs["time"] == np.datetime64(meta["acquisition_date"].replace(" ", "T"), "ns")
    assert da.dims == ("band", "y", "x") and da.dtype == np.float32
    assert da.shape == (12, 120, 120)
    assert da["band"].values.tolist() == [S2_BANDS[b] for b in (
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")]
    assert da.rio.resolution() == (10.0, -10.0)
    assert da.rio.crs is not None and da.rio.crs.to_epsg() == int(meta["projection"][-8:-3])
    assert da.chunks is not None  # lazy
    v = da.compute()
    assert np.isfinite(v.values).all()
    assert 0.0 < float(v.min()) and float(v.max()) < 2.0
    # 20 m bands were replicated 2 x 2 onto the 10 m grid, 60 m bands 6 x 6
    with rasterio.open(next(patch.glob("*_B05.tif"))) as src:
        b05 = src.read(1) / 10000.0
    np.testing.assert_allclose(v.sel(band="rededge1").values[::2, ::2], b05, rtol=1e-6)
    np.testing.assert_array_equal(v.sel(band="rededge1").values[1::2, 1::2],
                                  v.sel(band="rededge1").values[::2, ::2])
    red, nir = v.sel(band="red"), v.sel(band="nir")
    ndvi = float(((nir - red) / (nir + red)).mean())
    assert -0.2 < ndvi < 1.0
    assert da.attrs["product_type"] == "L2A" and da.attrs["processing_baseline"].startswith("02.")
    assert da.attrs["spacecraft"] in ("Sentinel-2A", "Sentinel-2B")


def test_pasture_ndvi_high_snow_ndvi_low() -> None:
    def ndvi(patch: str) -> float:
        [v] = sentinel2.read(DATA / patch, None)
        red, nir = v.sel(band="red"), v.sel(band="nir")
        return float(((nir - red) / (nir + red)).mean())
    assert ndvi("S2A_MSIL2A_20170617T113321_4_55") > 0.7   # Irish pasture, June
    assert ndvi("S2B_MSIL2A_20180204T94161_57_38") < 0.3   # Finland, snow, February


def test_safe_equals_band_folder(safe: Path) -> None:
    assert sentinel2.can_read(safe)
    [ref] = sentinel2.read(PATCH, None, chunks=64)
    [da] = sentinel2.read(safe, None, chunks=64)
    assert da.attrs["processing_baseline"] == "05.10"
    assert da.attrs["product_type"] == "L2A"
    assert da.attrs["spacecraft"] == "Sentinel-2A"
    assert da.attrs["time"] == np.datetime64("2017-06-13T10:10:31.026", "ns")
    assert da.attrs["sun_zenith"] == pytest.approx(30.5183)
    assert da.attrs["sun_azimuth"] == pytest.approx(152.3142)
    assert da.rio.transform() == ref.rio.transform() and da.rio.crs == ref.rio.crs
    refl = da.drop_sel(band="scl").compute()
    assert refl["band"].values.tolist() == ref["band"].values.tolist()
    np.testing.assert_allclose(refl.values, ref.compute().values, atol=1e-6, rtol=0)


def test_scl_nearest_on_10m_grid(safe: Path) -> None:
    [da] = sentinel2.read(safe, None)
    assert da["band"].values.tolist()[-1] == "scl"
    scl = da.sel(band="scl").compute().values
    assert scl.shape == (120, 120)
    assert set(np.unique(scl).tolist()) == {0.0, 4.0, 5.0, 8.0}  # classes only, no blends
    np.testing.assert_array_equal(scl[::2, ::2], _scl_20m((60, 60)))
    assert (scl[-2:, -2:] == 0).all()


def test_zip_read_in_place_equals_safe(safe: Path, tmp_path: Path) -> None:
    z = zip_safe(safe, tmp_path / (safe.stem + ".zip"))
    assert sentinel2.can_read(z)
    [a] = sentinel2.read(z, None)
    [b] = sentinel2.read(safe, None)
    assert a.attrs["time"] == b.attrs["time"] and a.attrs["sun_zenith"] == b.attrs["sun_zenith"]
    np.testing.assert_array_equal(a.compute().values, b.compute().values)
    assert not any(p.suffix == ".jp2" for p in tmp_path.rglob("*"))  # nothing extracted


def test_dn_zero_masked_before_offset(safe_copy: Path) -> None:
    safe = safe_copy
    jp2 = next(safe.rglob("*_B02_10m.jp2"))
    with rasterio.open(jp2) as src:
        dn, profile = src.read(1), src.profile
    dn[:5, :5] = 0
    jp2.unlink()
    _write_jp2(jp2, dn, profile)
    [da] = sentinel2.read(safe, None)
    blue = da.sel(band="blue").compute().values
    assert np.isnan(blue[:5, :5]).all()          # not (0 - 1000) / 10000 = -0.1
    assert np.isfinite(blue[5:, 5:]).all()


@pytest.mark.parametrize("evil", ["../evil.txt", "/etc/evil.txt", "a/../../evil.jp2"])
def test_evil_zip_entry_refused(safe: Path, tmp_path: Path, evil: str) -> None:
    z = zip_safe(safe, tmp_path / "evil.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr(zipfile.ZipInfo(evil), b"x")
    with pytest.raises(InputError, match="evil.zip"):
        sentinel2.read(z, None)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_l1c_radio_offset(safe_copy: Path) -> None:
    safe = safe_copy
    mtd = (safe / "MTD_MSIL2A.xml").read_text()
    mtd = (mtd.replace("Level-2A_User_Product", "Level-1C_User_Product")
           .replace("BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE")
           .replace("BOA_ADD_OFFSET_VALUES_LIST", "Radiometric_Offset_List")
           .replace("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"))
    (safe / "MTD_MSIL2A.xml").unlink()
    (safe / "MTD_MSIL1C.xml").write_text(mtd)
    [da] = sentinel2.read(safe, None)
    [ref] = sentinel2.read(PATCH, None)
    assert da.attrs["product_type"] == "L1C"
    np.testing.assert_allclose(da.drop_sel(band="scl").compute().values,
                               ref.compute().values, atol=1e-6, rtol=0)


def test_per_band_offsets_by_band_id(safe_copy: Path) -> None:
    """Offsets are per band_id, 8 = B8A: a different offset for B8A only changes nir08."""
    safe = safe_copy
    mtd = (safe / "MTD_MSIL2A.xml").read_text()
    mtd = mtd.replace(f'band_id="{S2_BAND_ID["B8A"]}">-1000<', f'band_id="{S2_BAND_ID["B8A"]}">-900<')
    (safe / "MTD_MSIL2A.xml").write_text(mtd)
    [da] = sentinel2.read(safe, None)
    [ref] = sentinel2.read(PATCH, None)
    diff = (da.drop_sel(band="scl") - ref).compute()
    np.testing.assert_allclose(diff.sel(band="nir08").values, 0.01, atol=1e-6)
    np.testing.assert_allclose(diff.drop_sel(band="nir08").values, 0.0, atol=1e-6)


def test_cog_folder_with_offset_by_baseline_in_name(tmp_path: Path) -> None:
    """Per-band GeoTIFFs named like an N0400+ product get the -1000 offset."""
    folder = tmp_path / "S2B_MSIL2A_20230415T030539_N0509_R075_T50RQT_20230415T061234"
    folder.mkdir()
    for band in ("B02", "B04", "B08", "B11"):
        src_path = PATCH / f"{PATCH.name}_{band}.tif"
        with rasterio.open(src_path) as src:
            dn, profile = src.read(1), src.profile
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
            dst.write((dn + 1000).astype("uint16"), 1)
    [da] = sentinel2.read(folder, None)
    [ref] = sentinel2.read(PATCH, None)
    assert da.attrs["processing_baseline"] == "05.09"
    assert da.attrs["time"] == np.datetime64("2023-04-15T03:05:39", "ns")
    assert da["band"].values.tolist() == ["blue", "red", "nir", "swir16"]
    np.testing.assert_allclose(da.compute().values,
                               ref.sel(band=["blue", "red", "nir", "swir16"]).compute().values,
                               atol=1e-6)


def test_cog_folder_named_by_date_only(tmp_path: Path) -> None:
    """An Earth Search style item folder: S2B_50RQT_20230415_0_L2A/B04.tif (offset by date)."""
    folder = tmp_path / "S2B_50RQT_20230415_0_L2A"
    folder.mkdir()
    with rasterio.open(PATCH / f"{PATCH.name}_B04.tif") as src:
        dn, profile = src.read(1), src.profile
    with rasterio.open(folder / "B04.tif", "w", **profile) as dst:
        dst.write((dn + 1000).astype("uint16"), 1)
    [da] = sentinel2.read(folder, None)
    [ref] = sentinel2.read(PATCH, None)
    assert da.attrs["time"] == np.datetime64("2023-04-15", "ns")
    np.testing.assert_allclose(da.compute().values[0], ref.sel(band="red").compute().values,
                               atol=1e-6)


def test_unreadable_inputs_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "S2A_MSIL2A_x.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="S2A_MSIL2A_x.zip"):
        sentinel2.read(bad, None)
    folder = tmp_path / "nodate"
    folder.mkdir()
    with rasterio.open(PATCH / f"{PATCH.name}_B04.tif") as src:
        profile, dn = src.profile, src.read(1)
    with rasterio.open(folder / "B04.tif", "w", **profile) as dst:
        dst.write(dn, 1)
    with pytest.raises(InputError, match="no acquisition date"):
        sentinel2.read(folder, None)
    assert not sentinel2.can_read(tmp_path / "missing")


def test_flat_band_files_beside_product_metadata(safe_copy: Path, tmp_path: Path) -> None:
    """An unpacked product: MTD_MSIL2A.xml next to flat band files (no GRANULE tree)."""
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(safe_copy / "MTD_MSIL2A.xml", flat)
    for jp2 in safe_copy.rglob("*.jp2"):
        shutil.copy(jp2, flat / jp2.name)
    assert sentinel2.can_read(flat)
    [da] = sentinel2.read(flat, None)
    [ref] = sentinel2.read(PATCH, None)
    assert da.attrs["processing_baseline"] == "05.10" and da.attrs["product_type"] == "L2A"
    np.testing.assert_allclose(da.drop_sel(band="scl").compute().values,
                               ref.compute().values, atol=1e-6, rtol=0)


def test_drone_sensor_refused_for_sentinel2(safe: Path) -> None:
    from pipeline.sensors import load_sensor
    with pytest.raises(InputError, match="p4m"):
        sentinel2.read(safe, load_sensor("p4m"))
    [da] = sentinel2.read(safe, load_sensor("sentinel2"))
    assert da.attrs["sensor"] == "sentinel2"


def test_read_is_lazy(safe: Path) -> None:
    import dask

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read computed pixels")

    with dask.config.set(scheduler=refuse):
        [da] = sentinel2.read(safe, None, chunks=64)
        [db] = sentinel2.read(PATCH, None, chunks=64)
    assert da.chunks is not None and db.chunks is not None


def test_band_on_a_non_nested_grid_is_reprojected(tmp_path: Path) -> None:
    """A 20 m band whose origin is shifted by 10 m cannot be replicated: nearest reprojection."""
    folder = tmp_path / "S2A_MSIL2A_20170613T101031_N0205_crop"
    folder.mkdir()
    for band in ("B04", "B05"):
        with rasterio.open(PATCH / f"{PATCH.name}_{band}.tif") as src:
            dn, profile = src.read(1), src.profile
        if band == "B05":
            profile["transform"] = profile["transform"] @ profile["transform"].translation(0.5, 0)
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
            dst.write(dn, 1)
    [da] = sentinel2.read(folder, None, chunks=64)
    assert da.shape == (2, 120, 120)
    re1 = da.sel(band="rededge1").compute().values
    with rasterio.open(PATCH / f"{PATCH.name}_B05.tif") as src:
        b05 = src.read(1) / 10000.0
    # 10 m pixel column 2j+1 (j >= 0) lies in shifted 20 m pixel j; column 0 lies outside it
    np.testing.assert_allclose(re1[::2, 1::2], b05[:, :60], rtol=1e-6)
    assert np.isnan(re1[:, 0]).all()
