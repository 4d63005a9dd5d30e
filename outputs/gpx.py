"""``targets.gpx``: GPX 1.1 waypoints for handheld GPS units and phone navigation apps.

One ``wpt`` per target at its WGS84 anchor point (centroid, or inside its largest part), in
rank order. ``name`` is at most 14 characters
(older Garmin units truncate beyond that): ``T001-`` plus the start of the id's geohash (9
characters, a cell of about 5 m: the id's ``ps-`` would leave 6, a cell of about 1 km, and
adjacent flights surveyed apart gave the same name to different places, which a GPS unit that
keeps one waypoint per name merges), so the rank sorts and the name still tells places apart.
A list of 1000 targets or more pads every rank to 4 digits (``T0001-``, 8 geohash characters,
a cell of about 38 x 19 m), so that names still sort in rank order.
``desc`` carries score, area and the full id.
Child elements follow the order the GPX 1.1 schema requires (ele, name, desc, sym, type).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from outputs.atomic import write_bytes_atomic
from outputs.ranking import ID_PREFIX
from outputs.targets import Target, TargetList, area_text

GPX_NS = "http://www.topografix.com/GPX/1/1"
NAME_MAX = 14


def rank_width(targets: TargetList) -> int:
    """Digits of the rank in a waypoint name: 3, or as many as the list's last rank needs,
    so that every name of the list sorts in rank order (``T1000`` sorted between ``T100``
    and ``T101``)."""
    return max(3, len(str(max((t.rank for t in targets.targets), default=1))))


def waypoint_name(t: Target, width: int = 3) -> str:
    """``T{rank}-`` (zero-padded to ``width`` digits) and the start of the id's geohash, at
    most 14 characters."""
    head = f"T{t.rank:0{width}d}-"
    return head + t.target_id.removeprefix(ID_PREFIX)[:max(NAME_MAX - len(head), 0)]


def waypoint_desc(t: Target) -> str:
    """Human-readable one-liner: score, area and full target id."""
    parts = [f"rank {t.rank}", f"score {t.score:.2f} (max {t.score_max:.2f})",
             f"area {area_text(t.area_m2)} m2", f"id {t.target_id}"]
    if t.flowering_obs:
        parts.append(f"{t.flowering_obs} clear flowering obs")
    else:   # a blind-area target: the team should know what it was scored on
        parts.append("not seen in bloom (no clear flowering image): scored from the other "
                     "phases")
    if t.reason:
        parts.append(t.reason)
    return "; ".join(parts)


def gpx_bytes(targets: TargetList) -> bytes:
    """The GPX 1.1 document as UTF-8 bytes."""
    ET.register_namespace("", GPX_NS)
    q = lambda tag: f"{{{GPX_NS}}}{tag}"
    root = ET.Element(q("gpx"), {"version": "1.1", "creator": "poppyscan"})
    meta = ET.SubElement(root, q("metadata"))
    ET.SubElement(meta, q("name")).text = "poppyscan targets"
    ET.SubElement(meta, q("desc")).text = (
        f"{len(targets.targets)} ranked targets; WGS84 points on the targets; visit in rank order")
    width = rank_width(targets)
    for t in sorted(targets.targets, key=lambda t: t.rank):
        wpt = ET.SubElement(root, q("wpt"), {"lat": f"{t.lat:.7f}", "lon": f"{t.lon:.7f}"})
        if t.elevation_m is not None and math.isfinite(t.elevation_m):
            ET.SubElement(wpt, q("ele")).text = f"{t.elevation_m:.1f}"
        ET.SubElement(wpt, q("name")).text = waypoint_name(t, width)
        ET.SubElement(wpt, q("desc")).text = waypoint_desc(t)
        ET.SubElement(wpt, q("sym")).text = "Flag, Red"
        ET.SubElement(wpt, q("type")).text = "poppyscan target"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_gpx(targets: TargetList, path: Path) -> Path:
    """Write ``targets.gpx`` atomically."""
    return write_bytes_atomic(path, gpx_bytes(targets))
