"""One entry point that writes a ranked target list in every format the config asks for.

Every file is written under a temporary name in ``out_dir`` and moved into place with
``os.replace`` (see :mod:`outputs.atomic`). GeoJSON, CSV, GPX and KML are WGS84; the
GeoPackage keeps the scene CRS. GCJ-02 copies (``targets_gcj02.csv``, ``targets_gcj02.kml``)
are written only on request, for Chinese phone map apps.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from outputs.csvfile import write_csv
from outputs.geojson import write_blind_areas_geojson, write_geojson
from outputs.gpkg import write_gpkg
from outputs.gpx import write_gpx
from outputs.kml import write_kml
from outputs.targets import TargetList
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

_WRITERS: dict[str, tuple[str, Callable[[TargetList, Path], Path]]] = {
    "geojson": ("targets.geojson", write_geojson),
    "gpkg": ("targets.gpkg", write_gpkg),
    "csv": ("targets.csv", write_csv),
    "gpx": ("targets.gpx", write_gpx),
    "kml": ("targets.kml", write_kml),
}
FORMATS = tuple(_WRITERS)
#: every target file a run can write (the formats and their GCJ-02 copies)
TARGET_FILES = frozenset([name for name, _ in _WRITERS.values()]
                         + ["targets_gcj02.csv", "targets_gcj02.kml"])


def write_targets(targets: TargetList, out_dir: Path,
                  formats: Sequence[str] = FORMATS, *, gcj02: bool = False
                  ) -> list[Path]:
    """Write ``targets.<fmt>`` for each format (plus GCJ-02 copies of the CSV and KML among
    them if ``gcj02``).

    Returns the written paths in the order written. Unknown formats raise ConfigError before
    anything is written.
    """
    wanted = [f.lower().lstrip(".") for f in formats]
    unknown = sorted(set(wanted) - set(_WRITERS))
    if unknown:
        raise ConfigError(f"unknown target format(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in dict.fromkeys(wanted):            # keep order, drop duplicates
        name, writer = _WRITERS[fmt]
        written.append(writer(targets, out_dir / name))
    if gcj02:
        # copies of the CSV and KML asked for (their texts point at the WGS84 originals)
        copies = [(f, w) for f, w in (("csv", write_csv), ("kml", write_kml)) if f in wanted]
        if not copies:
            log.warning("outputs.gcj02 makes GCJ-02 copies of targets.csv and targets.kml, "
                        "but neither format is asked for: no copy written")
        for fmt, writer in copies:
            written.append(writer(targets, out_dir / f"targets_gcj02.{fmt}", gcj02=True))
    log.debug("wrote %d targets to %s (%s)", len(targets.targets), out_dir,
             ", ".join(p.name for p in written))
    return written


def write_blind_areas(targets: TargetList, out_dir: Path) -> Path:
    """Write ``blind_areas.geojson`` (RFC 7946, WGS84) from ``targets.blind_areas``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_blind_areas_geojson(targets, out_dir / "blind_areas.geojson")
