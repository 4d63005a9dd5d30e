"""GeoPackage layer ``targets`` in the scene CRS, written with pyogrio's raw (numpy + WKB) API.

pyogrio 0.13's ``write_dataframe`` needs geopandas and ``write_arrow`` needs pyarrow; neither
is a dependency, so this uses ``pyogrio.raw.write`` with one numpy array per field and the
geometries as WKB. Lists (``dates``) become ``;``-joined ISO strings; missing numbers are
NULL. Geometries keep the scene CRS (metres), so areas and distances stay exact in a GIS.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from pyogrio.raw import write as ogr_write
from shapely.geometry import MultiPolygon

from outputs.atomic import atomic_path
from outputs.geojson import parse_crs, polygonal
from outputs.targets import TargetList

LAYER = "targets"

_INT_FIELDS = ("rank", "flowering_obs")
_FLOAT_FIELDS = ("score", "score_max", "area_m2", "lon", "lat", "elevation_m", "slope_deg")
# Field order as in Target.properties(), so every tabular format lists columns alike.
FIELDS = ("target_id", "rank", "score", "score_max", "area_m2", "lon", "lat", "elevation_m",
          "slope_deg", "flowering_obs", "dates", "sensor", "unit", "reason")


def _column(name: str, values: list) -> np.ndarray:
    if name in _INT_FIELDS:
        return np.asarray(values, dtype=np.int32)
    if name in _FLOAT_FIELDS:
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if name == "dates":
        return np.asarray([";".join(v) for v in values], dtype=object)
    return np.asarray(values, dtype=object)


def write_gpkg(targets: TargetList, path: Path) -> Path:
    """Write the ``targets`` layer of ``targets.gpkg`` atomically (rank order, scene CRS)."""
    crs = parse_crs(targets.crs)
    ordered = sorted(targets.targets, key=lambda t: t.rank)
    geoms = [polygonal(t.geometry) for t in ordered]
    multi = any(isinstance(g, MultiPolygon) for g in geoms)
    # GPKG refuses Polygon and MultiPolygon mixed in one layer: promote all if any is multi.
    if multi:
        geoms = [g if g is None or isinstance(g, MultiPolygon) else MultiPolygon([g])
                 for g in geoms]
    wkb = np.asarray([None if g is None else shapely.to_wkb(g) for g in geoms], dtype=object)
    props = [t.properties() for t in ordered]
    field_data = [_column(f, [p[f] for p in props]) for f in FIELDS]
    with atomic_path(path) as tmp:
        ogr_write(tmp, wkb, field_data, list(FIELDS), layer=LAYER, driver="GPKG",
                  geometry_type="MultiPolygon" if multi else "Polygon",
                  crs=crs.to_wkt(), nan_as_null=True)
    return Path(path)
