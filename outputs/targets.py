"""The in-memory target list: the one object every writer reads.

Geometries are shapely polygons in the scene CRS; ``crs`` is that CRS as WKT or "EPSG:n".
Writers transform to WGS84 where their format needs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shapely.geometry.base import BaseGeometry


def area_text(m2: float) -> str:
    """An area for people: whole m^2 from 100 m^2 on, three significant digits below (a drone
    target or blind area can be a fraction of a square metre: "0 m2" read as nothing)."""
    return f"{m2:.0f}" if m2 >= 100 else f"{m2:.3g}"


@dataclass(frozen=True)
class Target:
    target_id: str           # stable id derived from location (not a counter)
    rank: int                # 1 = visit first
    geometry: BaseGeometry   # Polygon or MultiPolygon, scene CRS
    score: float             # mean probability over the patch, 0-1
    score_max: float
    area_m2: float
    lon: float               # WGS84 anchor point: centroid, or inside the largest part
    lat: float
    flowering_obs: int = 0   # clear observations in the flowering phase (min over the patch)
    dates: tuple[str, ...] = ()   # ISO dates of the acquisitions used
    sensor: str = ""
    reason: str = ""
    elevation_m: float | None = None
    slope_deg: float | None = None
    unit: str | None = None

    def properties(self) -> dict:
        """Attributes as a plain dict (lists kept as lists), geometry excluded."""
        return {
            "target_id": self.target_id, "rank": self.rank, "score": self.score,
            "score_max": self.score_max, "area_m2": self.area_m2, "lon": self.lon,
            "lat": self.lat, "elevation_m": self.elevation_m, "slope_deg": self.slope_deg,
            "flowering_obs": self.flowering_obs, "dates": list(self.dates),
            "sensor": self.sensor, "unit": self.unit, "reason": self.reason,
        }


@dataclass(frozen=True)
class TargetList:
    targets: tuple[Target, ...]
    crs: str                                   # scene CRS (WKT or "EPSG:n")
    blind_areas: tuple[BaseGeometry, ...] = field(default=())   # scene CRS
