"""Sensors as data: ``configs/sensors/<name>.yaml`` -> a frozen :class:`SensorSpec`.

A sensor file names the bands as a product or orthomosaic names them, maps each onto a
canonical band (``pipeline.bands.CANONICAL_BANDS``, the Awesome Spectral Indices names) by its
centre wavelength, and says how digital numbers become reflectance. A new camera is a new YAML
file, not new code. Schema (unknown keys are refused)::

    name: p4m                      # file stem; used as the Scene's ``sensor`` attribute
    kind: drone                    # satellite | drone
    description: DJI P4 Multispectral
    resolution_m: 0.05             # typical ground sampling distance
    scaling: auto                  # auto | float | uint16_32768 | dn10000
    file_patterns: ["*.tif"]       # glob patterns of the files this sensor's products use
    stack_order: [blue, ...]       # optional: product band names in a stacked file's order
                                   # (default: the order of ``bands``)
    classification_band: SCL       # optional: a categorical layer of the product (Sentinel-2
                                   # L2A's scene classification) that a stacked file may carry
                                   # as one more band after ``stack_order``
    bands:                         # one entry per band that is read
      - {name: blue, canonical: blue, wavelength_nm: 450, resolution_m: 0.05,
         aliases: [blue, b]}       # aliases: names in band descriptions / file-name suffixes
    dropped:                       # optional: bands a stacked file holds but that are discarded
      - {name: green_531, wavelength_nm: 531, aliases: [...], reason: "..."}
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipeline.bands import CANONICAL_BANDS, CATEGORICAL_BANDS, canonical_name
from pipeline.config import load_yaml
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Folder of the sensor files shipped with poppyscan.
SENSORS_DIR = Path(__file__).resolve().parents[1] / "configs" / "sensors"
KINDS = ("satellite", "drone")
SCALINGS = ("auto", "float", "uint16_32768", "dn10000")

_TOP_KEYS = {"name", "kind", "description", "resolution_m", "scaling", "file_patterns",
             "stack_order", "classification_band", "bands", "dropped"}
_BAND_KEYS = {"name", "canonical", "wavelength_nm", "resolution_m", "aliases"}
_DROPPED_KEYS = {"name", "wavelength_nm", "aliases", "reason", "resolution_m"}


class SensorBand(NamedTuple):
    """One band: its name in the product, canonical name, centre wavelength, resolution."""
    name: str
    canonical: str | None  # None for a dropped band
    wavelength_nm: float
    resolution_m: float
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SensorSpec:
    name: str
    kind: str
    resolution_m: float
    bands: tuple[SensorBand, ...]
    file_patterns: tuple[str, ...]
    scaling: str
    description: str = ""
    stack_order: tuple[str, ...] = ()
    dropped: tuple[SensorBand, ...] = ()
    source: str = ""
    classification_band: str | None = None

    def stacked_names(self, count: int) -> list[str | None] | None:
        """Canonical names of the bands of a stacked file of ``count`` bands without band
        descriptions: ``band_order``, followed by the classification layer when the file has
        one band more (as the input contract stacks Sentinel-2: B01..B12, then SCL); None when
        ``count`` fits neither."""
        order = list(self.band_order)
        if count == len(order):
            return order
        if self.classification_band and count == len(order) + 1:
            return [*order, canonical_name(self.classification_band)]
        return None

    @property
    def canonical(self) -> dict[str, str]:
        """Product band name -> canonical name (kept bands only)."""
        return {b.name: b.canonical for b in self.bands if b.canonical}

    @property
    def band_order(self) -> tuple[str | None, ...]:
        """Canonical name of each band of a stacked file, in file order (None = dropped)."""
        canon = self.canonical
        return tuple(canon.get(n) for n in self.stack_order)

    def band(self, name: str) -> SensorBand:
        """The band (kept or dropped) with product name or alias ``name`` (any case), else the
        kept band with canonical or Sentinel-2 name ``name`` (files of the input contract
        name bands so)."""
        key = normalise_band_name(name)
        for b in self.bands + self.dropped:
            if key in {normalise_band_name(a) for a in (b.name, *b.aliases)}:
                return b
        canonical = canonical_name(name)         # canonical or Sentinel-2 name (B06)
        for b in self.bands:
            if canonical is not None and b.canonical == canonical:
                return b
        raise KeyError(name)

    def wavelengths(self) -> dict[str, float]:
        """Canonical name -> true centre wavelength (nm) of this sensor's band."""
        return {b.canonical: b.wavelength_nm for b in self.bands if b.canonical}


def normalise_band_name(name: str) -> str:
    """Band names compared case-, space- and dash-insensitively ('Red edge-705' = 'rededge_705')."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def known_sensors() -> list[str]:
    """Names of the sensor files shipped in ``configs/sensors``."""
    return sorted(p.stem for p in SENSORS_DIR.glob("*.yaml"))


@functools.cache
def drone_cameras() -> tuple[SensorSpec, ...]:
    """The shipped drone sensor files, parsed once."""
    return tuple(s for s in (load_sensor(n) for n in known_sensors()) if s.kind == "drone")


def drone_camera_for_names(names: Iterable[str], pixel_m: float | None = None,
                           prefer: str | None = None) -> SensorSpec | None:
    """The shipped drone camera whose kept bands are exactly the bands these names give (the
    camera's band names or aliases, canonical or Sentinel-2 names; any case), else None. A
    file named by its bands identifies its camera, except where one set of names fits two
    cameras (P4M and RedEdge-MX both call a band 'rededge', and both red edges, 730 and
    717 nm, are canonical 'rededge2'): then ``prefer`` if it is one of them (the camera a
    model was trained on), else the one whose nominal pixel size is nearest ``pixel_m``, and
    None without a clear one."""
    names = list(names)
    want = [canonical_name(n) or n for n in names]   # Sentinel-2 names (B02) as canonical
    hits = []
    for spec in drone_cameras():
        try:
            got = [spec.band(n).canonical for n in want]
        except KeyError:
            continue
        if None not in got and len(set(got)) == len(got) and \
                set(got) == set(spec.canonical.values()):
            hits.append(spec)
    if len(hits) > 1 and prefer in {h.name for h in hits}:
        log.info("bands %s fit the %s; the model's camera, %s, is taken",
                 ", ".join(map(str, names)), " and the ".join(h.name for h in hits), prefer)
        hits = [h for h in hits if h.name == prefer]
    if len(hits) > 1 and pixel_m is not None:
        hits.sort(key=lambda h: abs(h.resolution_m - pixel_m))
        gap = abs(hits[1].resolution_m - pixel_m) - abs(hits[0].resolution_m - pixel_m)
        if gap > 0:
            log.info("bands %s fit the %s and the %s; at %.3g m pixels the %s is taken "
                     "(nominal %.3g m): put the camera in the file name if it is another",
                     ", ".join(map(str, names)), hits[0].name, hits[1].name, pixel_m,
                     hits[0].name, hits[0].resolution_m)
            hits = hits[:1]
    return hits[0] if len(hits) == 1 else None


def load_sensor(name_or_path: str | Path | SensorSpec) -> SensorSpec:
    """A shipped sensor by name (``'p4m'``) or any sensor YAML file by path."""
    if isinstance(name_or_path, SensorSpec):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix.lower() in (".yaml", ".yml") or path.is_file()):
        path = SENSORS_DIR / f"{text.lower()}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown sensor {text!r}; known sensors: "
                              f"{', '.join(known_sensors())} (or give a sensor YAML file)")
    return _parse(load_yaml(path, "sensor file"), path)


def _parse(raw: object, path: Path) -> SensorSpec:
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{path}: {msg}")

    if not isinstance(raw, dict):
        raise fail("expected a mapping with name, kind, bands, ...")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("name", "kind", "resolution_m", "bands"):
        if key not in raw:
            raise fail(f"missing key {key!r}")
    kind = str(raw["kind"])
    if kind not in KINDS:
        raise fail(f"kind {kind!r} must be one of {KINDS}")
    scaling = str(raw.get("scaling", "auto"))
    if scaling not in SCALINGS:
        raise fail(f"scaling {scaling!r} must be one of {SCALINGS}")
    try:
        resolution = float(raw["resolution_m"])
    except (TypeError, ValueError):
        raise fail("resolution_m must be a number") from None

    def band(entry: object, dropped: bool) -> SensorBand:
        allowed = _DROPPED_KEYS if dropped else _BAND_KEYS
        if not isinstance(entry, dict) or "name" not in entry or "wavelength_nm" not in entry:
            raise fail(f"band entry {entry!r} needs name and wavelength_nm")
        extra = set(entry) - allowed
        if extra:
            raise fail(f"band {entry['name']!r}: unknown keys {sorted(extra)}")
        canonical = None
        if not dropped:
            canonical = entry.get("canonical")
            if canonical not in CANONICAL_BANDS:
                raise fail(f"band {entry['name']!r}: canonical {canonical!r} is not one of "
                           f"{CANONICAL_BANDS}")
        try:
            wl = float(entry["wavelength_nm"])
            res = float(entry.get("resolution_m", resolution))
        except (TypeError, ValueError):
            raise fail(f"band {entry['name']!r}: wavelength_nm/resolution_m must be numbers") \
                from None
        aliases = tuple(str(a) for a in entry.get("aliases", ()))
        return SensorBand(str(entry["name"]), canonical, wl, res, aliases)

    if not isinstance(raw["bands"], list) or not raw["bands"]:
        raise fail("bands must be a non-empty list")
    bands = tuple(band(e, False) for e in raw["bands"])
    dropped = tuple(band(e, True) for e in raw.get("dropped") or ())
    canon = [b.canonical for b in bands]
    dupes = sorted({c for c in canon if canon.count(c) > 1})  # type: ignore[type-var]
    if dupes:
        raise fail(f"canonical bands {dupes} are given twice; keep one and list the other "
                   "under 'dropped'")
    names = [b.name for b in bands + dropped]
    if len(set(map(normalise_band_name, names))) != len(names):
        raise fail(f"band names repeat: {names}")
    stack_order = tuple(str(s) for s in raw.get("stack_order") or [b.name for b in bands])
    known = {normalise_band_name(n) for n in names}
    missing = [s for s in stack_order if normalise_band_name(s) not in known]
    if missing:
        raise fail(f"stack_order names unknown bands {missing}")
    classification = raw.get("classification_band")
    if classification is not None and canonical_name(str(classification)) \
            not in CATEGORICAL_BANDS:
        raise fail(f"classification_band {classification!r} is not a categorical layer "
                   f"({', '.join(CATEGORICAL_BANDS)}; SCL for Sentinel-2)")
    return SensorSpec(
        name=str(raw["name"]), kind=kind, resolution_m=resolution, bands=bands,
        file_patterns=tuple(str(p) for p in raw.get("file_patterns") or ()), scaling=scaling,
        description=str(raw.get("description", "")), stack_order=stack_order,
        dropped=dropped, source=str(path),
        classification_band=None if classification is None else str(classification))
