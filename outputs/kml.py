"""``targets.kml``: KML 2.2 for Google Earth, Organic Maps, OsmAnd, Locus and similar apps.

One Placemark per target, in rank order, with a MultiGeometry of the anchor Point (so apps
that only import points still get a pin) and the plot Polygon(s), a ``name``, a readable
``description`` and every attribute as ``ExtendedData``. Blind areas go in a second folder.
Coordinates are WGS84 lon,lat with 7 decimals, exterior rings counter-clockwise. With
``gcj02=True`` every coordinate is shifted to GCJ-02 and the document says so in its name and
description (for Chinese map apps only).
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape, quoteattr

import shapely
from shapely.geometry import MultiPolygon, Polygon

from outputs import gcj02 as gcj
from outputs.atomic import atomic_path
from outputs.csvfile import cell
from outputs.geojson import parse_crs, polygonal, targets_wgs84, to_wgs84
from outputs.gpx import rank_width, waypoint_desc, waypoint_name
from outputs.targets import TargetList

KML_NS = "http://www.opengis.net/kml/2.2"
GCJ02_NOTE = ("COORDINATES ARE GCJ-02 (Chinese 'Mars' datum) for Chinese phone map apps "
              "(Amap, Tencent, Apple/Google maps in China); NOT WGS84. Use targets.kml "
              "for GPS units and every other app.")
WGS84_NOTE = "Coordinates are WGS84 longitude, latitude (EPSG:4326)."


class _Xml:
    """A small indented XML writer streaming to a binary file: ElementTree's pure-Python
    serialiser (and its namespace walk) took 5 s for 13k targets, most of a detect's writing
    time, and a document in memory was ~300 MB for 50k targets."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.depth = 0
        self._line("<?xml version='1.0' encoding='utf-8'?>")

    def _line(self, text: str) -> None:
        self.out.write((text + "\n").encode("utf-8"))

    def open(self, tag: str, attrs: str = "") -> None:
        self._line(f"{'  ' * self.depth}<{tag}{attrs}>")
        self.depth += 1

    def close(self, tag: str) -> None:
        self.depth -= 1
        self._line(f"{'  ' * self.depth}</{tag}>")

    def leaf(self, tag: str, text: str, attrs: str = "") -> None:
        self._line(f"{'  ' * self.depth}<{tag}{attrs}>{escape(text)}</{tag}>")


def _coords(seq: object) -> str:
    return " ".join(f"{x:.7f},{y:.7f}" for x, y, *_ in seq)  # type: ignore[attr-defined]


def _add_polygon(x: _Xml, p: Polygon) -> None:
    x.open("Polygon")
    x.leaf("tessellate", "1")
    rings = [("outerBoundaryIs", p.exterior)] + [("innerBoundaryIs", r) for r in p.interiors]
    for side, ring in rings:
        x.open(side)
        x.open("LinearRing")
        x.leaf("coordinates", _coords(ring.coords))
        x.close("LinearRing")
        x.close(side)
    x.close("Polygon")


def _add_style(x: _Xml, sid: str, line: str, fill: str, icon_scale: str) -> None:
    x.open("Style", f' id="{sid}"')
    x.open("IconStyle")
    x.leaf("color", line)
    x.leaf("scale", icon_scale)
    x.close("IconStyle")
    x.open("LineStyle")
    x.leaf("color", line)
    x.leaf("width", "2")
    x.close("LineStyle")
    x.open("PolyStyle")
    x.leaf("color", fill)
    x.close("PolyStyle")
    x.close("Style")


def _add_geometry(x: _Xml, point: tuple[float, float] | None,
                  geom: Polygon | MultiPolygon | None) -> None:
    x.open("MultiGeometry")
    if point is not None:
        x.open("Point")
        x.leaf("coordinates", f"{point[0]:.7f},{point[1]:.7f}")
        x.close("Point")
    if geom is not None:
        for p in (geom.geoms if isinstance(geom, MultiPolygon) else [geom]):
            _add_polygon(x, p)
    x.close("MultiGeometry")


def _shift(geom: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    return shapely.transform(geom, gcj.shift_coords)


def _write_kml(out: BinaryIO, targets: TargetList, *, gcj02: bool) -> None:
    x = _Xml(out)
    x.open("kml", f' xmlns="{KML_NS}"')
    x.open("Document")
    x.leaf("name", "poppyscan targets" + (" (GCJ-02)" if gcj02 else ""))
    x.leaf("description", GCJ02_NOTE if gcj02 else WGS84_NOTE)
    _add_style(x, "target", "ff0000ff", "4d0000ff", "1.0")     # KML colours are aabbggrr
    _add_style(x, "blind", "ff999999", "33999999", "0.6")
    x.open("Folder")
    x.leaf("name", "Targets (visit in rank order)")
    width = rank_width(targets)
    for t, geom in targets_wgs84(targets):
        lon, lat = float(t.lon), float(t.lat)
        if gcj02:
            gx, gy = gcj.wgs84_to_gcj02(lon, lat)
            lon, lat = float(gx), float(gy)
            geom = _shift(geom) if geom is not None else None
        x.open("Placemark")
        x.leaf("name", waypoint_name(t, width))
        x.leaf("description", waypoint_desc(t) + ("\n" + GCJ02_NOTE if gcj02 else ""))
        x.leaf("styleUrl", "#target")
        x.open("ExtendedData")
        props = t.properties()
        props["lon"], props["lat"] = round(lon, 7), round(lat, 7)
        props["coord_system"] = "GCJ-02" if gcj02 else "WGS84"
        for k, v in props.items():
            x.open("Data", f" name={quoteattr(k)}")
            x.leaf("value", cell(v))
            x.close("Data")
        x.close("ExtendedData")
        _add_geometry(x, (lon, lat), geom)
        x.close("Placemark")
    x.close("Folder")
    if targets.blind_areas:
        crs = parse_crs(targets.crs)
        x.open("Folder")
        x.leaf("name", "Blind areas (no clear view in the flowering window)")
        for i, g in enumerate(targets.blind_areas, start=1):
            geom = polygonal(to_wgs84(g, crs))
            if geom is None:
                continue
            if gcj02:
                geom = _shift(geom)
            x.open("Placemark")
            x.leaf("name", f"blind {i}")
            x.leaf("styleUrl", "#blind")
            _add_geometry(x, None, geom)
            x.close("Placemark")
        x.close("Folder")
    x.close("Document")
    x.close("kml")


def write_kml(targets: TargetList, path: Path, *, gcj02: bool = False) -> Path:
    """Write ``targets.kml`` (or the GCJ-02 copy) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        _write_kml(f, targets, gcj02=gcj02)
    return path
