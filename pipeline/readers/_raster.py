"""Opening one raster file lazily, with one error rule for every reader.

Pixels are read lazily, inside a dask compute, so a file whose header is fine but whose
compressed blocks are damaged fails only there: ``read_failure`` turns that rasterio error
into an InputError naming the file, ``read_pixels`` does it for one compute.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import dask.array as darr
import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from pipeline.errors import InputError

T = TypeVar("T")


def open_lazy(path: Path | str, chunks: int, what: str = "raster") -> xr.DataArray:
    """``rioxarray.open_rasterio`` chunked one band at a time, raw DN (no mask or scale);
    an unreadable file or one with subdatasets is an InputError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. offsets that differ per band
            da = rioxarray.open_rasterio(path, chunks={"band": 1, "y": chunks, "x": chunks},
                                         mask_and_scale=False, lock=False)
    except (RasterioIOError, OSError) as exc:
        raise InputError(f"{path}: not a readable raster ({exc})") from None
    if not isinstance(da, xr.DataArray):
        raise InputError(f"{path}: has subdatasets; expected one {what}")
    return da


def marked_alpha(src) -> int | None:
    """The 1-based band an open dataset marks as alpha, by colour interpretation or by the
    description ``alpha``, else None."""
    for i, (ci, d) in enumerate(zip(src.colorinterp, src.descriptions), start=1):
        if ci == ColorInterp.alpha or (d or "").strip().lower() == "alpha":
            return i
    return None


def has_mask_band(src) -> bool:
    """Whether an open dataset's no data is a GDAL mask band of its own (an internal TIFF mask
    or a ``.msk`` file: what ``gdalwarp``/``gdal_translate`` write with
    ``GDAL_TIFF_INTERNAL_MASK``), not a nodata value or an alpha band (read as such)."""
    flags = src.mask_flag_enums[0] if src.count else []
    return (MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
            and MaskFlags.nodata not in flags)


def mask_band(path: Path | str, like: xr.DataArray) -> xr.DataArray:
    """The file's mask band as a lazy boolean 'has data' (y, x) array on the chunks and
    coordinates of ``like`` (a band of the same file, read with ``open_lazy``)."""
    path = str(path)

    def block(block_info=None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[None]["array-location"][-2:]
        with rasterio.open(path) as src:
            return src.read_masks(1, window=Window(c0, r0, c1 - c0, r1 - r0)) != 0

    arr = darr.map_blocks(block, dtype=bool, chunks=like.chunks[-2:],
                          meta=np.empty((0, 0), dtype=bool))
    return xr.DataArray(arr, dims=("y", "x"), coords={"y": like["y"], "x": like["x"]})


def check_ends(src, path: Path | str) -> None:
    """Read the first and the last pixel of an open dataset: a file cut short (a download or
    copy that stopped, which loses the end and often the georeferencing with it) is an
    InputError saying so, before any other check takes it for something it is not. So is
    another format under a GeoTIFF's name (a PNG or JPEG renamed .tif: it was 'no CRS')."""
    if Path(path).suffix.lower() in (".tif", ".tiff") and src.driver not in ("GTiff", "COG"):
        raise InputError(f"{path}: not a GeoTIFF but a {src.driver} image named .tif; export "
                         "it as GeoTIFF, with its georeferencing")
    try:
        src.read(1, window=((0, 1), (0, 1)))
        src.read(src.count, window=((src.height - 1, src.height),
                                    (src.width - 1, src.width)))
    except RasterioIOError as exc:
        _, detail = _gdal_says(exc)
        raise InputError(f"{path}: the raster data cannot be read ({detail}): the file is "
                         "damaged or incomplete; download or copy it again") from None


#: GDAL names the file in its block-read errors: "S2_20240401.tif, band 1: IReadBlock failed"
_GDAL_FILE = re.compile(r"^(?P<file>[^\n]+?), band \d+: ")


def _gdal_says(exc: BaseException) -> tuple[str | None, str]:
    """(the file GDAL names, GDAL's innermost message) of a failed rasterio read."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # GDAL's messages, innermost last ("ZIPDecode:Decoding error at scanline 64")
    texts = [str(e).strip() for e in chain[1:] if str(e).strip()]
    name = next((m["file"] for t in texts if (m := _GDAL_FILE.match(t))), None)
    return name, (texts[-1].splitlines()[-1] if texts else str(exc))


def read_failure(exc: BaseException, sources: Iterable[str | Path] = ()) -> InputError | None:
    """The user error for a raster read that failed at compute time (damaged or truncated
    pixel data), or None when ``exc`` is not one. GDAL gives the file's base name; ``sources``
    (the input paths) turn it back into the path the user gave."""
    if not isinstance(exc, RasterioIOError):
        return None
    name, detail = _gdal_says(exc)
    if name is not None:
        name = next((str(s) for s in sources if Path(s).name == Path(name).name), name)
    if "No space left on device" in detail:      # a write (GDAL reports it the same way)
        return InputError(f"no space left on the disk ({name or 'writing a raster'}); free "
                          "some space or write the outputs elsewhere")
    if "No such file or directory" in detail:   # gone, or not where a worker runs
        return InputError(f"{name or 'an image'}: not found where the pixels are read ("
                          f"{detail}): the file was moved or deleted during the run, or the "
                          "workers of --scheduler ADDRESS do not see this path; give paths "
                          "they can open (a shared folder)")
    return InputError(f"{name or 'an image'}: the raster data cannot be read ({detail}): the "
                      "file is damaged or incomplete; download or copy it again")


def scene_sources(scene: xr.DataArray) -> list[str]:
    """The files behind a Scene's dates (its ``source`` coordinate, '; '-joined per date when
    a date was mosaicked from several), for naming a damaged one."""
    return [s for v in scene["source"].values for s in str(v).split("; ")]


def read_pixels(compute: Callable[[], T], sources: Iterable[str | Path] = ()) -> T:
    """``compute()``, its damaged-file rasterio error raised as ``read_failure``'s InputError.

    Raised outside the ``except`` clause, so the InputError carries no chained rasterio
    exception: GDAL's exceptions do not unpickle, and a process pool or a dask worker would
    fail to send the error back (a broken pool instead of the message)."""
    try:
        return compute()
    except RasterioIOError as exc:
        err = read_failure(exc, sources)
        if err is None:
            raise
    raise err


def high_percentile(path: Path, bands: list[int], alpha: int | None, grid: int = 8,
                     size: int = 64) -> float | None:
    """The largest per-band 99th percentile of the valid values (:func:`band_samples`);
    None without valid values."""
    tops = [float(np.percentile(v, 99))
            for v in band_samples(path, bands, alpha, grid, size) if v.size]
    return max(tops) if tops else None


def band_samples(path: Path, bands: list[int], alpha: int | None, grid: int = 8,
                 size: int = 64, paired: bool = False) -> list[np.ndarray]:
    """Per band, its valid values (not 0, 65535, nodata or alpha 0) in ``grid`` x ``grid``
    windows of ``size`` pixels spread over the file, each at the corner of a block of the
    file (a tiled file decodes one block per window and band): a bounded read however large
    the orthomosaic. ``paired``: only pixels where every band is valid, so that the bands'
    samples pair up."""
    try:
        with rasterio.open(path) as src:
            hs, ws = min(size, src.height), min(size, src.width)
            bh, bw = src.block_shapes[bands[0] - 1]

            def starts(extent: int, block: int, win: int) -> np.ndarray:
                if block >= extent or block < win:
                    # a strip spans this axis (or blocks are smaller than a window): spread
                    # the windows evenly over the pixels, not over one block's corner
                    return np.unique(np.linspace(0, extent - win, grid).round().astype(int))
                origins = np.arange(0, extent - win + 1, block)   # block corners that fit
                pick = np.linspace(0, len(origins) - 1, grid).round().astype(int)
                return np.unique(origins[pick])

            rows, cols = starts(src.height, bh, hs), starts(src.width, bw, ws)
            nodata = [src.nodatavals[b - 1] for b in bands]
            values: list[list[np.ndarray]] = [[] for _ in bands]
            for r in rows:
                for c in cols:
                    win = Window(int(c), int(r), ws, hs)
                    block = src.read(bands, window=win)
                    ok = block != 0
                    if np.issubdtype(block.dtype, np.floating):
                        ok &= np.isfinite(block)
                    if block.dtype == np.uint16:
                        ok &= block != 65535
                    if alpha is not None:
                        ok &= src.read(alpha, window=win)[None] != 0
                    for k, nd in enumerate(nodata):
                        if nd is not None and not np.isnan(nd):
                            ok[k] &= block[k] != nd
                    if paired:
                        ok[:] = ok.all(axis=0)
                    for k in range(len(bands)):
                        values[k].append(block[k][ok[k]])
    except RasterioIOError as exc:
        raise (read_failure(exc, [path])
               or InputError(f"{path}: not a readable raster ({exc})")) from None
    return [np.concatenate(vs) for vs in values]


#: a 99th percentile of float reflectance above this (the masks' bound for an implausible
#: value) is percent or raw DN, not reflectance 0-1
FLOAT_P99_MAX = 1.5


def check_float_reflectance(path: Path, bands: list[int], alpha: int | None) -> None:
    """Float ``bands`` (1-based) of ``path`` without a GDAL scale are read as reflectance 0-1.
    A 99th percentile above 1.5 (:func:`high_percentile`) cannot be that (percent, or raw DN):
    every pixel would be masked as implausible and the scene reported unseen, so the file is
    refused with what to set."""
    with rasterio.open(path) as src:
        bare = [b for b in bands if np.issubdtype(np.dtype(src.dtypes[b - 1]), np.floating)
                and (src.scales[b - 1], src.offsets[b - 1]) == (1.0, 0.0)]
    p99 = high_percentile(path, bare, alpha) if bare else None
    if p99 is not None and p99 > FLOAT_P99_MAX:
        # the scale that fits the values (x 10000 was told to use 0.01: still 100 x too high)
        what = ("in percent? give it a scale (gdal_edit.py -scale 0.01)" if p99 <= 150 else
                "reflectance x 10000? give it a scale (gdal_edit.py -scale 0.0001)"
                if p99 <= 15000 else "raw DN must be calibrated to reflectance first")
        raise InputError(
            f"{path}: float values up to {p99:.4g} (99th percentile) cannot be reflectance "
            f"(0-1) and the file has no GDAL scale: {what}; see docs/inputs.md "
            "(Reflectance scaling)")
