"""Sentinel-2 products: ``.SAFE`` folders, ``.zip`` files and folders of per-band files.

Inputs
------
* ``S2?_MSIL2A_*.SAFE`` / ``S2?_MSIL1C_*.SAFE`` folders, or a folder holding ``MTD_MSIL2A.xml``
  or ``MTD_MSIL1C.xml``: bands are the JP2 (or GeoTIFF) files under
  ``GRANULE/<granule>/IMG_DATA`` (L2A: ``R10m``/``R20m``/``R60m``, names like
  ``T33UUP_20170613T101031_B04_10m.jp2``; L1C: ``T33UUP_20170613T101031_B04.jp2``). Each band
  is read at its finest resolution; one acquisition per granule.
* the same product zipped (``.zip``): read in place through GDAL's ``/vsizip/``, nothing is
  extracted. A zip with an absolute member name or a ``..`` component is refused as a whole.
* a folder of per-band files (``*_B04.tif``, ``B04.tif``, ``*_B04_10m.jp2``, COGs, ``SCL``):
  files are grouped by the common prefix before the band name, one acquisition per group.

Metadata
--------
From ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``: ``PRODUCT_START_TIME`` (the acquisition time,
as in the product name), ``SPACECRAFT_NAME``, ``PROCESSING_BASELINE``, ``PRODUCT_TYPE``, the
quantification value (``BOA_QUANTIFICATION_VALUE`` / ``QUANTIFICATION_VALUE``) and the
per-band offsets (``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET``, ``band_id`` 0-12 with 8 = B8A).
From ``GRANULE/*/MTD_TL.xml``: ``Mean_Sun_Angle`` (zenith, azimuth).
Per-band folders: the date from ``*_labels_metadata.json`` (BigEarthNet: ``acquisition_date``,
``tile_source``), else from the name (``YYYYMMDDTHHMMSS``, then a plain ``YYYYMMDD``), else
from an ``ACQUISITION_DATE`` tag; spacecraft, product type and baseline (``_N0205_``) from the
names when present.

Reflectance
-----------
``reflectance = (DN + offset) / quantification`` after DN 0 (no data) and DN 65535
(saturated) are set to NaN. A per-band file with a GDAL scale/offset uses those instead
(``DN * scale + offset``); a float file is taken as reflectance. When a per-band product gives
no baseline, the offset is guessed from the date (-1000 from 2022-01-25, when baseline 04.00
started, else 0) and a warning says so.

Resampling
----------
Everything lands on the grid of the finest band (10 m). 20 m and 60 m bands whose grids nest
in it (the normal case: one tile origin, 10980/5490/1830 px) are upsampled by pixel
replication (nearest neighbour, exact, lazy with ``dask.array.repeat``): no spectra are mixed
across field borders and SCL classes stay classes. A band whose grid does not nest is
reprojected with odc-geo, nearest neighbour.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dask.array as darr
import numpy as np
import rasterio
import xarray as xr
from rasterio.errors import RasterioIOError

from pipeline.bands import S2_BAND_ID, S2_BANDS, order_bands
from pipeline.errors import InputError
from pipeline.readers._raster import open_lazy
from pipeline.sensors import load_sensor

log = logging.getLogger(__name__)

#: A band file: optional prefix, the band, optional resolution suffix.
BAND_RE = re.compile(
    r"^(?:(?P<prefix>.*)_)?(?P<band>B0[1-9]|B1[0-2]|B8A|SCL)(?:_(?P<res>\d{2})m)?$",
    re.IGNORECASE)
_IMG_SUFFIXES = {".jp2", ".tif", ".tiff"}
_MTD_RE = re.compile(r"(^|/)MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
_TIME_RE = re.compile(r"(?<!\d)(\d{8})T(\d{5,6})(?!\d)")
_DATE_RE = re.compile(r"(?<!\d)(20\d{2})-?(\d{2})-?(\d{2})(?!\d)")
_BASELINE_RE = re.compile(r"_N(\d{2})(\d{2})_")
_OFFSET_START = np.datetime64("2022-01-25", "ns")  # processing baseline 04.00
_NATIVE = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
           "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "SCL": 20}


# ---------------------------------------------------------------------------------------------
# containers: a folder or a zip, seen as member names + bytes + GDAL paths
@dataclass
class _Container:
    path: Path
    names: list[str]                      # posix paths relative to the container root
    read_bytes: Callable[[str], bytes]
    gdal_path: Callable[[str], str]


def _folder(path: Path, recursive: bool) -> _Container:
    files = path.rglob("*") if recursive else path.iterdir()
    names = sorted(p.relative_to(path).as_posix() for p in files if p.is_file())
    return _Container(path, names, lambda n: (path / n).read_bytes(), lambda n: str(path / n))


def _unsafe_member(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None
            or ".." in parts)


def _zip(path: Path) -> _Container:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a readable zip file ({exc})") from None
    evil = [n for n in names if _unsafe_member(n)]
    if evil:
        raise InputError(f"{path}: refused, zip entry {evil[0]!r} points outside the archive "
                         "(absolute path or '..'); re-download the product")
    root = path.resolve()

    def read_bytes(name: str) -> bytes:
        with zipfile.ZipFile(root) as zf:
            return zf.read(name)

    return _Container(path, sorted(n for n in names if not n.endswith("/")), read_bytes,
                      lambda n: f"/vsizip/{root.as_posix()}/{n}")


# ---------------------------------------------------------------------------------------------
# plug-in API
def _band_of(name: str) -> tuple[str, str, int | None] | None:
    """(prefix, band, resolution) of an image file name, or None."""
    p = PurePosixPath(name)
    if p.suffix.lower() not in _IMG_SUFFIXES:
        return None
    m = BAND_RE.match(p.stem)
    if not m:
        return None
    band = m["band"].upper()
    return m["prefix"] or "", band, int(m["res"]) if m["res"] else None


def can_read(path: Path) -> bool:
    path = Path(path)
    try:
        if path.is_dir():
            if path.suffix.upper() == ".SAFE":
                return True
            if any((path / f"MTD_MSIL{lvl}.xml").is_file() for lvl in ("2A", "1C")):
                return True
            return any(_band_file(p) for p in path.iterdir() if p.is_file())
        if path.is_file() and path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                return any(_MTD_RE.search(n) or _band_of(n) for n in zf.namelist())
        if path.is_file():
            return _band_file(path)
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def _band_file(path: Path) -> bool:
    """A file named as one Sentinel-2 band (``..._B08.tif``, ``T33UUP_..._B04_10m.jp2``)
    that holds one band: a drone orthomosaic of five bands named ``plot_B08.tif`` was read as
    Sentinel-2's NIR (its first band, blue) and the other four dropped."""
    if _band_of(path.name) is None:
        return False
    if path.suffix.lower() not in (".tif", ".tiff"):
        return True                  # a JP2 of a product: one band
    try:
        with rasterio.open(path) as src:
            return src.count == 1
    except RasterioIOError:
        return True                  # damaged: its reader says so


def read(path: Path, sensor: Any | None = None, chunks: int = 1024, *,
         prefer: str | None = None) -> list[xr.DataArray]:
    """One (band, y, x) float32 reflectance array per acquisition (granule) in ``path``
    (``prefer``, a drone camera, does not apply)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    sensor_name = _sensor_name(path, sensor)
    if path.is_file() and path.suffix.lower() == ".zip":
        box = _zip(path)
    elif path.is_dir() and (path.suffix.upper() == ".SAFE"
                            or any((path / f"MTD_MSIL{x}.xml").is_file() for x in ("2A", "1C"))):
        box = _folder(path, recursive=True)
    elif path.is_dir():
        box = _folder(path, recursive=False)
    elif path.is_file() and _band_of(path.name):
        box = _folder(path.parent, recursive=False)  # one band file: its group in the folder
    else:
        raise InputError(f"{path}: not a Sentinel-2 product (.SAFE, .zip or per-band folder)")
    mtd = [n for n in box.names if _MTD_RE.search(n)]
    products = _safe_products(box, min(mtd, key=len)) if mtd else []
    if mtd and not products:
        # product metadata beside flat per-band files (an unpacked or re-exported product)
        name = min(mtd, key=len)
        level = "L2A" if "2A" in PurePosixPath(name).name.upper() else "L1C"
        meta = _product_metadata(_xml(box, name), level, box, name)
        flat = _folder(box.path, recursive=False) if path.is_dir() else box
        products = _band_products(flat, dict(meta, product_type=level))
    elif not mtd:
        products = _band_products(box)
    if path.is_file() and path.suffix.lower() != ".zip":
        prefix = _band_of(path.name)[0]  # type: ignore[index]
        products = [p for p in products if p.prefix == prefix]
    if not products:
        raise InputError(f"{path}: no Sentinel-2 band files found (expected names like "
                         "T33UUP_20170613T101031_B04_10m.jp2 or *_B04.tif)")
    out = []
    for prod in products:
        da = _stack(prod, chunks)
        da.attrs = {
            "time": prod.time, "sensor": sensor_name, "sun_zenith": prod.sun_zenith,
            "sun_azimuth": prod.sun_azimuth, "spacecraft": prod.spacecraft,
            "processing_baseline": prod.baseline, "product_type": prod.product_type,
            "source": str(path),
        }
        out.append(da)
    return out


def _sensor_name(path: Path, sensor: Any | None) -> str:
    """'sentinel2', or a satellite sensor file's name; a drone sensor is a mistake."""
    if isinstance(sensor, (str, Path)):
        sensor = load_sensor(sensor)
    kind, name = getattr(sensor, "kind", None), str(getattr(sensor, "name", ""))
    if kind == "drone":
        raise InputError(f"{path}: a Sentinel-2 product, but the sensor given is {name!r} "
                         "(a drone camera); drop --sensor or give sentinel2")
    return name if kind == "satellite" and name else "sentinel2"


# ---------------------------------------------------------------------------------------------
# product description
@dataclass
class _Product:
    files: dict[str, str]                 # band -> GDAL path
    res: dict[str, int]                   # band -> resolution from the name (m) if known
    time: np.datetime64
    offsets: dict[str, float] = field(default_factory=dict)   # band -> additive offset (DN)
    quantification: float = 10000.0
    sun_zenith: float = float("nan")
    sun_azimuth: float = float("nan")
    spacecraft: str = ""
    baseline: str = ""
    product_type: str = ""
    use_gdal_scaling: bool = False        # per-band files: honour GDAL scale/offset if set
    prefix: str | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml(box: _Container, name: str) -> ET.Element:
    try:
        return ET.fromstring(box.read_bytes(name))
    except (ET.ParseError, OSError, KeyError) as exc:
        raise InputError(f"{box.path}: metadata {name} is not readable XML ({exc})") from None


def _find_text(root: ET.Element, tag: str) -> str | None:
    for el in root.iter():
        if _local(el.tag) == tag and el.text and el.text.strip():
            return el.text.strip()
    return None


def _parse_time(text: str) -> np.datetime64:
    stamp = dt.datetime.fromisoformat(text.strip())
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    return np.datetime64(stamp, "ns")


def _spacecraft(text: str) -> str:
    m = re.search(r"S2([ABC])", text.upper()) or re.search(r"SENTINEL-2([ABC])", text.upper())
    return f"Sentinel-2{m[1]}" if m else ""


def _safe_products(box: _Container, mtd_name: str) -> list[_Product]:
    root = _xml(box, mtd_name)
    level = "L2A" if "2A" in PurePosixPath(mtd_name).name.upper() else "L1C"
    meta = _product_metadata(root, level, box, mtd_name)
    time, baseline, spacecraft = meta["time"], meta["baseline"], meta["spacecraft"]
    quant, offsets = meta["quantification"], meta["offsets"]
    base = str(PurePosixPath(mtd_name).parent)
    base = "" if base == "." else base + "/"
    return _granules(box, base, time, baseline, spacecraft, quant, offsets, level)


def _product_metadata(root: ET.Element, level: str, box: _Container,
                      mtd_name: str) -> dict[str, Any]:
    start = _find_text(root, "PRODUCT_START_TIME") or _find_text(root, "DATATAKE_SENSING_START")
    if start is None:
        raise InputError(f"{box.path}: {mtd_name} has no PRODUCT_START_TIME")
    time = _parse_time(start)
    baseline = _find_text(root, "PROCESSING_BASELINE") or ""
    spacecraft = _find_text(root, "SPACECRAFT_NAME") or _spacecraft(box.path.name)
    qtag, otag = (("BOA_QUANTIFICATION_VALUE", "BOA_ADD_OFFSET") if level == "L2A"
                  else ("QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET"))
    quant = float(_find_text(root, qtag) or 10000.0)
    by_id = {i: b for b, i in S2_BAND_ID.items()}
    offsets: dict[str, float] = {}
    for el in root.iter():
        if _local(el.tag) == otag and el.get("band_id") is not None and el.text:
            band = by_id.get(int(el.get("band_id", "-1")))
            if band is not None:
                offsets[band] = float(el.text)
    if not offsets and _baseline_ge4(baseline):
        log.warning("%s: baseline %s but no %s in %s; assuming -1000", box.path, baseline,
                    otag, mtd_name)
        offsets = {b: -1000.0 for b in S2_BAND_ID}
    return {"time": time, "baseline": baseline, "spacecraft": spacecraft,
            "quantification": quant, "offsets": offsets}


def _granules(box: _Container, base: str, time: np.datetime64, baseline: str,
              spacecraft: str, quant: float, offsets: dict[str, float],
              level: str) -> list[_Product]:
    granules: dict[str, dict[str, tuple[str, int]]] = {}
    for name in box.names:
        if not name.startswith(base + "GRANULE/") or "/IMG_DATA/" not in name:
            continue
        info = _band_of(name)
        if info is None or info[1] not in S2_BANDS:
            continue  # B10 (cirrus) has no canonical band; TCI/AOT/WVP are not bands
        granule = name[len(base + "GRANULE/"):].split("/", 1)[0]
        res = info[2] or _NATIVE[info[1]]
        best = granules.setdefault(granule, {})
        if info[1] not in best or res < best[info[1]][1]:
            best[info[1]] = (name, res)
    products = []
    for granule, bands in sorted(granules.items()):
        zen = azi = float("nan")
        tl = f"{base}GRANULE/{granule}/MTD_TL.xml"
        if tl in box.names:
            troot = _xml(box, tl)
            for el in troot.iter():
                if _local(el.tag) == "Mean_Sun_Angle":
                    zen = float(_find_text(el, "ZENITH_ANGLE") or "nan")
                    azi = float(_find_text(el, "AZIMUTH_ANGLE") or "nan")
                    break
        else:
            log.warning("%s: no %s; sun angles unknown", box.path, tl)
        products.append(_Product(
            files={b: box.gdal_path(n) for b, (n, _) in bands.items()},
            res={b: r for b, (_, r) in bands.items()}, time=time, offsets=offsets,
            quantification=quant, sun_zenith=zen, sun_azimuth=azi, spacecraft=spacecraft,
            baseline=baseline, product_type=level))
    return products


def _baseline_ge4(baseline: str) -> bool:
    try:
        return float(baseline) >= 4.0
    except ValueError:
        return False


def _band_products(box: _Container, meta: dict[str, Any] | None = None) -> list[_Product]:
    """Products of per-band files grouped by prefix; ``meta`` from a product XML if any."""
    groups: dict[str, dict[str, tuple[str, int | None]]] = {}
    for name in box.names:
        if "/" in name:
            continue
        info = _band_of(name)
        if info is None or info[1] not in S2_BANDS:
            continue
        prefix, band, res = info
        group = groups.setdefault(prefix, {})
        if band not in group or (res or 999) < (group[band][1] or 999):
            group[band] = (name, res)
    products = []
    for prefix, bands in sorted(groups.items()):
        files = {b: box.gdal_path(n) for b, (n, _) in bands.items()}
        resolutions = {b: r or _NATIVE[b] for b, (_, r) in bands.items()}
        if meta is not None:
            products.append(_Product(
                files=files, res=resolutions, time=meta["time"], offsets=meta["offsets"],
                quantification=meta["quantification"], spacecraft=meta["spacecraft"],
                baseline=meta["baseline"], product_type=meta["product_type"], prefix=prefix))
            continue
        side = _sidecar_json(box, prefix)
        any_file = next(iter(bands.values()))[0]
        label = " ".join(filter(None, [prefix, str(side.get("tile_source", "")), box.path.name]))
        time = _band_time(box, prefix, side, bands)
        baseline = ""
        m = _BASELINE_RE.search(label)
        if m:
            baseline = f"{m[1]}.{m[2]}"
        if baseline:
            offset = -1000.0 if _baseline_ge4(baseline) else 0.0
        else:
            offset = -1000.0 if time >= _OFFSET_START else 0.0
            log.warning("%s: processing baseline unknown; assuming offset %+d from the date %s "
                        "(baseline 04.00 added -1000 from 2022-01-25)", box.path / any_file,
                        int(offset), str(time)[:10])
        ptype = ""
        for text in (f"{prefix} {box.path.name}".upper(), label.upper()):
            ptype = "L2A" if "MSIL2A" in text else ("L1C" if "MSIL1C" in text else "")
            if ptype:
                break
        ptype = ptype or ("L2A" if "SCL" in bands else "")
        products.append(_Product(
            files=files, res=resolutions, time=time,
            offsets={b: offset for b in bands}, spacecraft=_spacecraft(label),
            baseline=baseline, product_type=ptype, use_gdal_scaling=True, prefix=prefix))
    return products


def _sidecar_json(box: _Container, prefix: str) -> dict[str, Any]:
    candidates = [n for n in box.names if "/" not in n and n.lower().endswith(".json")
                  and n.startswith(prefix) and "metadata" in n.lower()]
    for name in sorted(candidates, key=len):
        try:
            data = json.loads(box.read_bytes(name))
        except (ValueError, OSError):
            log.warning("%s: %s is not valid JSON; ignored", box.path, name)
            continue
        if isinstance(data, dict):
            return data
    return {}


def _band_time(box: _Container, prefix: str, meta: dict[str, Any],
               bands: dict[str, tuple[str, int | None]]) -> np.datetime64:
    if meta.get("acquisition_date"):
        try:
            return _parse_time(str(meta["acquisition_date"]))
        except ValueError:
            log.warning("%s: acquisition_date %r not ISO; ignored", box.path,
                        meta["acquisition_date"])
    for text in (prefix, box.path.name):
        m = _TIME_RE.search(text)
        if m:
            hhmmss = m[2].rjust(6, "0")
            try:
                return np.datetime64(dt.datetime.strptime(m[1] + hhmmss, "%Y%m%d%H%M%S"), "ns")
            except ValueError:
                continue
    for text in (prefix, box.path.name):   # a plain date, e.g. S2B_50RQT_20230415_0_L2A
        for m in _DATE_RE.finditer(text):
            try:
                return np.datetime64(dt.date(int(m[1]), int(m[2]), int(m[3])), "ns")
            except ValueError:
                continue
    first = box.gdal_path(next(iter(bands.values()))[0])
    try:
        with rasterio.open(first) as src:
            tag = src.tags().get("ACQUISITION_DATE")
    except RasterioIOError:
        tag = None
    if tag:
        try:
            return _parse_time(tag)
        except ValueError:
            pass
    raise InputError(f"{box.path / (prefix or '')}: no acquisition date for the band files; "
                     "put YYYYMMDDTHHMMSS in the names or an ACQUISITION_DATE tag in the files")


# ---------------------------------------------------------------------------------------------
# pixels
def _open(path: str, chunks: int) -> xr.DataArray:
    da = open_lazy(path, chunks, "raster band")
    if da.rio.crs is None:
        raise InputError(f"{path}: band file has no CRS")
    return da.isel(band=0, drop=True)


def _to_reflectance(raw: xr.DataArray, band: str, prod: _Product) -> xr.DataArray:
    """DN -> float32 reflectance (NaN for DN 0 and 65535); SCL -> float classes."""
    if band == "SCL":
        return raw.astype("float32")
    data = raw.astype("float32")
    if np.issubdtype(raw.dtype, np.floating):
        return data.where(np.isfinite(data))
    data = data.where((raw != 0) & (raw != 65535))
    if prod.use_gdal_scaling:
        scale, offset = raw.attrs.get("scale_factor", 1.0), raw.attrs.get("add_offset", 0.0)
        if (scale, offset) != (1.0, 0.0):
            return (data * np.float32(scale) + np.float32(offset)).astype("float32")
    q = np.float32(prod.quantification)
    return ((data + np.float32(prod.offsets.get(band, 0.0))) / q).astype("float32")


def _stack(prod: _Product, chunks: int) -> xr.DataArray:
    order = sorted(prod.files, key=lambda b: (prod.res.get(b, 99), b))
    ref_band = order[0]
    ref = _open(prod.files[ref_band], chunks)
    ref_tf = ref.rio.transform()
    ref_res = abs(ref_tf.a)
    layers: dict[str, xr.DataArray] = {}
    for band in prod.files:
        if band == ref_band:
            raw = ref
        else:
            raw = _open(prod.files[band], chunks)
        tf = raw.rio.transform()
        k = abs(tf.a) / ref_res
        ki = round(k)
        nested = (abs(k - ki) < 1e-9 and ki >= 1 and raw.rio.crs == ref.rio.crs
                  and abs(tf.c - ref_tf.c) < 1e-6 * ref_res
                  and abs(tf.f - ref_tf.f) < 1e-6 * ref_res
                  and raw.sizes["y"] * ki == ref.sizes["y"]
                  and raw.sizes["x"] * ki == ref.sizes["x"])
        if nested and ki > 1:
            # reopen with chunks that become `chunks` once replicated
            raw = _open(prod.files[band], max(1, chunks // ki))
        refl = _to_reflectance(raw, band, prod)
        if nested:
            data = refl.data
            if ki > 1:
                data = _replicate(data, ki)
        else:
            data = _reproject_nearest(refl, ref).data
        layers[S2_BANDS[band]] = xr.DataArray(data, dims=("y", "x"),
                                              coords={"y": ref["y"], "x": ref["x"]})
    names = order_bands(list(layers))
    out = xr.concat([layers[n] for n in names], dim="band", join="override")
    out = out.assign_coords(band=names).transpose("band", "y", "x")
    out = out.chunk({"band": -1, "y": chunks, "x": chunks}).astype("float32")
    return out.rio.write_crs(ref.rio.crs).rio.write_transform(ref_tf)


def _replicate(data: darr.Array, k: int) -> darr.Array:
    """Nearest-neighbour upsampling by ``k`` in y and x, block by block (no overlap needed)."""
    chunks = tuple(tuple(c * k for c in axis) for axis in data.chunks)
    return darr.map_blocks(_repeat_block, data, k, chunks=chunks, dtype=data.dtype)


def _repeat_block(block: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(block, k, axis=0), k, axis=1)


def _reproject_nearest(da: xr.DataArray, ref: xr.DataArray) -> xr.DataArray:
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_reproject

    log.info("band grid does not nest in the 10 m grid; reprojecting (nearest)")
    box = GeoBox((ref.sizes["y"], ref.sizes["x"]), ref.rio.transform(), ref.rio.crs.to_wkt())
    src = da.odc.assign_crs(da.rio.crs.to_wkt())
    out = xr_reproject(src, box, resampling="nearest", dst_nodata=np.nan)
    return out.astype("float32")
