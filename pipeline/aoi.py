"""Areas of interest and unit boundaries from GeoJSON, GeoPackage or Shapefile.

* Any CRS the file declares (WGS84, CGCS2000 EPSG:4490, Gauss-Krüger such as EPSG:4547, UTM);
  geometries are reprojected with pyproj (``always_xy``) to the CRS asked for.
* Shapefile attributes in UTF-8 or GBK: the ``.cpg`` file is honoured; without one, UTF-8 is
  tried first and GBK (GB18030, its superset) second, since Chinese unit boundaries often
  arrive as GBK Shapefiles without a ``.cpg``.
* Only polygons count: points and lines are skipped (with a log line); invalid polygons are
  repaired with ``shapely.make_valid``. No polygon at all, or an empty union, is an InputError.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.errors
import pyogrio.raw
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError as PyprojCRSError
from shapely.geometry.base import BaseGeometry

from pipeline.errors import CRSError, InputError

log = logging.getLogger(__name__)

_SUFFIXES = {".geojson", ".json", ".gpkg", ".shp", ".zip", ".kml", ".fgb"}
_GBK_CPG = {"936", "gbk", "cp936", "gb2312", "gb18030", "ansi 936"}


@dataclass(frozen=True)
class Feature:
    """One polygon feature: geometry in the requested CRS and its attributes."""
    geometry: BaseGeometry
    properties: dict[str, Any] = field(default_factory=dict)


def _crs(value: Any, what: str) -> CRS:
    try:
        return CRS.from_user_input(value)
    except PyprojCRSError:
        raise CRSError(f"{what}: unknown CRS {value!r}; give an EPSG code such as "
                       "EPSG:4490") from None


def _encodings(path: Path) -> list[str | None]:
    if path.suffix.lower() != ".shp":
        return [None]
    cpg = path.with_suffix(".cpg")
    if not cpg.exists():
        cpg = path.with_suffix(".CPG")
    if cpg.exists():
        text = cpg.read_text(encoding="ascii", errors="ignore").strip().lower()
        if text in _GBK_CPG:
            return ["GB18030"]
        if text.replace("-", "") in ("utf8",):
            return ["UTF-8", "GB18030"]
        return [text or None, "UTF-8", "GB18030"]
    return ["UTF-8", "GB18030"]


_VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".shp", ".fgb", ".zip", ".kml", ".kmz"}


#: files whose layers are folders of one drawing (Google Earth): read together
_FOLDER_LAYERS = {".kml", ".kmz"}


def _layers(path: Path, what: str) -> list[str | None]:
    """The layers to read: the one layer with geometry of a file that holds several (a
    GeoPackage from QGIS keeps its styles in a table without geometry), every folder of a
    KML/KMZ (Google Earth keeps a drawing's polygons in folders), else [None] (the file's only
    layer). Several layers of another kind are refused: which one is meant?"""
    try:
        layers = pyogrio.list_layers(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError):
        return [None]                   # not readable: pyogrio.raw.read says why
    if len(layers) < 2:
        return [None]
    spatial = [str(name) for name, geometry in layers if geometry is not None]
    if len(spatial) == 1 or (spatial and path.suffix.lower() in _FOLDER_LAYERS):
        return list(spatial)
    from shlex import quote
    last = spatial[-1]
    raise InputError(f"{path}: holds {len(spatial)} layers with geometry "
                     f"({', '.join(spatial)}); the {what} must be one: keep it in a file of "
                     f"its own (e.g. ogr2ogr {quote(f'{path.stem}_{last}{path.suffix}')} "
                     f"{quote(str(path))} {quote(last)})")


def _read_raw(path: Path, what: str) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """The file's (or its folders', together) CRS and fields, geometries and columns."""
    parts = [_read_layer(path, what, layer) for layer in _layers(path, what)]
    if len(parts) == 1:
        return parts[0]
    names = list(dict.fromkeys(n for meta, _, _ in parts for n in meta["fields"]))
    columns = []
    for name in names:                  # a field a folder lacks: None in its rows
        cols = [f[list(m["fields"]).index(name)] if name in list(m["fields"])
                else np.full(len(g), None, dtype=object) for m, g, f in parts]
        columns.append(np.concatenate([c.astype(object) for c in cols]))
    meta = dict(parts[0][0], fields=np.array(names, dtype=object))
    return meta, np.concatenate([g for _, g, _ in parts]), columns


def _read_layer(path: Path, what: str, layer: str | None
                ) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    errors = []
    for enc in _encodings(path):
        try:
            meta, _fids, geoms, fields = pyogrio.raw.read(path, encoding=enc, layer=layer)
        except UnicodeDecodeError as exc:
            errors.append(f"{enc}: {exc.reason}")
            continue
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
            raise InputError(f"{path}: {what} is not a readable vector file ({exc})") from None
        if enc and any(_looks_garbled(v) for col in fields for v in col[:50]):
            errors.append(f"{enc}: replacement characters")
            continue
        if enc:
            log.debug("%s: attributes read as %s", path, enc)
        return meta, geoms, fields
    raise InputError(f"{path}: attribute text is neither UTF-8 nor GBK ({'; '.join(errors)}); "
                     "add a .cpg file naming the encoding")


def _looks_garbled(value: Any) -> bool:
    return isinstance(value, str) and "\ufffd" in value


def read_features(path: Path, crs: Any | None = None, *, what: str = "AOI file",
                  skipped: list[dict] | None = None) -> tuple[list[Feature], CRS]:
    """Polygon features of ``path`` in ``crs`` (default: the file's), and that CRS.

    A GeoJSON without a CRS is WGS84 (RFC 7946), and coordinates beyond longitude/latitude
    in it (metres) are refused; any other file without one is refused (a Shapefile without
    .prj could be in any projection). Rings left open are closed; features without polygon
    area (points, lines, a ring of two points) are left out, their properties appended to
    ``skipped`` when given. A file of several layers with geometry is refused (which one?),
    but for the folders of a KML/KMZ, read together.
    ``what`` names the file in errors.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if path.is_dir():
        inside = sorted(p for p in path.iterdir() if p.suffix.lower() in _VECTOR_SUFFIXES)
        raise InputError(f"{path}: is a folder; give the {what} itself"
                         + (f" (e.g. {inside[0]})" if inside else ""))
    meta, geoms, fields = _read_raw(path, what)
    if meta.get("crs"):
        src = _crs(meta["crs"], str(path))
    elif path.suffix.lower() in (".geojson", ".json"):
        src = CRS.from_epsg(4326)
    else:
        raise CRSError(f"{path}: {what} has no CRS; save it with one (e.g. EPSG:4326), or "
                       "give a .prj beside a Shapefile")
    dst = _crs(crs, "requested AOI CRS") if crs is not None else src
    names = list(meta.get("fields", []))
    try:   # GDAL reads a ring that is not closed (QGIS and hand edits write them)
        shapes = (shapely.from_wkb(geoms, on_invalid="fix") if geoms is not None
                  else np.array([]))
    except shapely.errors.GEOSException as exc:
        raise InputError(f"{path}: {what} has a geometry that cannot be read ({exc}); fix "
                         "it in a GIS (e.g. QGIS 'Fix geometries')") from None
    if src.is_geographic:
        _check_lon_lat(path, shapes, src)
    transformer = None if src == dst else Transformer.from_crs(src, dst, always_xy=True)
    features: list[Feature] = []
    left_out: list[dict] = []
    for i, geom in enumerate(shapes):
        props = {n: _plain(col[i]) for n, col in zip(names, fields, strict=True)}
        polys = None if geom is None or geom.is_empty else _polygons(geom)
        if polys is not None and not polys.is_valid:
            polys = _polygons(shapely.make_valid(polys))   # a bow-tie: its two parts
        if polys is None or polys.is_empty or polys.area == 0:
            left_out.append(props)
            continue
        if transformer is not None:
            polys = shapely.transform(polys, lambda xy: np.column_stack(
                transformer.transform(xy[:, 0], xy[:, 1])))
        features.append(Feature(polys, props))
    if left_out:
        log.info("%s: %d features without polygon geometry skipped", path, len(left_out))
        if skipped is not None:
            skipped.extend(left_out)
    if not features:
        raise InputError(f"{path}: no polygons; the {what} must hold at least one polygon")
    return features, dst


def _check_lon_lat(path: Path, shapes: np.ndarray, crs: CRS) -> None:
    """Refuse projected coordinates (metres) in a file read as longitude/latitude: a GeoJSON
    without a ``crs`` member is WGS84, and metres read as degrees land nowhere."""
    if not len(shapes):
        return
    minx, miny, maxx, maxy = shapely.total_bounds(shapes)
    bad = next((f"{axis}={v:.0f}" for axis, v, limit in
                (("x", minx, 180), ("x", maxx, 180), ("y", miny, 90), ("y", maxy, 90))
                if np.isfinite(v) and abs(v) > limit), None)
    if bad is None:
        return
    if 180 < maxx <= 360 and minx >= -180 and max(abs(miny), abs(maxy)) <= 90:
        raise InputError(f"{path}: longitudes run beyond 180 (to {maxx:.4f}): the polygons "
                         "cross the 180th meridian; split them into one file on each side "
                         "(longitudes -180..180)")
    if path.suffix.lower() in (".geojson", ".json"):
        named = _crs_member(path)
        if named:
            try:
                CRS.from_user_input(named)
            except PyprojCRSError:
                raise CRSError(f"{path}: its crs member names {named!r}, which is not a CRS "
                               f"GDAL knows (read as WGS84, and the coordinates, e.g. {bad}, "
                               "are not longitude/latitude); name it as EPSG:<code>, e.g. "
                               "urn:ogc:def:crs:EPSG::32650") from None
        else:
            raise InputError(f"{path}: coordinates are not longitude/latitude (e.g. {bad}): "
                             "a GeoJSON without a `crs` member must be WGS84 (RFC 7946); "
                             "reproject it or give it as GeoPackage with its CRS")
    raise CRSError(f"{path}: coordinates are not longitude/latitude (e.g. {bad}) though its "
                   f"CRS {crs.to_string()} is; save it with the CRS its coordinates are in")


def _crs_member(path: Path) -> str | None:
    """The name a GeoJSON's (pre-RFC 7946) ``crs`` member gives, if any."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
        return str(doc["crs"]["properties"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _polygons(geom: BaseGeometry) -> BaseGeometry | None:
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        return shapely.union_all(parts) if parts else None
    return None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def read_aoi(path: Path, crs: Any | None = None) -> BaseGeometry:
    """The union of the polygons in ``path``, in ``crs`` (default: the file's CRS)."""
    features, _ = read_features(path, crs, what="AOI file")
    union = shapely.union_all([f.geometry for f in features])
    if union.is_empty or union.area == 0:
        raise InputError(f"{path}: the AOI polygons are empty (zero area)")
    return union
