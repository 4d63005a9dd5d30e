"""Flowering-window features: per-phase composites, phase contrasts and evidence.

For a regional calendar with phases ``pre``, ``flowering`` and ``post``, every reflectance band
and index listed in the config is composited over the clear observations of each phase
(median; max and min for indices; a date in two overlapping phases serves both), and contrasts
between phases are added (flowering - pre, post - flowering). These pixel features need only
the same tile of the Scene; the spatial context below needs a halo around it. Tiles stay
independent for resume and distribution either way. The feature list depends only on the
calendar and the sensor's bands, never on which dates happen to be clear: a phase with no
clear observation gives NaN features (missing, never a silent zero) and evidence 0. Evidence is the count of
clear observations per phase and pixel: dates whose masked reflectance is there (every band
finite), whether or not every index is defined (a zero denominator leaves NaN in that
index's features only).

Feature names: ``<phase>.<stat>.<var>`` and ``<phaseA>-<phaseB>.median.<var>``.

Spatial context (``features.spatial_vars``/``spatial_radii_px``; the Sentinel-2 contrasts and
the drone neighbourhood statistics): local statistics of the per-phase medians
(indices/texture.py), named ``<phase>.<stat>_r<r>.<var>``, appended after the pixel features.
A tile needs a halo of ``features.spatial_px`` pixels (process_tile reads it; window_features
overlaps its dask blocks by it, padding the scene edge with NaN, which the statistics ignore).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import dask
import dask.array as darr
import numpy as np
import pandas as pd
import xarray as xr

from indices.catalogue import compute_indices, load_catalogue
from indices.texture import (
    LEAF_INDEX,
    LEAF_MIN,
    is_relative,
    spatial_block,
    spatial_names,
    split_var,
)
from pipeline.bands import CATEGORICAL_BANDS, check_scene
from pipeline.config import PHASES, Calendar, FeatureConfig
from pipeline.errors import InputError

log = logging.getLogger(__name__)

CONTRASTS: tuple[tuple[str, str], ...] = (("flowering", "pre"), ("post", "flowering"))
#: bands whose flowering brightening carries the petal signal (contrasted like indices)
VISIBLE = ("blue", "green", "red")


@dataclass(frozen=True)
class Features:
    data: xr.DataArray        # (feature, y, x) float32, NaN = missing
    evidence: xr.DataArray    # (phase, y, x) float32 counts of clear observations
    phase_dates: dict[str, list[str]]

    @property
    def names(self) -> list[str]:
        return self.data["feature"].values.tolist()


def phase_membership(times: np.ndarray, calendar: Calendar, phases: tuple[str, ...] | list[str],
                     shifts: tuple[int, int] = (0, 0)
                     ) -> dict[str, tuple[tuple[int, int, int], ...]]:
    """Per phase, ``(date index, lowest shift, highest shift)`` of every date the phase holds
    at some shift of the calendar (whole days later) in ``shifts``: the date belongs to the
    phase at a pixel whose shift lies between the two. A date in two overlapping phases serves
    both (a late-May image can show the bloom and the drying)."""
    days = [dt.date(t.year, t.month, t.day) for t in pd.to_datetime(times)]
    out = {}
    for p in phases:
        held = []
        for i, d in enumerate(days):
            ok = [s for s in range(shifts[0], shifts[1] + 1) if calendar.phases[p].contains(d, s)]
            if ok:  # phases are day ranges: the shifts that hold a date are contiguous
                held.append((i, ok[0], ok[-1]))
        out[p] = tuple(held)
    return out


def dates_in_phases(times: np.ndarray, calendar: Calendar, phases: tuple[str, ...] | list[str],
                    shifts: tuple[int, int] = (0, 0)) -> dict[str, tuple[int, ...]]:
    """Per phase, the indices of the dates it holds (at some shift in ``shifts``)."""
    return {p: tuple(i for i, _, _ in held)
            for p, held in phase_membership(times, calendar, phases, shifts).items()}


def feature_plan(bands: list[str], indices: list[str], phases: list[str],
                 band_medians: bool = True) -> list[tuple[str, str, str, str | None]]:
    """(name, stat, var, phase or contrast) in a fixed order.

    ``band_medians=False`` leaves out the per-phase medians of raw reflectance bands: they
    carry the scene's brightness (terrain illumination, calibration, haze), which shifts from
    one scene to the next; the bands still enter the indices and the phase contrasts."""
    plan: list[tuple[str, str, str, str | None]] = []
    for ph in phases:
        for v in (bands if band_medians else []) + indices:
            plan.append((f"{ph}.median.{v}", "median", v, ph))
        for v in indices:
            plan.append((f"{ph}.max.{v}", "max", v, ph))
            plan.append((f"{ph}.min.{v}", "min", v, ph))
    for a, b in CONTRASTS:
        if a in phases and b in phases:
            for v in indices + [x for x in VISIBLE if x in bands]:
                plan.append((f"{a}-{b}.median.{v}", "contrast", v, f"{a}-{b}"))
    return plan


def nanmedian0(a: np.ndarray) -> np.ndarray:
    """np.nanmedian(a, axis=0) for a few dates: one sort along the (short) first axis, where
    NaNs go last, then the middle of the other values. 3x faster than np.nanmedian, whose
    masked-array path dominated the feature stage (docs/benchmarks.md). Two or three dates
    (the usual phase) are done without a sort, which along the first axis costs more than the
    rest of the features: the same values, to the bit."""
    if len(a) in (2, 3):
        lo, hi = np.fmin.reduce(a, axis=0), np.fmax.reduce(a, axis=0)  # over the non-NaN
        with np.errstate(invalid="ignore"):
            m = 0.5 * (lo + hi)              # the median of 1 or 2 values; NaN if none
        if len(a) == 3:
            x, y, z = a
            mid = np.maximum(np.minimum(x, y), np.minimum(np.maximum(x, y), z))
            full = ~np.isnan(a).any(axis=0)
            m[full] = mid[full]
        return m
    s = np.sort(a, axis=0)
    n = (~np.isnan(a)).sum(axis=0)       # +-inf are values (sorted before NaN), as in numpy
    lo = np.maximum((n - 1) // 2, 0)[None]
    hi = (n // 2)[None]                  # n <= len(a), so n // 2 < len(a)
    with np.errstate(invalid="ignore"):
        m = 0.5 * (np.take_along_axis(s, lo, 0)[0] + np.take_along_axis(s, hi, 0)[0])
    m[n == 0] = np.nan
    return m


def _block_features(block: np.ndarray, phase_idx: tuple[tuple[int, ...], ...],
                    plan_codes: tuple[tuple[int, int, int, int], ...], n_feat: int,
                    n_phase: int, shift: np.ndarray | None = None,
                    windows: tuple[tuple[tuple[int, int], ...], ...] = (),
                    clear: np.ndarray | None = None) -> np.ndarray:
    """numpy kernel: (time, var, y, x) -> (n_feat + n_phase, y, x) float32.

    ``clear`` (time, y, x): the dates observed at each pixel, which the evidence counts (its
    masked reflectance is there); None: where every variable is finite.
    With ``windows`` (per phase, per date of ``phase_idx``: the lowest and highest shift at
    which the phase holds it) and ``shift`` (y, x: each pixel's shift in days), a date enters
    a pixel's phase only where its shift lies in the date's window; elsewhere it counts as not
    observed. One phase's dates are held at a time."""
    _, _, ny, nx = block.shape
    if clear is None:
        clear = np.isfinite(block).all(axis=1)
    out = np.full((n_feat + n_phase, ny, nx), np.nan, dtype="float32")
    med: dict[int, np.ndarray] = {}
    for p, idx in enumerate(phase_idx):
        if not idx:
            out[n_feat + p] = 0
            continue
        seen = clear[list(idx)]
        if windows:
            lo = np.array([w[0] for w in windows[p]], "float32")[:, None, None]
            hi = np.array([w[1] for w in windows[p]], "float32")[:, None, None]
            seen = seen & (shift[None] >= lo) & (shift[None] <= hi)
        # the composites take exactly the observations the evidence counts (a date whose
        # 60 m band was missing at a swath edge entered the medians but not the evidence)
        sub = np.where(seen[:, None], block[list(idx)], np.float32(np.nan))
        out[n_feat + p] = seen.sum(axis=0)
        # one date (a drone flight): the composite is that date, no sort needed
        med[p] = sub[0] if len(idx) == 1 else nanmedian0(sub)
        for f, (stat, var, pa, _) in enumerate(plan_codes):
            if pa != p:
                continue
            if stat == 0:
                out[f] = med[p][var]
            elif stat in (1, 2) and len(idx) == 1:
                out[f] = sub[0, var]
            elif stat in (1, 2):
                # fmax/fmin skip NaN and give NaN only where every date is NaN, without the
                # all-NaN warning (catch_warnings is not thread-safe: tiles run in threads)
                out[f] = (np.fmax if stat == 1 else np.fmin).reduce(sub[:, var], axis=0)
    for f, (stat, var, pa, pb) in enumerate(plan_codes):
        if stat == 3 and pa in med and pb in med:
            with np.errstate(invalid="ignore"):   # inf - inf: NaN (errstate is per thread)
                out[f] = med[pa][var] - med[pb][var]
    return out


@dataclass(frozen=True)
class FeaturePlan:
    """What to compute from a Scene with given bands and dates: fixed before any pixel is read."""
    bands: tuple[str, ...]
    indices: tuple[str, ...]
    phases: tuple[str, ...]
    phase_idx: tuple[tuple[int, ...], ...]
    phase_dates: dict[str, list[str]]
    names: tuple[str, ...]
    codes: tuple[tuple[int, int, int, int], ...]
    #: spatial context: rows of the pixel features (per-phase medians) to filter, radii, stats
    spatial_src: tuple[int, ...] = ()
    spatial_radii: tuple[int, ...] = ()
    spatial_stats: tuple[str, ...] = ()
    #: per spatial source: row of the leaf index that masks it (``<var>@leaf``), else -1
    spatial_mask: tuple[int, ...] = ()
    #: per spatial source: statistics relative to the window mean (``<var>@rel``)
    spatial_rel: tuple[bool, ...] = ()
    #: the last ``n_hidden`` codes compute per-phase medians only the spatial features use
    n_hidden: int = 0
    #: a calendar that moves with elevation: per phase, per date of ``phase_idx``, the lowest
    #: and highest shift (days) at which the phase holds it; the features then need each
    #: pixel's shift (``Calendar.shift_days`` of the DEM). Empty: one calendar for all pixels
    phase_windows: tuple[tuple[tuple[int, int], ...], ...] = ()

    @property
    def n_out(self) -> int:
        return len(self.names) + len(self.phases)

    @property
    def n_pixel(self) -> int:
        """Pixel-local features (the first rows); the spatial ones follow."""
        return len(self.codes) - self.n_hidden

    @property
    def halo(self) -> int:
        return max(self.spatial_radii) if self.spatial_src else 0


def seasons_of(times: np.ndarray, calendar: Calendar,
               member: dict[str, tuple[tuple[int, int, int], ...]]) -> dict[int, list[int]]:
    """The dates the phases hold, by the season they belong to (the year its first phase
    starts in): the phases are month-day windows, so last year's June is 'post' too. A date
    is placed at the lowest calendar shift that holds it."""
    first = next(p for p in PHASES if p in calendar.phases)
    start = tuple(int(v) for v in calendar.phases[first].start.split("-"))
    out: dict[int, list[int]] = {}
    for held in member.values():
        for i, lo, _ in held:
            t = pd.Timestamp(times[i])
            d = dt.date(t.year, t.month, t.day) - dt.timedelta(days=lo)
            year = d.year if (d.month, d.day) >= start else d.year - 1
            if i not in out.setdefault(year, []):
                out[year].append(i)
    return {y: sorted(ix) for y, ix in sorted(out.items())}


def make_plan(scene: xr.DataArray, calendar: Calendar, cfg: FeatureConfig,
              shifts: tuple[int, int] | None = None) -> FeaturePlan:
    """The features of ``scene``'s bands and dates. ``shifts``: the lowest and highest shift
    (days) of the calendar over the scene's pixels, for a calendar that moves with elevation
    (then every date a phase holds at some shift is composited, per pixel only at its own)."""
    check_scene(scene, "features")
    have = scene["band"].values.tolist()
    bands = [b for b in cfg.bands if b in have]
    probe = scene.isel(time=slice(0, 1), y=slice(0, 1), x=slice(0, 1))

    def computable(names: list[str]) -> list[str]:
        return compute_indices(probe, names)["band"].values.tolist() if names else []

    indices = computable(list(cfg.indices))
    # spatial variables need not be pixel features: a band or index only the spatial
    # statistics use (or the leaf mask) is composited per phase in a row that is not output
    need: list[str] = []
    for v in cfg.spatial_vars if cfg.spatial_radii_px else ():
        base, leaf = split_var(v)
        need += [base, LEAF_INDEX] if leaf else [base]
    need = [v for v in dict.fromkeys(need) if v not in bands and v not in indices]
    extra_bands = [v for v in need if v in have]
    extra_indices = computable([v for v in need if v in load_catalogue()])
    variables = bands + extra_bands + indices + extra_indices   # the computed stack
    times = scene["time"].values
    member = phase_membership(times, calendar, list(calendar.phases), shifts or (0, 0))
    held = {p: tuple(i for i, _, _ in m) for p, m in member.items()}
    in_some = {i for ix in held.values() for i in ix}
    unused = [str(t)[:10] for i, t in enumerate(times) if i not in in_some]
    if unused:
        log.info("dates outside the %s calendar are not used: %s", calendar.name, unused)
    seasons = seasons_of(times, calendar, member)
    if len(seasons) > 1:
        # the phases are month-day windows: every year's April is 'April' (June 2023 served
        # as the post phase of a 2024 season, before its pre phase, silently)
        which = "; ".join(f"{y}: {', '.join(str(times[i])[:10] for i in ix)}"
                          for y, ix in seasons.items())
        raise InputError(f"the images come from {len(seasons)} seasons of calendar "
                         f"{calendar.name} ({which}); its phases take month and day only: "
                         "give one season's images per run (several seasons: train "
                         "--manifest, one entry per season)")
    phases = [p for p in PHASES if p in calendar.phases and p in cfg.phases]
    phase_idx = tuple(held[p] for p in phases)
    windows = tuple(tuple((lo, hi) for _, lo, hi in member[p]) for p in phases) \
        if shifts is not None else ()
    if shifts is not None:
        log.info("calendar %s moves with elevation: phases %s over this scene",
                 calendar.name, shift_words(*shifts))
    phase_dates = {p: [str(times[i])[:10] for i in ix] for p, ix in zip(phases, phase_idx)}
    for p, ix in zip(phases, phase_idx):
        if not ix:
            log.warning("no acquisition in the %s phase (%s, calendar %s): its features "
                        "are missing (a model trained on this scene alone does not use them)", p,
                        phase_window(calendar, p, shifts), calendar.name)
    rows = feature_plan(bands, indices, phases, cfg.band_medians)
    stat_code = {"median": 0, "max": 1, "min": 2, "contrast": 3}
    codes = []
    for _, stat, var, ph in rows:
        if stat == "contrast":
            a, b = ph.split("-")  # type: ignore[union-attr]
            codes.append((3, variables.index(var), phases.index(a), phases.index(b)))
        else:
            codes.append((stat_code[stat], variables.index(var), phases.index(ph), -1))
    names = [r[0] for r in rows]

    def can(v: str) -> bool:
        base, leaf = split_var(v)
        return base in variables and (not leaf or LEAF_INDEX in variables)

    svars = [v for v in cfg.spatial_vars if can(v)] if cfg.spatial_radii_px else []
    skipped = [v for v in cfg.spatial_vars if not can(v)]
    if skipped and cfg.spatial_radii_px:
        log.info("spatial features skip variables the scene cannot give: %s", skipped)
    rows_of = {n: i for i, n in enumerate(names)}
    hidden = 0

    def median_row(ph: str, var: str) -> int:
        nonlocal hidden
        key = f"{ph}.median.{var}"
        if key not in rows_of:             # not a pixel feature: a row that is not output
            rows_of[key] = len(codes)
            codes.append((0, variables.index(var), phases.index(ph), -1))
            hidden += 1
        return rows_of[key]

    src, mask, rel = [], [], []
    for ph in phases:
        for v in svars:
            base, leaf = split_var(v)
            rel.append(is_relative(v))
            src.append(median_row(ph, base))
            mask.append(median_row(ph, LEAF_INDEX) if leaf else -1)
    names += spatial_names(phases, svars, cfg.spatial_radii_px, cfg.spatial_stats)
    return FeaturePlan(tuple(bands + extra_bands), tuple(indices + extra_indices),
                       tuple(phases), phase_idx, phase_dates, tuple(names), tuple(codes),
                       tuple(src), tuple(cfg.spatial_radii_px) if src else (),
                       tuple(cfg.spatial_stats) if src else (), tuple(mask), tuple(rel),
                       hidden, windows)


def block_features(block: xr.DataArray, plan: FeaturePlan,
                   shift: np.ndarray | None = None) -> np.ndarray:
    """A masked Scene block (time, band, y, x) -> (features + evidence per phase, y, x).
    ``shift`` (y, x): each pixel's calendar shift in days, for a plan with phase windows.
    The evidence counts the dates whose reflectance bands are all finite at a pixel (the
    masks blank every band of a masked pixel); an index undefined there (a zero denominator:
    VARI where blue = green + red) is NaN in its own features, the date still observed."""
    if plan.phase_windows and shift is None:
        raise ValueError("the plan's calendar moves with elevation: give each pixel's shift")
    idx = compute_indices(block, list(plan.indices))
    stack = xr.concat([block.sel(band=list(plan.bands)), idx], dim="band") if plan.bands \
        else idx
    arr = np.asarray(stack.transpose("time", "band", "y", "x").values, dtype="float32")
    refl = [i for i, b in enumerate(block["band"].values.tolist()) if b not in CATEGORICAL_BANDS]
    values = np.asarray(block.transpose("time", "band", "y", "x").values)
    clear = np.isfinite(values if len(refl) == values.shape[1] else values[:, refl]).all(axis=1)
    n_rows = len(plan.codes)        # the pixel features, then rows only the spatial ones use
    out = _block_features(arr, plan.phase_idx, plan.codes, n_rows, len(plan.phases),
                          shift, plan.phase_windows, clear)
    if not plan.spatial_src:
        return out
    images = out[list(plan.spatial_src)]
    for i, m in enumerate(plan.spatial_mask):
        if m >= 0:  # <var>@leaf: the variable on green-leaf pixels only
            images[i] = np.where(out[m] >= LEAF_MIN, images[i], np.nan)
    sp = spatial_block(images, plan.spatial_radii, plan.spatial_stats, plan.spatial_rel)
    return np.concatenate([out[:plan.n_pixel], sp, out[n_rows:]])


def _absorb_thin(chunks: tuple[int, ...], h: int) -> tuple[int, ...]:
    out = list(chunks)
    while len(out) > 1 and out[-1] < h:
        out[-2] += out.pop()
    return tuple(out)


def shift_words(lo: int, hi: int) -> str:
    """A calendar's shift over a scene in words: '17 days earlier', '3 to 10 days later'."""
    def one(d: int) -> str:
        return f"{abs(d)} day{'' if abs(d) == 1 else 's'} {'earlier' if d < 0 else 'later'}"
    if lo == hi:
        return "unshifted" if lo == 0 else one(lo)
    if lo >= 0:
        return f"{lo} to {hi} days later"
    if hi <= 0:
        return f"{-hi} to {-lo} days earlier"
    return f"from {one(lo)} to {one(hi)}"


def phase_window(calendar: Calendar, phase: str,
                 shifts: tuple[int, int] | None = None) -> str:
    """'04-01 to 05-05', or with the elevation shifts '03-15 to 04-18 (elevation: 17 days
    earlier)': the dates the phase takes over the scene."""
    ph = calendar.phases[phase]
    if not shifts or shifts == (0, 0):
        return f"{ph.start} to {ph.end}"
    lo, hi = shifts

    def md(mmdd: str, d: int) -> str:
        # a leap year: a phase may start or end on 02-29
        return (dt.date.fromisoformat(f"2000-{mmdd}") + dt.timedelta(days=d)).strftime("%m-%d")
    return f"{md(ph.start, lo)} to {md(ph.end, hi)} (elevation: {shift_words(lo, hi)})"


def shift_range(shift: xr.DataArray | None) -> tuple[int, int] | None:
    """The lowest and highest calendar shift (days) of a scene's pixels (one pass over the
    DEM), or None without a shift."""
    if shift is None:
        return None
    lo, hi = dask.compute(shift.min(), shift.max())
    return int(lo), int(hi)


def window_features(scene: xr.DataArray, calendar: Calendar, cfg: FeatureConfig,
                    shift: xr.DataArray | None = None) -> Features:
    """Lazy features (feature, y, x) and evidence (phase, y, x) from a masked Scene.
    ``shift`` (y, x, on the scene's grid): each pixel's calendar shift in days
    (``Calendar.shift_days`` of the DEM) for a calendar that moves with elevation (required
    then: without it every pixel would take the reference elevation's phases, silently). An
    in-memory scene is chunked (one block)."""
    if calendar.shifts_with_elevation and shift is None:
        raise InputError(f"calendar {calendar.name} moves with elevation: give each pixel's "
                         "shift (Calendar.shift_days of a DEM on the scene's grid)")
    if not isinstance(scene.data, darr.Array):
        scene = scene.chunk()
    plan = make_plan(scene, calendar, cfg, shift_range(shift))
    coords = {"y": scene["y"], "x": scene["x"]}
    template = scene.isel(time=0, band=0, drop=True)

    h = plan.halo

    def kernel(block: np.ndarray, sh: np.ndarray | None = None) -> np.ndarray:
        da = xr.DataArray(block, dims=("time", "band", "y", "x"),
                          coords={"time": scene["time"].values, "band": scene["band"].values})
        out = block_features(da, plan, None if sh is None else sh[0, 0])
        return out[:, h:out.shape[1] - h, h:out.shape[2] - h] if h else out

    data = scene.data
    if h:  # a trailing block thinner than the halo joins its neighbour (overlap needs depth)
        data = data.rechunk({2: _absorb_thin(data.chunks[2], h),
                             3: _absorb_thin(data.chunks[3], h)})
    srcs = [data]
    if shift is not None:  # (1, 1, y, x) blocks beside the scene's (time, band, y, x) ones
        sh = darr.asarray(shift.data, dtype="float32")[None, None]
        srcs.append(sh.rechunk(((1,), (1,), data.chunks[2], data.chunks[3])))
    if h:  # spatial context: every block overlaps its neighbours; the scene edge is NaN
        srcs = [darr.overlap.overlap(a, depth={0: 0, 1: 0, 2: h, 3: h},
                                     boundary={0: "none", 1: "none", 2: np.nan, 3: np.nan})
                for a in srcs]
    out = darr.map_blocks(kernel, *srcs, dtype="float32", drop_axis=0,
                          chunks=((plan.n_out,), data.chunks[2], data.chunks[3]))
    n = len(plan.names)
    fda = xr.DataArray(out[:n], dims=("feature", "y", "x"),
                       coords={"feature": list(plan.names), **coords})
    eda = xr.DataArray(out[n:], dims=("phase", "y", "x"),
                       coords={"phase": list(plan.phases), **coords})
    for da in (fda, eda):
        da.rio.write_crs(template.rio.crs, inplace=True).rio.write_transform(
            template.rio.transform(), inplace=True)
    return Features(fda, eda, plan.phase_dates)
