"""Drone orthomosaics: stacked multispectral, per-band files, plain RGB.

Inputs
------
* a stacked multispectral orthomosaic (one GeoTIFF, one band per camera band): bands are named
  by their descriptions (``Blue``, ``NIR``, ``Red edge-705``, ...) matched against the sensor
  file's names and aliases, else taken in the sensor file's ``stack_order``. One extra last
  band is taken as alpha when the count is one more than the sensor's.
* per-band orthomosaics (``*_blue.tif``, ``*_nir.tif``, ``result_Red.tif``,
  ``*_transparent_reflectance_red edge.tif``, ...): the file stem ends with a band name or
  alias; files are grouped by the stem before it, one acquisition per group. A per-band file
  with two bands (Pix4D) is value + alpha.
* plain RGB orthomosaics: 3 or 4 bands of uint8 (the 4th is alpha: 0 = no data; without
  alpha, pixels 0 in all three bands are the black collar, no data), or of uint16 when the file
  says it is RGB (``_rgb_layout``: bands named red, green, blue or unnamed, an alpha band
  marked as one). Visible only, and display brightness (/ 255, / 65535), not reflectance.

Sensor
------
Given by the caller (a :class:`~pipeline.sensors.SensorSpec` or a name), else recognised from
the file's tags (``TIFFTAG_MODEL``, ``TIFFTAG_SOFTWARE``, ...) and names (``p4m``, ``m3m``,
``rededge``, ``dual``), from band descriptions that are all canonical names (the input
contract's: blue, green, red, rededge2, nir fits the P4M and the RedEdge-MX, told apart by
pixel size or the model's camera), from
ten bands (RedEdge-MX Dual), from the band set (no blue and a red edge: Mavic 3M; DJI Terra's
``result_*`` with blue: P4M) or uint8 RGB. Otherwise the reader raises SensorNeeded, asking
for band names in the file (``inspect`` adds its ``--sensor``): the camera decides the stack
order of an unnamed stack, so it must be known.

Reflectance
-----------
``scaling`` of the sensor file: ``float`` as is; ``uint16_32768`` / 32768; ``dn10000`` / 10000;
``auto`` decides by the data type: float (DJI Terra, Pix4D) as is, uint8 / 255, uint16 RGB
/ 65535 (display brightness), other integers by ``_integer_scaling``: Agisoft Metashape's
32768 = 1.0 when its software tag says so; without it a file whose values exceed Metashape's
range is refused, else read as Metashape's with a warning. A GDAL scale/offset in the file wins
over all of these. No data: the file's nodata value, NaN, alpha 0, float values below -0.5 (the
-10000 / -32767 fill of some tools) and, outside RGB, integer 0 and uint16 65535 (saturated)
become NaN.

Date
----
``ACQUISITION_DATE`` tag, else a date in the file name (``YYYYMMDD``, ``YYYY-MM-DD``,
``YYYY_MM_DD``), else in a parent folder's name, else ``TIFFTAG_DATETIME`` (with a warning: it
is often the processing date). Otherwise the reader asks for a date in the file name.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import xarray as xr
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError

from pipeline.bands import CATEGORICAL_BANDS, canonical_name, order_bands
from pipeline.config import DRONE_PIXEL_M
from pipeline.errors import InputError, SensorNeeded
from pipeline.grid import Grid, pixel_metres, reflectance_resampling
from pipeline.readers._raster import (
    band_samples,
    check_ends,
    check_float_reflectance,
    has_mask_band,
    high_percentile,
    marked_alpha,
    mask_band,
    open_lazy,
)
from pipeline.readers.multiband import acquisition_time
from pipeline.sensors import (
    SensorBand,
    SensorSpec,
    drone_camera_for_names,
    drone_cameras,
    load_sensor,
    normalise_band_name,
)

log = logging.getLogger(__name__)

_SUFFIXES = {".tif", ".tiff"}
#: Words in tags or names that identify a camera -> sensor file name (checked in order).
_CAMERA_HINTS: tuple[tuple[str, str], ...] = (
    ("dual", "rededge-mx-dual"), ("p4m", "p4m"), ("p4 multispectral", "p4m"),
    ("phantom 4 multispectral", "p4m"), ("m3m", "mavic3m"), ("mavic3m", "mavic3m"),
    ("mavic 3m", "mavic3m"), ("mavic 3 multispectral", "mavic3m"), ("rededge", "rededge-mx"),
    ("micasense", "rededge-mx"),
)
#: tags whose values may name the camera (EXIF/XMP-style Model, Make, Camera, Sensor, ...)
_CAMERA_TAG = re.compile(r"model|make|camera|sensor|platform|device|software|product",
                         re.IGNORECASE)
_FLOAT_FILL_BELOW = -0.5
#: index maps drone software writes beside a flight's band files (DJI Terra: result_NDVI.tif)
INDEX_MAPS = frozenset({"NDVI", "NDRE", "GNDVI", "LCI", "OSAVI", "SAVI", "EVI", "NDWI"})
#: The bands of a plain RGB orthomosaic (the rgb sensor's).
_VISIBLE = frozenset({"red", "green", "blue"})
_RGB_INTERP = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
#: Metashape writes reflectance x 32768. A 99th percentile above reflectance 1.5 (the drone
#: masks' bound for an implausible value) cannot be that: the file holds something else.
_METASHAPE_P99_MAX = 1.5 * 32768


@functools.cache
def _shipped_aliases() -> frozenset[str]:
    """Band tokens of per-band file names: the shipped cameras' band names and aliases, and
    the canonical names of their bands (``flight_rededge2.tif``, as the input contract names
    the P4M's red edge)."""
    out: set[str] = set()
    for spec in drone_cameras():
        for b in spec.bands + spec.dropped:
            out.add(normalise_band_name(b.name))
            out.update(normalise_band_name(a) for a in b.aliases)
            if b.canonical:
                out.add(b.canonical)
    return frozenset(out)


def _all_aliases() -> set[str]:
    return set(_shipped_aliases())


def _split_band_stem(stem: str, aliases: set[str]) -> tuple[str, str] | None:
    """(group prefix, band token) if the stem ends with ``_<alias>``, else None."""
    s = normalise_band_name(stem)
    best: tuple[str, str] | None = None
    for a in aliases:
        if len(a) < 2 and not s.startswith("result_"):
            continue  # one-letter aliases (b, g, r, n) only in DJI Terra's result_X names
        if s == a:
            cand = ("", a)
        elif s.endswith("_" + a):
            cand = (s[: -len(a) - 1], a)
        else:
            continue
        if best is None or len(cand[1]) > len(best[1]):
            best = cand
    return best


def _per_band_groups(folder: Path, aliases: set[str]) -> dict[str, dict[str, Path]]:
    groups: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in _SUFFIXES or p.name.startswith("."):
            continue
        hit = _split_band_stem(p.stem, aliases)
        if hit:
            groups.setdefault(hit[0], {})[hit[1]] = p
    return {k: v for k, v in groups.items() if len(v) >= 2}


def _pixel_is_drone(src: rasterio.DatasetReader) -> bool:
    return pixel_metres(src.transform, src.crs) < DRONE_PIXEL_M


def can_read(path: Path) -> bool:
    path = Path(path)
    try:
        if path.is_dir():
            return bool(_per_band_groups(path, _all_aliases()))
        if not (path.is_file() and path.suffix.lower() in _SUFFIXES):
            return False
        with rasterio.open(path) as src:
            if "ACQUISITION_DATE" in src.tags():
                return False  # the input contract: pipeline.readers.multiband
            if src.count in (3, 4) and all(d == "uint8" for d in src.dtypes):
                return True
            if not _pixel_is_drone(src):
                return False
        return True
    except (OSError, RasterioIOError):
        return False


def read(path: Path, sensor: Any | None = None, chunks: int = 1024, *,
         prefer: str | None = None) -> list[xr.DataArray]:
    """``prefer``: the camera to take where the band names fit more than one (a model's)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    spec = _as_spec(sensor)
    if spec is not None and spec.kind != "drone":
        raise InputError(f"{path}: a drone orthomosaic, but the sensor given is {spec.name!r} "
                         f"(a {spec.kind}); give the camera (--sensor "
                         f"{' | '.join(s.name for s in drone_cameras())})")
    aliases = _all_aliases() | (_aliases_of(spec) if spec else set())
    if path.is_dir():
        groups = _per_band_groups(path, aliases)
        if not groups:
            raise InputError(f"{path}: no per-band orthomosaics (*_blue.tif, *_nir.tif, ...)")
        return [_read_group(path / (prefix or "result"), files, spec, chunks, prefer)
                for prefix, files in sorted(groups.items())]
    hit = _split_band_stem(path.stem, aliases)
    if hit is not None:
        groups = _per_band_groups(path.parent, aliases)
        if hit[0] in groups:
            return [_read_group(path.parent / (hit[0] or "result"), groups[hit[0]], spec,
                                chunks, prefer)]
    prefix, _, token = normalise_band_name(path.stem).rpartition("_")
    if token.upper() in INDEX_MAPS and prefix in _per_band_groups(path.parent, aliases):
        # flight/map/*.tif brings DJI Terra's index maps beside the band files (given the
        # folder, they are left out): it was "cannot tell which camera took it"
        log.warning("%s: an index map (%s) beside the flight's band files: left out", path,
                    token.upper())
        return []
    return [_read_stacked(path, spec, chunks, prefer)]


# ---------------------------------------------------------------------------------------------
def _as_spec(sensor: Any | None) -> SensorSpec | None:
    if sensor is None or isinstance(sensor, SensorSpec):
        return sensor
    return load_sensor(str(getattr(sensor, "name", sensor)))


def _aliases_of(spec: SensorSpec) -> set[str]:
    return {normalise_band_name(a) for b in spec.bands + spec.dropped for a in (b.name, *b.aliases)}


@dataclass
class _Layer:
    path: Path
    band_index: int          # 1-based band in the file
    alpha_index: int | None  # 1-based alpha band in the file


def _guess_sensor(path: Path, tags: dict[str, str], names: list[str], count: int,
                  rgb: bool, pixel_m: float | None = None,
                  prefer: str | None = None) -> SensorSpec:
    if rgb:
        return load_sensor("rgb")
    data = [n for n in names if normalise_band_name(n) != "alpha"
            and canonical_name(n) not in CATEGORICAL_BANDS]
    contract = bool(data) and all(canonical_name(n) for n in data)
    if contract:  # bands named as the input contract names them: the names decide
        spec = drone_camera_for_names(data, pixel_m, prefer)
        if spec is not None:
            return spec
    # a camera named in the file name, its folder's, or a tag that describes the camera (a
    # whole word: 'individual_flights' is no Dual, a NOTE listing band names no RedEdge)
    text = " ".join([*(v for k, v in tags.items() if _CAMERA_TAG.search(k)), path.name,
                     path.parent.name]).lower()
    for hint, name in _CAMERA_HINTS:
        if re.search(rf"(?<![a-z0-9]){re.escape(hint)}(?![a-z0-9])", text):
            return load_sensor(name)
    normed = {normalise_band_name(n) for n in names}
    software = " ".join(v for k, v in tags.items() if "software" in k.lower()).lower()
    if re.search(r"(?<![a-z0-9])dji(?![a-z0-9])", software) and not prefer:
        # DJI Terra exports DJI's cameras only: with a blue band the P4 Multispectral, else
        # the Mavic 3M (by pixel size a P4M flight flown higher was read as a RedEdge-MX)
        return load_sensor("p4m" if normed & {"blue", "b"} else "mavic3m")
    if data and not contract:  # named by the camera's own band names
        spec = drone_camera_for_names(data, pixel_m, prefer)
        if spec is not None:
            return spec
    if count >= 10:
        return load_sensor("rededge-mx-dual")
    has_blue = bool(normed & {"blue", "b"})
    has_re = bool(normed & {"rededge", "red_edge", "re", "reg"})
    if normed and has_re and not has_blue and normed & {"nir", "n"}:
        return load_sensor("mavic3m")
    if path.name.lower().startswith("result") and has_blue and has_re:
        return load_sensor("p4m")  # DJI Terra's per-band names
    if contract:   # every band named, by names no shipped camera has all of
        raise SensorNeeded(f"{path}: its bands ({', '.join(data)}) are not those of a drone "
                           "camera poppyscan knows (" + "; ".join(
                               f"{c.name}: {', '.join(b for b in c.band_order if b)}"
                               for c in drone_cameras()) + "); describe the camera in a "
                           "sensor file (sensor: my-camera.yaml in a --config, "
                           "docs/inputs.md)", [c.name for c in drone_cameras()])
    raise SensorNeeded(f"{path}: cannot tell which camera took it; name the bands in the "
                       "file (band descriptions: the camera's band names or canonical names "
                       "such as blue, green, red, rededge2, nir) or put the camera in the file "
                       "name (p4m, m3m, rededge, dual); a plain RGB orthomosaic (the rgb sensor): "
                       "bands red, green, blue", [s.name for s in drone_cameras()])


def _band_for(spec: SensorSpec, token: str) -> SensorBand | None:
    try:
        return spec.band(token)
    except KeyError:
        return None


def _read_group(label: Path, files: dict[str, Path], spec: SensorSpec | None,
                chunks: int, prefer: str | None) -> xr.DataArray:
    first = next(iter(files.values()))
    tags, pixel_m = _tags(first)
    if spec is None:
        spec = _guess_sensor(label, tags, list(files), len(files), rgb=False, pixel_m=pixel_m,
                             prefer=prefer)
    layers: dict[str, _Layer] = {}
    for token, f in files.items():
        band = _band_for(spec, token)
        if band is None:
            log.warning("%s: band %r is not a %s band; ignored", f, token, spec.name)
            continue
        if band.canonical is None:
            log.info("%s: %s band dropped (%s)", f, spec.name, band.name)
            continue
        with rasterio.open(f) as src:
            alpha = _alpha_index(src)
        layers[band.canonical] = _Layer(f, 1, alpha)
    if not layers:
        raise InputError(f"{label}: none of {sorted(files)} is a {spec.name} band")
    return _assemble(label, layers, spec, tags, chunks)


def _alpha_index(src: rasterio.DatasetReader) -> int | None:
    """The band marked alpha (``marked_alpha``), else the second of two bands."""
    marked = marked_alpha(src)
    if marked is not None:
        return marked
    if src.count == 2:
        return 2
    return None


def _tags(path: Path) -> tuple[dict[str, str], float]:
    """The file's tags and its pixel size in metres."""
    try:
        with rasterio.open(path) as src:
            return ({k: str(v) for k, v in src.tags().items()},
                    pixel_metres(src.transform, src.crs))
    except RasterioIOError as exc:
        raise InputError(f"{path}: not a readable raster ({exc})") from None


def _read_stacked(path: Path, spec: SensorSpec | None, chunks: int,
                  prefer: str | None) -> xr.DataArray:
    try:
        with rasterio.open(path) as src:
            tags = {k: str(v) for k, v in src.tags().items()}
            count, dtypes = src.count, src.dtypes
            descriptions = list(src.descriptions)
            alpha = _alpha_index(src) if count > 2 else None
            rgb, alpha = _rgb_layout(src, alpha)
            check_ends(src, path)                 # cut short: say so, not "no CRS"
            if src.crs is None:
                raise InputError(f"{path}: no CRS; georeference the orthomosaic")
            pixel_m = pixel_metres(src.transform, src.crs)
    except RasterioIOError as exc:
        raise InputError(f"{path}: not a readable raster ({exc})") from None
    # a sensor for every image (the config's sensor file) does not make an RGB orthomosaic
    # among them multispectral; a 16-bit file keeps a sensor of three bands (its own camera)
    if spec is None or (rgb and spec.name != "rgb" and not any(descriptions)
                        and (dtypes[0] == "uint8" or len(spec.stack_order) != 3)):
        spec = _guess_sensor(path, tags, [d for d in descriptions if d], count, rgb, pixel_m,
                             prefer)
    if rgb and dtypes[0] == "uint16" and not any(descriptions) and _visible_only(spec):
        log.info("%s: three unnamed 16-bit bands read as red, green, blue display brightness "
                 "(65535 = white); name the bands in the file if they are not", path)
    data_bands = [i for i in range(1, count + 1) if i != alpha
                  and canonical_name(descriptions[i - 1] or "") not in CATEGORICAL_BANDS]
    named = [_band_for(spec, descriptions[i - 1]) if descriptions[i - 1] else None
             for i in data_bands]
    unknown = [descriptions[i - 1] for i, b in zip(data_bands, named)
               if descriptions[i - 1] and b is None]
    if unknown and len(unknown) < len(named):
        # some bands are named and others are not this camera's: never fall back to the
        # camera's stack order (the named bands would be read as whatever sits there)
        raise SensorNeeded(f"{path}: bands {unknown} are not {spec.name} bands; name every "
                           f"band by the camera's band names or canonical names "
                           f"({', '.join(c for c in spec.band_order if c)})",
                           [c.name for c in drone_cameras()])
    if all(b is not None for b in named):
        bands = named
    elif (alpha is None and len(named) > 1 and named[-1] is None and data_bands[-1] == count
          and all(b is not None for b in named[:-1])):
        # every band named but an unnamed last one: the names hold, the last is the mask
        # (the camera's stack order in its place swapped bands the file named: NIR read as
        # blue, with no word)
        log.info("%s: the last band has no name: read as the alpha (mask) band", path)
        alpha = count
        data_bands, bands = data_bands[:-1], named[:-1]
    elif len(data_bands) == len(spec.stack_order):
        bands = _stack_bands(path, spec, data_bands, alpha)
    elif len(data_bands) == len(spec.stack_order) + 1 and alpha is None:
        alpha = count
        data_bands = data_bands[:-1]
        bands = _stack_bands(path, spec, data_bands, alpha)
    else:
        raise SensorNeeded(f"{path}: {len(data_bands)} bands do not match {spec.name} "
                           f"({len(spec.stack_order)} bands: {', '.join(spec.stack_order)}); "
                           "name the bands in the file", [c.name for c in drone_cameras()])
    layers: dict[str, _Layer] = {}
    for i, b in zip(data_bands, bands, strict=True):
        if b is not None and b.canonical is not None:
            layers[b.canonical] = _Layer(path, i, alpha)
    return _assemble(path, layers, spec, tags, chunks)


def _stack_bands(path: Path, spec: SensorSpec, data_bands: list[int],
                 alpha: int | None) -> list[SensorBand]:
    """The bands of an unnamed stack, in the camera's stack order. A RedEdge-MX stack comes
    in band-number order (blue, green, red, NIR, red edge: Pix4D) or in wavelength order
    (red edge before NIR: MicaSense's own Atlas), and nothing in the file says which: NIR
    is the brighter of the two over vegetation and soil alike, so a fourth band clearly
    darker than the fifth is red edge (read as NIR, every index using either was wrong)."""
    bands = [spec.band(n) for n in spec.stack_order]
    if spec.name != "rededge-mx":
        return bands
    nir, edge = band_samples(path, [data_bands[3], data_bands[4]], alpha, paired=True)
    if nir.size >= 100 and float(np.median(nir)) < 0.9 * float(np.median(edge)):
        log.warning("%s: five unnamed RedEdge-MX bands whose 4th is darker than the 5th: read "
                    "in wavelength order (blue, green, red, red edge, NIR, as MicaSense Atlas "
                    "writes them); name the bands in the file to be sure", path)
        return [*bands[:3], bands[4], bands[3]]
    log.info("%s: five unnamed RedEdge-MX bands read in band-number order (blue, green, red, "
             "NIR, red edge); name the bands in the file to be sure", path)
    return bands


def _rgb_layout(src: rasterio.DatasetReader, alpha: int | None) -> tuple[bool, int | None]:
    """(whether a stacked file is a plain RGB orthomosaic, its alpha band).

    uint8 with three bands, or four (the fourth is alpha), as before. uint16 only when the file
    says so: three data bands named red, green and blue (any order, the rgb sensor's names) or
    not named at all, plus at most an alpha band marked as one (colour interpretation or the
    description ``alpha``; in a photometric-RGB file the fourth band), last. Four unnamed
    uint16 bands are not guessed: a Mavic 3M stack has four bands too."""
    count, dtypes = src.count, src.dtypes
    if count not in (3, 4):
        return False, alpha
    if all(d == "uint8" for d in dtypes):
        fourth = src.descriptions[3] if count == 4 else None
        if count == 4 and fourth and canonical_name(fourth) not in (None, "red", "green",
                                                                     "blue"):
            # an RGB + NIR export in 8 bits lost its NIR to a mask (GDAL marks a fourth
            # 8-bit band alpha by default): the black collar was scored as ground
            raise InputError(f"{src.name}: an 8-bit image whose 4th band is '{fourth}', not "
                             "alpha: 8-bit values hold no reflectance; export reflectance "
                             "(float, or 16-bit with its scale), or name the 4th band alpha")
        return True, 4 if count == 4 and alpha is None else alpha
    if not all(d == "uint16" for d in dtypes):
        return False, alpha
    if alpha is not None and alpha != count:
        return False, alpha
    descriptions, interp = list(src.descriptions), tuple(src.colorinterp)
    rgb_alpha = alpha
    if count == 4 and rgb_alpha is None:
        # band 4 is alpha only when the file says so (an RGB + NIR stack in photometric RGB
        # would otherwise lose its NIR to a mask)
        if (descriptions[3] and normalise_band_name(descriptions[3]) == "alpha") \
                or (interp[:3] == _RGB_INTERP and interp[3] == ColorInterp.alpha):
            rgb_alpha = 4
        else:
            return False, alpha
    names = [descriptions[i - 1] for i in range(1, count + 1) if i != rgb_alpha]
    if len(names) != 3:
        return False, alpha
    if not any(names):
        return True, rgb_alpha
    rgb = next(c for c in drone_cameras() if c.name == "rgb")
    bands = [_band_for(rgb, n) if n else None for n in names]
    if all(b is not None for b in bands) and {b.canonical for b in bands} == _VISIBLE:
        return True, rgb_alpha
    return False, alpha


def _visible_only(spec: SensorSpec) -> bool:
    """A camera of visible bands only (the rgb sensor, or one's own RGB camera file)."""
    return set(spec.canonical.values()) <= _VISIBLE


def _open(path: Path, chunks: int) -> xr.DataArray:
    return open_lazy(path, chunks, "orthomosaic GeoTIFF")


def _scale(raw: xr.DataArray, mode: str, nodata: float | None,
           alpha: xr.DataArray | None, gdal: tuple[float, float] = (1.0, 0.0)) -> xr.DataArray:
    """Reflectance (or display brightness) of one band read as ``mode`` (``_mode``), no data
    NaN; the band's GDAL scale/offset ``gdal``, when it has one, wins over the mode."""
    dtype = np.dtype(raw.dtype)
    data = raw.astype("float32")
    valid = xr.ones_like(raw, dtype=bool)
    if nodata is not None:
        valid &= ~np.isnan(data) if np.isnan(nodata) else (raw != nodata)
    if alpha is not None:
        valid &= alpha != 0
    if np.issubdtype(dtype, np.floating):
        valid &= np.isfinite(data) & (data >= _FLOAT_FILL_BELOW)
    elif dtype == np.uint8 or mode == "uint16_65535":
        pass  # 0 is a colour in RGB (65535 is white); no data comes from alpha or nodata
    else:
        valid &= raw != 0
        if dtype == np.uint16:
            valid &= raw != 65535
    data = data.where(valid)
    scale_f, offset_f = gdal
    if (scale_f, offset_f) != (1.0, 0.0):
        return data * np.float32(scale_f) + np.float32(offset_f)
    divisor = {"float": 1.0, "uint16_32768": 32768.0, "dn10000": 10000.0,
               "uint8_255": 255.0, "uint16_65535": 65535.0}[mode]
    return data / np.float32(divisor) if divisor != 1.0 else data


def _mode(dtype: np.dtype, spec: SensorSpec, integer_mode: str | None) -> str:
    """The sensor file's scaling, or for ``auto`` by the data type: float as is, uint8 / 255,
    other integers as ``_integer_scaling`` decided for the product."""
    if spec.scaling != "auto":
        return spec.scaling
    if np.issubdtype(dtype, np.floating):
        return "float"
    if dtype == np.uint8:
        return "uint8_255"
    assert integer_mode is not None
    return integer_mode


def _integer_scaling(layers: dict[str, _Layer], spec: SensorSpec,
                     tags: dict[str, str]) -> str | None:
    """How ``scaling: auto`` reads the integer (not uint8) bands of one product; None when it
    has none.

    * a camera of visible bands only (RGB): display brightness, 65535 = 1.0, as uint8 is / 255;
    * a ``TIFFTAG_SOFTWARE`` naming Agisoft Metashape, or a GDAL scale on every integer band:
      Metashape's 32768 = 1.0 (a GDAL scale is applied instead where there is one);
    * otherwise the unit is not written in the file. Values a few windows spread over the file
      hold: a 99th percentile above 1.5 x 32768 (reflectance 1.5) cannot be Metashape's, and
      the file is refused with what to set; below it, the file is read as Metashape's with a
      warning saying how it reads and how to change the scaling."""
    files = _by_file(layers)
    unscaled: list[tuple[Path, list[int], int | None]] = []
    dtype = None
    for path, group in files.items():
        with rasterio.open(path) as src:
            ints = [g.band_index for g in group
                    if np.issubdtype(np.dtype(src.dtypes[g.band_index - 1]), np.integer)
                    and src.dtypes[g.band_index - 1] != "uint8"]
            if ints:
                dtype = np.dtype(src.dtypes[ints[0] - 1])
            bare = [b for b in ints if (src.scales[b - 1], src.offsets[b - 1]) == (1.0, 0.0)]
            if bare:
                unscaled.append((path, bare, group[0].alpha_index))
    if dtype is None:
        return None
    if _visible_only(spec) and dtype == np.uint16:
        return "uint16_65535"
    software = tags.get("TIFFTAG_SOFTWARE", "").lower()
    if not unscaled or "metashape" in software or "agisoft" in software:
        return "uint16_32768"
    first = unscaled[0][0]
    where = (str(first) if len(files) == 1 else
             f"{first} (and {len(files) - 1} more band files)")
    p99 = max((v for f, b, a in unscaled if (v := high_percentile(f, b, a)) is not None),
              default=None)
    if p99 is not None and p99 > _METASHAPE_P99_MAX:
        raise InputError(
            f"{where}: {dtype} values up to {p99:.0f} (99th percentile) cannot be Metashape "
            "reflectance (32768 = 1.0) and the file has no GDAL scale: give it one "
            "(gdal_edit.py -scale 0.0001 for reflectance x 10000) or read it with a sensor "
            "file whose `scaling` names the unit (dn10000 or uint16_32768; the config's "
            "`sensor:`), see docs/inputs.md (Reflectance scaling); raw camera DN must be "
            "calibrated to reflectance first")
    seen = ("" if p99 is None else f" (99th percentile {p99 / 32768:.2f}; "
            f"{p99 / 10000:.2f} if the unit is reflectance x 10000)")
    log.warning("%s: %s without a GDAL scale or a Metashape TIFFTAG_SOFTWARE, read as "
                "Metashape's reflectance x 32768%s; if it is not Metashape's, read it with a "
                "sensor file whose `scaling` names the unit (dn10000: x 10000; the config's "
                "`sensor:`) or give it a GDAL scale, see docs/inputs.md (Reflectance scaling)",
                where, dtype, seen)
    return "uint16_32768"


def _check_float_reflectance(layers: dict[str, _Layer], spec: SensorSpec) -> None:
    """``scaling: auto`` reads float bands without a GDAL scale as reflectance 0-1: refused
    when they hold something else (:func:`check_float_reflectance`)."""
    if spec.scaling != "auto":
        return
    for path, group in _by_file(layers).items():
        check_float_reflectance(path, [g.band_index for g in group], group[0].alpha_index)


def _by_file(layers: dict[str, _Layer]) -> dict[Path, list[_Layer]]:
    files: dict[Path, list[_Layer]] = {}
    for layer in layers.values():
        files.setdefault(layer.path, []).append(layer)
    return files


def _assemble(label: Path, layers: dict[str, _Layer], spec: SensorSpec, tags: dict[str, str],
              chunks: int) -> xr.DataArray:
    opened: dict[Path, xr.DataArray] = {}
    mask_of: dict[Path, xr.DataArray] = {}
    out: dict[str, xr.DataArray] = {}
    integer_mode = _integer_scaling(layers, spec, tags) if spec.scaling == "auto" else None
    _check_float_reflectance(layers, spec)
    ref: xr.DataArray | None = None
    for canonical in order_bands(list(layers)):
        layer = layers[canonical]
        if layer.path not in opened:
            opened[layer.path] = _open(layer.path, chunks)
        da = opened[layer.path]
        if da.rio.crs is None:
            raise InputError(f"{layer.path}: no CRS; georeference the orthomosaic")
        with rasterio.open(layer.path) as src:   # per band: rioxarray drops unequal ones
            nodata = src.nodatavals[layer.band_index - 1]
            gdal = (src.scales[layer.band_index - 1], src.offsets[layer.band_index - 1])
            masked = has_mask_band(src)
        raw = da.isel(band=layer.band_index - 1, drop=True)
        alpha = (da.isel(band=layer.alpha_index - 1, drop=True)
                 if layer.alpha_index else None)
        mode = _mode(np.dtype(raw.dtype), spec, integer_mode)
        refl = _scale(raw, mode, nodata, alpha, gdal).astype("float32")
        if masked:   # one mask per file, whichever of its bands asks (a stack: all of them)
            if layer.path not in mask_of:
                mask_of[layer.path] = mask_band(layer.path, raw)
            refl = refl.where(mask_of[layer.path])
        refl.attrs = {}
        if ref is None:
            ref = refl
        elif (refl.shape != ref.shape or refl.rio.transform() != ref.rio.transform()
              or refl.rio.crs != ref.rio.crs):
            refl = _reproject(refl, ref, label, layer.path.name, next(iter(out)))
        out[canonical] = refl.drop_vars("spatial_ref", errors="ignore")
    assert ref is not None
    names = list(out)
    stacked = xr.concat([out[n] for n in names], dim="band", join="override")
    stacked = stacked.assign_coords(band=names).transpose("band", "y", "x")
    stacked = stacked.chunk({"band": -1, "y": chunks, "x": chunks}).astype("float32")
    if not _visible_only(spec) or not any(layer.alpha_index for layer in layers.values()):
        # the collar, 0 in every band, is no data: ground is never black in every band at
        # once (RGB without alpha; a float multispectral mosaic with no nodata declared, whose
        # collar was scored and flagged; a mask band, too, is read above)
        stacked = stacked.where((stacked != 0).any("band"))
    stacked = stacked.rio.write_crs(ref.rio.crs).rio.write_transform(ref.rio.transform())
    stacked.attrs = {
        "time": acquisition_time(label, tags, folders=True), "sensor": spec.name,
        "sun_zenith": float("nan"), "sun_azimuth": float("nan"),
        "spacecraft": "", "processing_baseline": "", "product_type": "orthomosaic",
        "source": str(label if label.exists() else label.parent),
    }
    return stacked


def _reproject(da: xr.DataArray, ref: xr.DataArray, label: Path, name: str,
               ref_name: str) -> xr.DataArray:
    """A band file on another grid than the first band's, onto that grid
    (``pipeline.grid.reflectance_resampling``: nearest, or averaged when finer)."""
    from odc.geo.xr import xr_reproject

    dst = Grid.of(ref)
    how = reflectance_resampling(Grid.of(da), dst)
    log.info("%s: %s is on another grid; reprojected (%s) onto %s's", label, name, how,
             ref_name)
    out = xr_reproject(da.odc.assign_crs(da.rio.crs.to_wkt()), dst.geobox(), resampling=how,
                       dst_nodata=np.nan)
    dims = tuple(out.odc.spatial_dims)
    if dims != ("y", "x"):
        out = out.rename({dims[0]: "y", dims[1]: "x"})
    return out.assign_coords(y=ref["y"], x=ref["x"]).astype("float32")


