"""The spectral index catalogue: load ``catalogue.yaml`` and compute indices over a Scene.

The catalogue is data (``indices/catalogue.yaml``): one entry per index with a formula over the
canonical band names, the bands it needs, named constants, a reference and the Awesome Spectral
Indices name when the formula is the same. Formulas are evaluated by :mod:`indices.expr`, never
by ``eval``. :func:`compute_indices` builds a lazy graph: a dask-backed scene stays dask.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml

from indices.expr import FormulaError, evaluate, names_in
from pipeline.bands import CANONICAL_BANDS, check_scene
from pipeline.errors import BandError, ConfigError

__all__ = [
    "DEFAULT_CATALOGUE",
    "IndexDef",
    "computable_indices",
    "compute_index",
    "compute_indices",
    "load_catalogue",
]

logger = logging.getLogger(__name__)

#: The catalogue shipped with poppyscan.
DEFAULT_CATALOGUE: Path = Path(__file__).with_name("catalogue.yaml")


@dataclass(frozen=True)
class IndexDef:
    """One spectral index: a formula over canonical band names plus named constants."""

    name: str
    formula: str
    bands: tuple[str, ...]
    reference: str
    description: str
    spyndex_name: str | None
    #: Named constants of the formula as ``(name, value)`` pairs (hashable); see :attr:`constants`.
    params: tuple[tuple[str, float], ...] = ()

    @property
    def constants(self) -> dict[str, float]:
        """The named constants as a dict (e.g. ``{"L": 0.5}``)."""
        return dict(self.params)

    def evaluate(self, bands: Mapping[str, Any]) -> Any:
        """Evaluate the formula on ``bands`` (canonical name -> number/numpy/dask/xarray)."""
        missing = [b for b in self.bands if b not in bands]
        if missing:
            raise BandError(f"index {self.name} needs bands {missing}; add them to the input")
        env: dict[str, Any] = {b: bands[b] for b in self.bands}
        env.update(self.params)
        return evaluate(self.formula, env)


def _entry(name: str, raw: Any, source: Path) -> IndexDef:
    where = f"{source}: index {name!r}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with formula, bands, reference, description")
    unknown_keys = set(raw) - {"formula", "bands", "params", "reference", "description", "spyndex"}
    if unknown_keys:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown_keys)}")
    for key in ("formula", "bands", "reference", "description"):
        if not raw.get(key):
            raise ConfigError(f"{where} lacks '{key}'; add it")
    formula = str(raw["formula"])
    bands = tuple(str(b) for b in raw["bands"])
    bad = [b for b in bands if b not in CANONICAL_BANDS]
    if bad:
        raise ConfigError(f"{where}: bands {bad} are not canonical; "
                          f"use names from {CANONICAL_BANDS}")
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, Mapping):
        raise ConfigError(f"{where}: params must be a mapping of name -> number")
    params: list[tuple[str, float]] = []
    for key, value in params_raw.items():
        if key in CANONICAL_BANDS:
            raise ConfigError(f"{where}: constant {key!r} shadows a band name; rename it")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: constant {key!r} = {value!r} is not a number")
        params.append((str(key), float(value)))
    try:
        used = names_in(formula)
    except FormulaError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    declared = set(bands) | {k for k, _ in params}
    if used - declared:
        raise ConfigError(f"{where}: formula uses undeclared names {sorted(used - declared)}; "
                          "list them under bands or params")
    if set(bands) - used:
        raise ConfigError(f"{where}: bands {sorted(set(bands) - used)} are listed but unused")
    spyndex_name = raw.get("spyndex")
    return IndexDef(
        name=name, formula=formula, bands=bands, reference=str(raw["reference"]),
        description=str(raw["description"]),
        spyndex_name=str(spyndex_name) if spyndex_name else None, params=tuple(params),
    )


@lru_cache(maxsize=8)
def _load(path: Path, stamp: tuple[int, int]) -> dict[str, IndexDef]:
    """Parse and check a catalogue; ``stamp`` (mtime, size) keys the cache to the file version."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"index catalogue {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("indices"), Mapping):
        raise ConfigError(f"index catalogue {path} needs a top-level 'indices:' mapping")
    return {str(name): _entry(str(name), entry, path) for name, entry in raw["indices"].items()}


def load_catalogue(path: Path | None = None) -> dict[str, IndexDef]:
    """Load and check an index catalogue (default: the one shipped in ``indices/``).

    Every formula is parsed by the safe evaluator, every band must be canonical and every name
    the formula uses must be declared as a band or a constant; otherwise :class:`ConfigError`.
    """
    file = Path(path) if path is not None else DEFAULT_CATALOGUE
    try:
        st = file.stat()
    except FileNotFoundError:
        raise ConfigError(f"index catalogue {file} not found; check the path") from None
    return dict(_load(file.resolve(), (st.st_mtime_ns, st.st_size)))


def compute_index(index: IndexDef, scene: xr.DataArray) -> xr.DataArray:
    """One index over ``scene`` (time, band, y, x) -> (time, y, x) float32, lazy if dask
    (computed in float64)."""
    present = set(scene["band"].values.tolist())
    missing = [b for b in index.bands if b not in present]
    if missing:
        raise BandError(f"index {index.name} needs bands {missing} that the scene lacks; "
                        "choose indices the sensor's bands allow")
    # evaluated in float64, returned in float32: near a zero numerator or denominator float32
    # arithmetic was 1e-4 to 1e-3 off (EVI 456.04 for 456.07; CIre, BSI on a snowy patch)
    bands = {b: scene.sel(band=b, drop=True).astype(np.float64) for b in index.bands}
    out = index.evaluate(bands)
    if not isinstance(out, xr.DataArray):  # a formula without bands would give a number
        raise ConfigError(f"index {index.name} did not produce an array; check its formula")
    return out.astype(np.float32, copy=False)


def _plan(bands: Iterable[str], names: Sequence[str] | None,
          catalogue: Mapping[str, IndexDef] | None) -> tuple[list[IndexDef], list[str]]:
    """Split the wanted indices into computable ones and 'NAME (missing b1, b2)' notes."""
    cat = load_catalogue() if catalogue is None else dict(catalogue)
    wanted = list(cat) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in cat]
    if unknown:
        raise ConfigError(f"unknown index names {unknown}; the catalogue has {sorted(cat)}")
    present = set(bands)
    computable: list[IndexDef] = []
    skipped: list[str] = []
    for name in wanted:
        missing = [b for b in cat[name].bands if b not in present]
        if missing:
            skipped.append(f"{name} (missing {', '.join(missing)})")
        else:
            computable.append(cat[name])
    return computable, skipped


def computable_indices(
    bands: Iterable[str], names: Sequence[str] | None = None, *,
    catalogue: Mapping[str, IndexDef] | None = None,
) -> list[str]:
    """Names of the indices (all, or those in ``names``) that ``bands`` allow, in order.

    The same selection :func:`compute_indices` makes, without data: for planning feature
    names (e.g. from a sensor's band list). Unknown names raise :class:`ConfigError`.
    """
    return [index.name for index in _plan(bands, names, catalogue)[0]]


def compute_indices(
    scene: xr.DataArray, names: Sequence[str] | None = None, *,
    catalogue: Mapping[str, IndexDef] | None = None,
) -> xr.DataArray:
    """Compute spectral indices of a Scene.

    ``scene`` is a Scene (time, band, y, x) float32 with canonical band names. Returns a
    DataArray (time, band, y, x) float32 whose ``band`` coordinate holds the index names, in
    the order asked (catalogue order when ``names`` is None, meaning every index the scene's
    bands allow). Indices whose bands the scene lacks are skipped with one ``logger.info``
    notice naming each skipped index and its missing bands; an unknown name raises
    :class:`ConfigError`. Lazy: a dask-backed scene gives a dask-backed result (nothing is
    computed). Division by zero gives NaN; NaN inputs give NaN.
    """
    check_scene(scene, "indices")
    per_band = [c for c in scene.coords if c != "band" and "band" in scene[c].dims]
    scene = scene.drop_vars(per_band)
    computable, skipped = _plan(scene["band"].values.tolist(), names, catalogue)
    if skipped:
        logger.info("skipping %d index(es) the scene's bands cannot give: %s",
                    len(skipped), "; ".join(skipped))
    if not computable:
        empty = scene.isel(band=slice(0, 0)).assign_coords(band=np.array([], dtype=str))
        return empty.astype(np.float32).rename("indices")
    layers = [compute_index(index, scene) for index in computable]
    out = xr.concat(layers, dim="band", coords="minimal", compat="override",
                    join="exact", combine_attrs="drop")
    out = out.assign_coords(band=np.array([i.name for i in computable], dtype=str))
    out = out.transpose("time", "band", "y", "x")
    if out.chunks is not None:  # time and band in one chunk, as in a Scene (coords untouched)
        out = out.copy(data=out.data.rechunk({0: -1, 1: -1}))
    out.attrs = dict(scene.attrs)
    out.name = "indices"
    return out
