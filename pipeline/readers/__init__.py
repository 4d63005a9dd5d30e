"""Product readers. Each module exposes ``can_read(path) -> bool`` and
``read(path, sensor, chunks, *, prefer) -> list[xr.DataArray]`` (one (band, y, x) float32
reflectance array per acquisition, NaN where no data, canonical band names, attrs ``time``,
``sensor``, ``sun_zenith``, ``sun_azimuth``; ``prefer`` names the camera to take where a
file's band names fit more than one, e.g. a model's). ``pipeline.ingest`` asks them in the
order of ``READERS``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: Reader modules, most specific first; the multi-band GeoTIFF of the input contract last.
READER_NAMES: tuple[str, ...] = ("sentinel2", "drone", "multiband")


def readers() -> list[ModuleType]:
    mods = []
    for name in READER_NAMES:
        try:
            mods.append(importlib.import_module(f"pipeline.readers.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"pipeline.readers.{name}":
                raise
    return mods
