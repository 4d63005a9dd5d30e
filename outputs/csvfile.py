"""``targets.csv``: one row per target for spreadsheets and phone apps that import points.

Columns start ``target_id, rank, lat, lon, score, area_m2`` (what a field team reads first),
then the other attributes, and end with ``coord_system`` (``WGS84`` or ``GCJ-02``) so a copy
shifted for Chinese map apps can never be mistaken for WGS84. Decimal degrees with 7 decimals,
``dates`` ``;``-joined, empty cells for missing values, UTF-8 without BOM, rank order.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from outputs.atomic import write_text_atomic
from outputs.gcj02 import wgs84_to_gcj02
from outputs.targets import TargetList

FIRST = ("target_id", "rank", "lat", "lon", "score", "area_m2")
COLUMNS = (*FIRST, "score_max", "elevation_m", "slope_deg", "flowering_obs", "dates", "sensor",
           "unit", "reason", "coord_system")


def cell(v: object) -> str:
    """A value as text for a CSV cell or a KML ``Data`` value: empty when missing (None,
    NaN), lists ``;``-joined, numbers written out (``0.00001``, never ``1e-05``: a
    longitude within 11 m of the prime meridian came out so)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    if isinstance(v, float):
        return np.format_float_positional(v, trim="0")
    return str(v)


def csv_text(targets: TargetList, *, gcj02: bool = False) -> str:
    """The CSV document as text; ``gcj02`` shifts lat/lon to GCJ-02 and labels the rows so."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for t in sorted(targets.targets, key=lambda t: t.rank):
        p = t.properties()
        lon, lat = float(t.lon), float(t.lat)
        if gcj02:
            x, y = wgs84_to_gcj02(lon, lat)
            lon, lat = float(x), float(y)
        p["lon"], p["lat"] = round(lon, 7), round(lat, 7)
        p["coord_system"] = "GCJ-02" if gcj02 else "WGS84"
        w.writerow([cell(p[c]) for c in COLUMNS])
    return buf.getvalue()


def write_csv(targets: TargetList, path: Path, *, gcj02: bool = False) -> Path:
    """Write ``targets.csv`` (or the GCJ-02 copy) atomically."""
    return write_text_atomic(path, csv_text(targets, gcj02=gcj02))
