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

import rioxarray
import xarray as xr
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError

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


def check_ends(src, path: Path | str) -> None:
    """Read the first and the last pixel of an open dataset: a file cut short (a download or
    copy that stopped, which loses the end and often the georeferencing with it) is an
    InputError saying so, before any other check takes it for something it is not."""
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
