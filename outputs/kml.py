"""``targets.kml``: KML 2.2 for Google Earth, Organic Maps, OsmAnd, Locus and similar apps.

One Placemark per target, in rank order, with a MultiGeometry of the centroid Point (so apps
that only import points still get a pin) and the plot Polygon(s), a ``name``, a readable
``description`` and every attribute as ``ExtendedData``. Blind areas go in a second folder.
Coordinates are WGS84 lon,lat with 7 decimals, exterior rings counter-clockwise. With
``gcj02=True`` every coordinate is shifted to GCJ-02 and the document says so in its name and
description (for Chinese map apps only).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import shapely
from shapely.geometry import MultiPolygon, Polygon

from outputs import gcj02 as gcj
from outputs.atomic import write_bytes_atomic
from outputs.geojson import parse_crs, polygonal, targets_wgs84, to_wgs84
from outputs.gpx import waypoint_desc, waypoint_name
from outputs.targets import TargetList

KML_NS = "http://www.opengis.net/kml/2.2"
GCJ02_NOTE = ("COORDINATES ARE GCJ-02 (Chinese 'Mars' datum) for Chinese phone map apps "
              "(Amap, Tencent, Apple/Google maps in China); NOT WGS84. Use targets.kml "
              "for GPS units and every other app.")
WGS84_NOTE = "Coordinates are WGS84 longitude, latitude (EPSG:4326)."


def _q(tag: str) -> str:
    return f"{{{KML_NS}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, _q(tag))
    if text is not None:
        el.text = text
    return el


def _coords(seq: object) -> str:
    return " ".join(f"{x:.7f},{y:.7f}" for x, y, *_ in seq)  # type: ignore[attr-defined]


def _add_polygon(parent: ET.Element, p: Polygon) -> None:
    poly = _sub(parent, "Polygon")
    _sub(poly, "tessellate", "1")
    ring = _sub(_sub(poly, "outerBoundaryIs"), "LinearRing")
    _sub(ring, "coordinates", _coords(p.exterior.coords))
    for interior in p.interiors:
        ring = _sub(_sub(poly, "innerBoundaryIs"), "LinearRing")
        _sub(ring, "coordinates", _coords(interior.coords))


def _add_style(doc: ET.Element, sid: str, line: str, fill: str, icon_scale: str) -> None:
    style = _sub(doc, "Style")
    style.set("id", sid)
    icon = _sub(style, "IconStyle")
    _sub(icon, "color", line)
    _sub(icon, "scale", icon_scale)
    ls = _sub(style, "LineStyle")
    _sub(ls, "color", line)
    _sub(ls, "width", "2")
    ps = _sub(style, "PolyStyle")
    _sub(ps, "color", fill)


def _shift(geom: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    return shapely.transform(geom, gcj.shift_coords)


def kml_bytes(targets: TargetList, *, gcj02: bool = False) -> bytes:
    """The KML 2.2 document as UTF-8 bytes."""
    ET.register_namespace("", KML_NS)
    root = ET.Element(_q("kml"))
    doc = _sub(root, "Document")
    _sub(doc, "name", "poppyscan targets" + (" (GCJ-02)" if gcj02 else ""))
    _sub(doc, "description", GCJ02_NOTE if gcj02 else WGS84_NOTE)
    _add_style(doc, "target", "ff0000ff", "4d0000ff", "1.0")     # KML colours are aabbggrr
    _add_style(doc, "blind", "ff999999", "33999999", "0.6")
    folder = _sub(doc, "Folder")
    _sub(folder, "name", "Targets (visit in rank order)")
    for t, geom in targets_wgs84(targets):
        lon, lat = float(t.lon), float(t.lat)
        if gcj02:
            x, y = gcj.wgs84_to_gcj02(lon, lat)
            lon, lat = float(x), float(y)
            geom = _shift(geom) if geom is not None else None
        pm = _sub(folder, "Placemark")
        _sub(pm, "name", waypoint_name(t))
        _sub(pm, "description", waypoint_desc(t) + ("\n" + GCJ02_NOTE if gcj02 else ""))
        _sub(pm, "styleUrl", "#target")
        ext = _sub(pm, "ExtendedData")
        props = t.properties()
        props["lon"], props["lat"] = round(lon, 7), round(lat, 7)
        props["coord_system"] = "GCJ-02" if gcj02 else "WGS84"
        for k, v in props.items():
            data = _sub(ext, "Data")
            data.set("name", k)
            _sub(data, "value", ";".join(v) if isinstance(v, list) else ("" if v is None else str(v)))
        mg = _sub(pm, "MultiGeometry")
        _sub(_sub(mg, "Point"), "coordinates", f"{lon:.7f},{lat:.7f}")
        if geom is not None:
            for p in (geom.geoms if isinstance(geom, MultiPolygon) else [geom]):
                _add_polygon(mg, p)
    if targets.blind_areas:
        crs = parse_crs(targets.crs)
        bf = _sub(doc, "Folder")
        _sub(bf, "name", "Blind areas (no clear view in the flowering window)")
        for i, g in enumerate(targets.blind_areas, start=1):
            geom = polygonal(to_wgs84(g, crs))
            if geom is None:
                continue
            if gcj02:
                geom = _shift(geom)
            pm = _sub(bf, "Placemark")
            _sub(pm, "name", f"blind {i}")
            _sub(pm, "styleUrl", "#blind")
            mg = _sub(pm, "MultiGeometry")
            for p in (geom.geoms if isinstance(geom, MultiPolygon) else [geom]):
                _add_polygon(mg, p)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_kml(targets: TargetList, path: Path, *, gcj02: bool = False) -> Path:
    """Write ``targets.kml`` (or the GCJ-02 copy) atomically."""
    return write_bytes_atomic(path, kml_bytes(targets, gcj02=gcj02))
