"""Reader for the multi-band GeoTIFF of the input contract (see pipeline/geotiff.py).

Band descriptions name the bands (Sentinel-2 or canonical names); GDAL scale/offset are applied
after nodata is masked; reflectance below -0.5 (an undeclared -10000 / -32767 fill, as the drone
reader also masks) is no data; the date comes from the ACQUISITION_DATE tag, else a YYYYMMDD or
YYYY-MM-DD in the file name, else TIFFTAG_DATETIME (with a warning: often the processing date).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.errors import RasterioIOError

from pipeline.bands import CATEGORICAL_BANDS, canonical_name
from pipeline.config import DRONE_PIXEL_M
from pipeline.errors import InputError, SensorNeeded
from pipeline.grid import pixel_metres
from pipeline.readers._raster import (
    check_ends,
    check_float_reflectance,
    has_mask_band,
    marked_alpha,
    mask_band,
)
from pipeline.sensors import drone_camera_for_names, known_sensors

log = logging.getLogger(__name__)

_SUFFIXES = {".tif", ".tiff"}
#: Reflectance below this is a fill value (-10000, -32767, ...), not a reading: no data even
#: when the file declares no nodata value (the drone reader's rule for float values).
_FILL_BELOW = -0.5
#: YYYYMMDD, YYYY-MM-DD, YYYY_MM_DD, and the TIFF/EXIF YYYY:MM:DD, YYYY/MM/DD, YYYY.MM.DD (one
#: separator throughout); YYYYMMDD may run on into the time, hhmm or hhmmss (DJI's flight
#: folders: DJI_202405071021_001)
_DATE_RE = re.compile(r"(?<!\d)((?:19|20)\d{2})([-_:/.]?)(\d{2})\2(\d{2})"
                      r"(?:(?<=\d{8})\d{4}(?:\d{2})?)?(?!\d)")
#: Sentinel-2 bands of the contract's B01..B12 that poppyscan does not use: B10 (cirrus, 1375
#: nm, a top-of-atmosphere band L2A products leave out) is dropped, not refused; so are the
#: other layers L2A exports carry beside the bands (aerosol and water vapour, the cloud and
#: snow probabilities, the QA bitmasks and the true-colour image: a Google Earth Engine
#: COPERNICUS/S2_SR_HARMONIZED export holds them; it was refused as a whole)
_UNUSED_BANDS = {"B10", "AOT", "WVP", "TCI", "TCI_R", "TCI_G", "TCI_B", "MSK_CLDPRB",
                 "MSK_SNWPRB", "MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS",
                 "MSK_CLASSI_SNOW_ICE", "QA10", "QA20", "QA60", "CLD", "SNW", "CLOUD_PROB"}
#: SENSOR tag values that name Sentinel-2 (a platform, the instrument), any case
_S2_TAG = re.compile(r"(sentinel[-_ ]?2[a-d]?|s2[a-d]?|msi)\b.*", re.IGNORECASE)


def can_read(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in _SUFFIXES


def parse_date(value: str) -> np.datetime64 | None:
    """An ISO date/date-time, or YYYYMMDD, anywhere in ``value``; None if there is none."""
    value = value.strip()
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return np.datetime64(stamp.replace(tzinfo=None), "ns")
    except ValueError:
        pass
    return _date_in(value)


def _date_in(text: str) -> np.datetime64 | None:
    """The first valid date in ``text`` in one of the forms of ``_DATE_RE``."""
    for m in _DATE_RE.finditer(text):
        try:
            return np.datetime64(dt.date(int(m[1]), int(m[3]), int(m[4])), "ns")
        except ValueError:
            continue
    return None


#: a Pix4D project's step folders (``1_initial``, ``3_dsm_ortho``, ``4_index``): the project
#: folder above them names the flight
_PIX4D_STEP = re.compile(r"^[1-4]_[a-z_]+$")


def _dated_names(path: Path, folders: bool) -> tuple[str, ...]:
    """The names a date is looked for in: the file's, and with ``folders`` its two folders',
    and in a Pix4D project (``20240507_plot/3_dsm_ortho/2_mosaic/plot_mosaic.tif``,
    ``.../4_index/reflectance/...``) the project folder and the one holding it."""
    if not folders:
        return (path.stem,)
    ups = list(path.parents)[:5]
    names = [path.stem, *(p.name for p in ups[:2])]
    step = max((k for k, p in enumerate(ups[:3]) if _PIX4D_STEP.match(p.name)), default=None)
    if step is not None:
        names += [p.name for p in ups[step + 1:step + 3] if p.name not in names]
    return tuple(names)


def has_date(path: Path, tags: dict[str, str]) -> bool:
    """Whether :func:`acquisition_time` (with ``folders``) has anything to read a date from."""
    return ("ACQUISITION_DATE" in tags or "TIFFTAG_DATETIME" in tags
            or any(_date_in(n) is not None for n in _dated_names(path, True)))


def acquisition_time(path: Path, tags: dict[str, str], *,
                     folders: bool = False) -> np.datetime64:
    """The ACQUISITION_DATE tag, else a date in the file name (and, with ``folders``, in the
    two enclosing folder names: drone teams file flights by date), else TIFFTAG_DATETIME."""
    if "ACQUISITION_DATE" in tags:
        t = parse_date(tags["ACQUISITION_DATE"])
        if t is None:
            raise InputError(f"{path}: ACQUISITION_DATE tag {tags['ACQUISITION_DATE']!r} "
                             "is not an ISO date; fix the tag (YYYY-MM-DD)")
        return t
    for name in _dated_names(path, folders):
        t = _date_in(name)
        if t is not None:
            return t
    if "TIFFTAG_DATETIME" in tags:
        raw = tags["TIFFTAG_DATETIME"]
        t = parse_date(raw[:10].replace(":", "-"))
        if t is not None:
            log.warning("%s: date taken from TIFFTAG_DATETIME (%s), which is often the "
                        "processing date; set an ACQUISITION_DATE tag to be sure", path, raw)
            return t
    raise InputError(f"{path}: no acquisition or flight date; add an ACQUISITION_DATE tag or "
                     "put the date (YYYYMMDD or YYYY-MM-DD) in the file name")


def _float_tag(tags: dict[str, str], key: str) -> float:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return float("nan")


def band_names(path: Path, descriptions: tuple[str | None, ...],
               sensor: Any | None = None, pixel_m: float | None = None,
               prefer: str | None = None) -> list[str]:
    """Canonical names of the file's bands from descriptions, else (drone pixels) from a
    shipped camera's own band names (P4M 'Blue, Green, Red, RedEdge, NIR'), else from the
    sensor's order."""
    names = [canonical_name(d) if d else None for d in descriptions]
    if all(n is not None for n in names):
        return names  # type: ignore[return-value]
    if pixel_m is not None and pixel_m < DRONE_PIXEL_M and all(descriptions):
        data = [d for d in descriptions if d and canonical_name(d) not in CATEGORICAL_BANDS]
        spec = drone_camera_for_names(data, pixel_m, prefer)
        if spec is not None:
            return [n if n is not None else spec.band(d).canonical  # type: ignore
                    for d, n in zip(descriptions, names)]
    stacked = (sensor.stacked_names(len(descriptions)) if hasattr(sensor, "stacked_names")
               else None)
    if stacked:
        return stacked  # type: ignore[return-value]
    missing = [i + 1 for i, n in enumerate(names) if n is None]
    raise SensorNeeded(f"{path}: bands {missing} have no recognised description; name the "
                       "bands in the file (band descriptions B01..B12, B8A, SCL or canonical "
                       "names)", known_sensors())


def _sensor_of(names: list[str], pixel_m: float, prefer: str | None = None) -> str:
    """The sensor a contract file without a SENSOR tag comes from: a drone camera when its
    pixels are finer than 2 m (the shipped camera with exactly these bands, else 'drone'),
    else 'sentinel2'."""
    if pixel_m >= DRONE_PIXEL_M:
        return "sentinel2"
    spec = drone_camera_for_names([n for n in names if n not in CATEGORICAL_BANDS], pixel_m,
                                  prefer)
    return spec.name if spec is not None else "drone"


def _sensor_tag(tags: dict[str, str]) -> str | None:
    """The sensor a SENSOR tag names: a shipped sensor file's name, or 'sentinel2' for any
    Sentinel-2 spelling (Sentinel-2A, S2B, MSI); another value is not the input contract's and
    is left aside (the sensor then comes from the bands)."""
    tag = tags.get("SENSOR", "").strip()
    if not tag:
        return None
    if tag.lower() in known_sensors():
        return tag.lower()
    if _S2_TAG.fullmatch(tag):
        return "sentinel2"
    log.info("SENSOR tag %r names no known sensor; the sensor is judged from the bands", tag)
    return None


def read(path: Path, sensor: Any | None = None, chunks: int = 1024, *,
         prefer: str | None = None) -> list[xr.DataArray]:
    """``prefer``: the drone camera to take where the band names fit more than one."""
    try:
        with rasterio.open(path) as src:
            tags = src.tags()
            descriptions = src.descriptions
            scales, offsets, nodata = src.scales, src.offsets, src.nodata
            dtypes = src.dtypes
            alpha = marked_alpha(src)
            alpha = None if alpha is None else alpha - 1     # 0-based, as ``keep``
            masked = has_mask_band(src)
            pixel_m = pixel_metres(src.transform, src.crs)
            # the first and the last block: a corrupt or truncated file fails here with the
            # file's name, not deep in a compute (nor as "no CRS": a cut loses the GeoKeys)
            check_ends(src, path)
            if src.crs is None:
                raise InputError(f"{path}: no CRS; georeference the file (e.g. gdal_edit.py "
                                 "-a_srs EPSG:nnnn)")
    except RasterioIOError as exc:
        raise InputError(f"{path}: not a readable raster ({exc})") from None
    unused = [i for i, d in enumerate(descriptions) if d and d.strip().upper() in _UNUSED_BANDS]
    if unused:
        log.info("%s: layer(s) %s not used (B10: cirrus, top of atmosphere; the others are "
                 "not reflectance bands)", path.name, ", ".join(descriptions[i] for i in unused))
    keep = [i for i in range(len(descriptions)) if i not in unused and i != alpha]
    if len(keep) < len(descriptions):
        descriptions, dtypes = tuple(descriptions[i] for i in keep), [dtypes[i] for i in keep]
        scales, offsets = [scales[i] for i in keep], [offsets[i] for i in keep]
    names = band_names(path, descriptions, sensor, pixel_m, prefer)
    if len(set(names)) != len(names):
        raise InputError(f"{path}: duplicate band names {names}")
    unscaled = [n for n, d, sc, off in zip(names, dtypes, scales, offsets)
                if n not in CATEGORICAL_BANDS and np.issubdtype(np.dtype(d), np.integer)
                and sc == 1 and off == 0]
    if unscaled:  # DN read as reflectance would be thousands: say so instead of guessing
        raise InputError(f"{path}: integer bands {unscaled} have no GDAL scale; set it so "
                         "that reflectance = DN * scale + offset (e.g. gdal_edit.py -scale "
                         "0.0001 for Sentinel-2 DN)")
    reflectance = [k for k, n in zip(keep, names) if n not in CATEGORICAL_BANDS]
    check_float_reflectance(path, [k + 1 for k in reflectance],
                            None if alpha is None else alpha + 1)
    with warnings.catch_warnings():  # rioxarray warns when offsets differ across bands
        warnings.simplefilter("ignore", UserWarning)
        raw = rioxarray.open_rasterio(path, chunks={"band": -1, "y": chunks, "x": chunks},
                                      mask_and_scale=False, lock=False)
    opaque = None if alpha is None else raw.isel(band=alpha, drop=True) != 0  # alpha 0: no data
    if len(keep) < raw.sizes["band"]:
        raw = raw.isel(band=keep)
    raw = raw.assign_coords(band=names)
    data = raw.astype("float32")
    categorical = np.isin(names, CATEGORICAL_BANDS)
    if nodata is not None:
        invalid = np.isnan(data) if np.isnan(nodata) else (raw == nodata)
        if nodata == 0 and categorical.any():
            # SCL 0 is the class 'no data', which the masks drop; as NaN it read as 'no SCL'
            # and the pixel was judged by the spectral test alone, so it counted as clear
            invalid = invalid & ~xr.DataArray(categorical, dims="band",
                                              coords={"band": names})
        data = data.where(~invalid)
    else:
        # no declared nodata: DN 0 of an integer reflectance band is no data, as in Sentinel-2
        # products and drone exports (reflectance 0 is no surface; with the -0.1 offset of
        # baseline >= 04.00 it would read as -0.1)
        dn = np.array([np.issubdtype(np.dtype(d), np.integer) for d in dtypes]) & ~categorical
        if dn.any():
            data = data.where(~((raw == 0) & xr.DataArray(dn, dims="band",
                                                           coords={"band": names})))
    scale = xr.DataArray(np.where(categorical, 1.0, scales).astype("float32"), dims="band",
                         coords={"band": names})
    offset = xr.DataArray(np.where(categorical, 0.0, offsets).astype("float32"), dims="band",
                          coords={"band": names})
    data = (data * scale + offset).astype("float32")
    if opaque is not None:
        data = data.where(opaque)
    if masked:
        data = data.where(mask_band(path, raw))
    if opaque is None and not masked and not categorical.all():
        # the collar of a clipped mosaic, 0 in every reflectance band, is no data whatever the
        # declared nodata (a float drone mosaic's collar was scored and flagged)
        zero = (raw.sel(band=[n for n, c in zip(names, categorical) if not c]) == 0).all("band")
        data = data.where(~zero | xr.DataArray(categorical, dims="band",
                                                coords={"band": names}))
    if not categorical.all():
        fill = (data < _FILL_BELOW) & xr.DataArray(~categorical, dims="band",
                                                    coords={"band": names})
        data = data.where(~fill)
    data = data.rio.write_crs(raw.rio.crs).rio.write_transform(raw.rio.transform())
    data.attrs = {
        "time": acquisition_time(path, tags),
        "sensor": _sensor_tag(tags) or getattr(sensor, "name", None)
                  or _sensor_of(names, pixel_m, prefer),
        "sun_zenith": _float_tag(tags, "SUN_ZENITH"),
        "sun_azimuth": _float_tag(tags, "SUN_AZIMUTH"),
        "source": str(path),
    }
    return [data]
