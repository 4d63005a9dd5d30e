"""TEMPORARY stub until the AOI reader lands: polygons of a vector file, unioned."""
from __future__ import annotations

from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

from classifiers.labels import read_polygons
from pipeline.errors import InputError


def read_aoi(path: Path, crs=None) -> BaseGeometry:
    geoms, _ = read_polygons(path, crs)
    if not geoms:
        raise InputError(f"{path}: the AOI holds no polygon; give a file with at least one")
    return shapely.union_all(geoms)
