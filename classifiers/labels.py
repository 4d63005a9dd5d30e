"""Labelled polygons: GeoJSON (WGS84 per RFC 7946 unless it declares a CRS) or GeoPackage,
class name in property ``class``; the target class is ``poppy``. Any other class name is a
background class (wheat, rapeseed, ornamental_poppy, ...)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from pipeline.errors import InputError

TARGET_CLASS = "poppy"


@dataclass(frozen=True)
class Labels:
    geometries: tuple[BaseGeometry, ...]   # in the requested CRS
    classes: tuple[str, ...]
    source: str

    @property
    def is_target(self) -> np.ndarray:
        return np.array([c == TARGET_CLASS for c in self.classes])


def read_polygons(path: Path, to_crs: CRS | str | None,
                  attribute: str | None = None) -> tuple[list[BaseGeometry], list]:
    """Polygons of a vector file (any CRS) in ``to_crs``, with one attribute's values."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        meta, _, geoms, fields = pyogrio.raw.read(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable vector file ({exc})") from None
    names = list(meta["fields"])
    values: list = [None] * len(geoms)
    if attribute is not None:
        if attribute not in names:
            raise InputError(f"{path}: no '{attribute}' property; the file has {names}")
        values = list(fields[names.index(attribute)])
    src_crs = meta.get("crs") or "EPSG:4326"
    shapes = shapely.from_wkb(geoms)
    if to_crs is not None and CRS.from_user_input(src_crs) != CRS.from_user_input(to_crs):
        tr = Transformer.from_crs(src_crs, to_crs, always_xy=True)
        shapes = np.array([shapely.transform(g, lambda xy: np.column_stack(
            tr.transform(xy[:, 0], xy[:, 1]))) if g is not None else None for g in shapes])
    keep = [i for i, g in enumerate(shapes)
            if g is not None and not g.is_empty and g.geom_type in ("Polygon", "MultiPolygon")]
    return [shapely.make_valid(shapes[i]) for i in keep], [values[i] for i in keep]


def read_labels(path: Path, crs: CRS | str) -> Labels:
    geoms, classes = read_polygons(path, crs, "class")
    if not geoms:
        raise InputError(f"{path}: no polygons; labels must be Polygon/MultiPolygon features")
    if any(c is None or str(c).strip() == "" for c in classes):
        raise InputError(f"{path}: some polygons have an empty 'class'; give every polygon a "
                         "class name")
    classes = [str(c).strip().lower() for c in classes]
    if TARGET_CLASS not in classes:
        raise InputError(f"{path}: no polygon of class '{TARGET_CLASS}'; the model needs "
                         f"examples of it (classes found: {sorted(set(classes))})")
    if set(classes) == {TARGET_CLASS}:
        raise InputError(f"{path}: only '{TARGET_CLASS}' polygons; add background classes "
                         "(wheat, rapeseed, village, ...)")
    return Labels(tuple(geoms), tuple(classes), str(path))
