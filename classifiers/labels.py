"""Labelled polygons: GeoJSON (WGS84 per RFC 7946 unless it declares a CRS) or GeoPackage,
class name in property ``class``; the target class is ``poppy``. Any other class name is a
background class (wheat, rapeseed, ornamental_poppy, ...)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from pipeline.aoi import read_features
from pipeline.errors import InputError

log = logging.getLogger(__name__)

TARGET_CLASS = "poppy"
#: a class name that may mean the target under another name (opium_poppy, papaver, poppies)
_POPPY_WORD = re.compile(r"popp|papaver|opium|罂粟")
#: ... unless it names a poppy that is background on purpose (ornamental parks and flower
#: fields, corn or field poppy by roads, California poppy)
_OTHER_POPPY = re.compile(r"ornament|park|flower_field|corn|field_popp|wild|californ|虞美人")


@dataclass(frozen=True)
class Labels:
    geometries: tuple[BaseGeometry, ...]   # in the requested CRS
    classes: tuple[str, ...]
    source: str

    @property
    def is_target(self) -> np.ndarray:
        return np.array([c == TARGET_CLASS for c in self.classes])


def read_polygons(path: Path, to_crs: CRS | str | None, attribute: str | None = None, *,
                  what: str = "polygon file", skipped: list[dict] | None = None
                  ) -> tuple[list[BaseGeometry], list]:
    """Polygons of a vector file (any CRS) in ``to_crs``, with one attribute's values
    (``skipped``: see ``read_features``)."""
    features, _ = read_features(path, to_crs, what=what, skipped=skipped)
    if attribute is not None and not any(attribute in f.properties for f in features):
        raise InputError(f"{path}: no '{attribute}' property; the file has "
                         f"{sorted(features[0].properties)}")
    return ([f.geometry for f in features],
            [f.properties.get(attribute) if attribute else None for f in features])


def read_labels(path: Path, crs: CRS | str, *, require_both: bool = True,
                background_drawn: bool = False) -> Labels:
    """Labelled polygons in ``crs``. ``require_both``: the file itself must hold poppy and
    background polygons (one scene); with several scenes only their union must.
    ``background_drawn``: the background comes from the unlabelled area too, so a file of
    poppy polygons alone (the plots a team verified) is enough."""
    skipped: list[dict] = []
    geoms, classes = read_polygons(path, crs, "class", what="labels file", skipped=skipped)
    if any(c is None or str(c).strip() == "" for c in classes):
        raise InputError(f"{path}: some polygons have an empty 'class'; give every polygon a "
                         "class name")
    classes = [str(c).strip().lower() for c in classes]
    # a MultiPolygon feature is its parts: each plot is eroded, counted and kept in one
    # validation fold on its own (25 plots as one feature were one 'polygon' to validate)
    parts = [(part, c) for g, c in zip(geoms, classes) for part in getattr(g, "geoms", [g])]
    geoms, classes = [g for g, _ in parts], [c for _, c in parts]
    not_polygons = sum(str(p.get("class", "")).strip().lower() == TARGET_CLASS
                       for p in skipped)
    if require_both and TARGET_CLASS not in classes:
        if not_polygons:
            raise InputError(f"{path}: its {not_polygons} '{TARGET_CLASS}' features are points "
                             "or lines, not polygons; outline each plot as a polygon (or "
                             "buffer the GPS points by the plot's radius)")
        raise InputError(f"{path}: no polygon of class '{TARGET_CLASS}'; the model needs "
                         f"examples of it (classes found: {sorted(set(classes))})")
    if not_polygons:
        log.warning("%s: %d '%s' features are points or lines, not polygons: left out",
                    path, not_polygons, TARGET_CLASS)
    lookalike = sorted({c for c in classes if c != TARGET_CLASS and _POPPY_WORD.search(c)
                        and not _OTHER_POPPY.search(c.replace(" ", "_"))})
    if lookalike:
        log.warning("%s: class %s is trained as background: only '%s' is the target class; "
                    "rename it to '%s' if it is opium poppy", path,
                    ", ".join(f"'{c}' ({classes.count(c)} polygons)" for c in lookalike),
                    TARGET_CLASS, TARGET_CLASS)
    if require_both and not background_drawn and set(classes) == {TARGET_CLASS}:
        raise InputError(f"{path}: only '{TARGET_CLASS}' polygons; add background classes "
                         "(wheat, rapeseed, village, ...) or set model.background_sample_px")
    return Labels(tuple(geoms), tuple(classes), str(path))
