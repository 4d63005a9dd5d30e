"""RFC 7946 GeoJSON for targets and blind areas.

RFC 7946 rules kept here: WGS84 lon/lat only and no ``crs`` member; exterior rings
counter-clockwise, holes clockwise (the right-hand rule); coordinates rounded to 7 decimals
(about 1 cm, far below a 10 m pixel); one Polygon or MultiPolygon per feature. The feature
``id`` is the stable ``target_id`` and features come in rank order.

The WGS84 helpers (:func:`to_wgs84`, :func:`rounded_mapping`) are shared by the KML and map
writers, which need the same lon/lat geometry.
"""
from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import CRSError as ProjCRSError
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from outputs.atomic import atomic_path, write_text_atomic
from outputs.targets import Target, TargetList
from pipeline.errors import CRSError

_GEOD = Geod(ellps="WGS84")

log = logging.getLogger(__name__)

DECIMALS = 7
WGS84 = CRS.from_epsg(4326)


@functools.lru_cache(maxsize=32)
def parse_crs(crs: str) -> CRS:
    """The scene CRS of a TargetList as a pyproj CRS (CRSError if unreadable)."""
    try:
        return CRS.from_user_input(crs)
    except ProjCRSError as exc:
        raise CRSError(f"target list CRS {crs!r} is not a CRS PROJ understands; "
                       "give 'EPSG:n' or WKT") from exc


@functools.lru_cache(maxsize=8)
def _transformer_to_wgs84(src: CRS) -> Transformer | None:
    """One transformer per CRS: building one costs ~2 ms, paid per target before."""
    if src.equals(WGS84, ignore_axis_order=True):
        return None
    return Transformer.from_crs(src, WGS84, always_xy=True)


def to_wgs84(geometry, crs: str | CRS):
    """Reproject a geometry (or an array of them) from ``crs`` to WGS84 lon/lat (axis order
    x=lon, y=lat)."""
    tr = _transformer_to_wgs84(crs if isinstance(crs, CRS) else parse_crs(crs))
    if tr is None:
        return geometry
    return shapely.transform(
        geometry, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon | None:
    """The polygonal part of a geometry, right-hand-rule oriented, or None if it has none."""
    if geometry is None or geometry.is_empty:
        return None
    if isinstance(geometry, Polygon):
        return orient(geometry, 1.0)
    if isinstance(geometry, MultiPolygon):
        return MultiPolygon([orient(p, 1.0) for p in geometry.geoms])
    parts = [g for g in getattr(geometry, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    if not polys:
        log.warning("dropping a %s geometry: only polygons are exported", geometry.geom_type)
        return None
    return MultiPolygon([orient(p, 1.0) for p in polys]) if len(polys) > 1 else orient(polys[0], 1.0)


def on_grid(geoms: np.ndarray) -> np.ndarray:
    """WGS84 geometries whose rounding to DECIMALS stays valid: a pixel-edge outline of a
    drone image finer than the 1e-7 degree grid (~1 cm; 5 mm pixels) rounded to a
    self-intersecting polygon. Those few are snapped to the grid with GEOS keeping them
    valid; the others pass unchanged (rounding them gives the same coordinates)."""
    grid = 10.0 ** -DECIMALS
    rounded = shapely.set_precision(geoms, grid, mode="pointwise")
    bad = ~shapely.is_valid(rounded) & shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.set_precision(geoms[bad], grid)
    return geoms


def _ring(coords: Any) -> list[list[float]]:
    return [[round(float(x), DECIMALS), round(float(y), DECIMALS)] for x, y, *_ in coords]


def _polygon_coords(p: Polygon) -> list[list[list[float]]]:
    return [_ring(p.exterior.coords), *(_ring(r.coords) for r in p.interiors)]


def rounded_mapping(geometry: Polygon | MultiPolygon) -> dict:
    """GeoJSON geometry dict of an oriented lon/lat (Multi)Polygon, coordinates rounded."""
    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_coords(geometry)}
    return {"type": "MultiPolygon",
            "coordinates": [_polygon_coords(p) for p in geometry.geoms]}


def clean_value(v: Any) -> Any:
    """JSON-safe attribute value: NaN/inf become null (GeoJSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def target_properties(t: Target) -> dict:
    """GeoJSON properties of a target: every attribute, ``dates`` as a JSON list."""
    props = {k: clean_value(v) for k, v in t.properties().items()}
    for k in ("lon", "lat"):
        if props[k] is not None:
            props[k] = round(float(props[k]), DECIMALS)
    return props


def targets_wgs84(targets: TargetList) -> list[tuple[Target, Polygon | MultiPolygon | None]]:
    """Each target (rank order) with its geometry in WGS84, oriented."""
    crs = parse_crs(targets.crs)
    ordered = sorted(targets.targets, key=lambda t: t.rank)
    # one transformation for all geometries: per geometry, hashing the CRS for the
    # transformer cache and the call overhead cost more than the arithmetic
    geoms = on_grid(to_wgs84(np.array([t.geometry for t in ordered], dtype=object), crs))
    return [(t, polygonal(g)) for t, g in zip(ordered, geoms)]


def _target_features(targets: TargetList) -> Iterator[dict]:
    for t, geom in targets_wgs84(targets):
        yield {
            "type": "Feature", "id": t.target_id,
            "geometry": rounded_mapping(geom) if geom is not None else None,
            "properties": target_properties(t),
        }


def targets_feature_collection(targets: TargetList) -> dict:
    """The RFC 7946 FeatureCollection dict of a target list."""
    return {"type": "FeatureCollection", "features": list(_target_features(targets))}


def blind_areas_feature_collection(targets: TargetList) -> dict:
    """RFC 7946 FeatureCollection of the blind areas (no clear flowering-window view)."""
    crs = parse_crs(targets.crs)
    features = []
    for i, g in enumerate(targets.blind_areas, start=1):
        geom = polygonal(on_grid(np.array([to_wgs84(g, crs)], dtype=object))[0])
        if geom is None:
            continue
        features.append({
            "type": "Feature", "id": i,
            "geometry": rounded_mapping(geom),
            # m^2 in either CRS (geodesic for one in degrees); 3 decimals: a 5 cm drone pixel
            # is 0.0025 m^2
            "properties": {"blind_id": i, "area_m2": round(
                abs(_GEOD.geometry_area_perimeter(geom)[0]) if crs.is_geographic
                else float(g.area), 3)},
        })
    return {"type": "FeatureCollection", "features": features}


#: compact, strict JSON (no NaN), UTF-8 text as is
_JSON = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}


def dumps(fc: dict) -> str:
    """Compact, strict JSON text (no NaN)."""
    return json.dumps(fc, **_JSON) + "\n"


def write_geojson(targets: TargetList, path: Path) -> Path:
    """Write ``targets.geojson`` (RFC 7946) atomically, a feature at a time: the same bytes as
    ``dumps(targets_feature_collection(...))`` without holding the whole text (50k targets)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write('{"type":"FeatureCollection","features":[')
        f.writelines(("," if i else "") + json.dumps(feat, **_JSON)
                     for i, feat in enumerate(_target_features(targets)))
        f.write("]}\n")
    return path


def write_blind_areas_geojson(targets: TargetList, path: Path) -> Path:
    """Write ``blind_areas.geojson`` (RFC 7946) atomically."""
    return write_text_atomic(path, dumps(blind_areas_feature_collection(targets)))
