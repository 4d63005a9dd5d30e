"""Train and detect: the orchestration of the stages.

detect: ingest -> mask -> (terrain) -> features -> predict -> patches -> targets -> files.
The scene is cut into tiles (the chunk size of the config); each tile runs every pixel stage
on its own and its result is saved in ``OUT/.poppyscan/tiles/<fingerprint>/`` as soon as it
finishes (a bounded number of tiles is in flight at once, two per worker), so memory is
bounded by the tiles in flight and a rerun after a crash redoes only what is missing.
The deliverables are assembled from the tile results and moved into OUT at the very end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import rasterio
import shapely
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer
from rasterio import features as rfeatures
from shapely import affinity
from threadpoolctl import threadpool_limits

from classifiers import artifact as model_artifact
from classifiers.artifact import columns_without, feature_phases
from classifiers.augment import augmented
from classifiers.labels import TARGET_CLASS, Labels, read_labels, read_polygons
from classifiers.model import fit_balanced, make_estimator
from classifiers.predict import (
    check_calendar,
    check_fit,
    check_phases,
    pixel_threshold,
    predict_block,
)
from classifiers.sampling import Table, check_classes, join, sample, sample_background
from classifiers.validation import text_table, validate
from indices.window import (
    FeaturePlan,
    block_features,
    dates_in_phases,
    make_plan,
    nanmedian0,
    phase_window,
    shift_range,
    window_features,
)
from outputs import maps, writers
from outputs.atomic import check_can_create, lock_folder, uninterrupted, unlock_folder
from outputs.patches import (
    CandidateFeatures,
    Piece,
    chunk_pieces,
    enclosed,
    gap_polygons,
    merge_blind,
    merge_pieces,
    nearby_groups,
)
from outputs.ranking import area_m2, build_targets, crs_distance, target_patches
from outputs.rasters import write_tiles_raster
from outputs.report import environment, file_digest, write_json_atomic
from pipeline.config import (
    PHASES,
    Calendar,
    ModelConfig,
    SurveyConfig,
    config_from_dict,
    default_config_for,
    load_calendar,
    load_config,
    load_yaml,
    with_overrides,
)
from pipeline.errors import InputError
from pipeline.grid import Grid, pixel_metres
from pipeline.ingest import (
    clip_to_aoi,
    expand_paths,
    first_image_facts,
    open_scene,
    read_dem,
    read_products,
)
from pipeline.masks import apply_masks
from pipeline.readers._raster import read_pixels, scene_sources
from pipeline.scheduler import check_runner, open_runner, run_tiles
from pipeline.sensors import load_sensor

log = logging.getLogger(__name__)

STATE_DIR = ".poppyscan"
#: the files detect writes into --out (some by --formats and outputs.gcj02)
DELIVERABLES = writers.TARGET_FILES | {"probability.tif", "evidence.tif", "blind_areas.geojson",
                                       "quicklook.png", "map.html", "report.json"}
STAGES = ("read", "mask", "features", "predict", "patches", "write")
#: GDAL's block cache while tiles read, in BYTES (rasterio hands an integer GDAL_CACHEMAX to
#: GDALSetCacheMax64, which takes bytes; until the fifteenth session this was meant as 64 MB
#: and was 64 bytes). Effectively no cache: each tile reads its chunks once, and a 64 MB cache
#: measured no faster at 2048 px (read stage 24-28 s against 15-27 s, under load) for 50-170 MB
#: more memory; the default (5 % of RAM) only grows.
TILE_GDAL_CACHE_BYTES = 64
#: share of the seen pixels at the threshold above which detect warns that the model does
#: not transfer: poppy is rare, and on the independent drone simulator (0.3-1.4 % poppy)
#: flights where a model trained on another flagged 10-26 % came out as field-sized targets
#: (docs/drone.md "How much ground the targets cover")
CANDIDATE_SHARE_WARN = 0.10
#: version of the saved tile results: a run saved by another version starts afresh
TILE_FORMAT = 8
#: pixel sizes (training scenes, or a survey against them) this far apart are warned about:
#: the neighbourhood features are in pixels (a drone flight flown a little higher is not)
PIXEL_SIZE_TOLERANCE = 1.25


# ----------------------------------------------------------------------------- shared
def default_config(images: Sequence[Path], model_dir: Path | None = None,
                   dem: Path | None = None) -> SurveyConfig:
    """The config of a run given no ``--config``: for detect, the one the model was trained
    with (its features must match); else the shipped config for the images' pixel size
    and bands (Sentinel-2 from 2 m up; below, drone multispectral or RGB)."""
    trained = _training_config(model_dir) if model_dir is not None else None
    if trained is not None:
        log.info("no --config: using the model's training config (%s)",
                 Path(model_dir) / model_artifact.SIDECAR_FILE)
        return trained
    pixel, bands = first_image_facts(images, dem)
    path = default_config_for(pixel, bands)
    log.warning("no --config: using %s for pixels of %.3g m and bands %s",
                path.relative_to(path.parents[1]), pixel, ", ".join(bands))
    return load_config(path)


def _training_config(model_dir: Path) -> SurveyConfig | None:
    """The config a model was trained with (model.json), None without a readable one (loading
    the model says what is wrong, with the fix)."""
    sidecar = Path(model_dir) / model_artifact.SIDECAR_FILE
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        stored = meta.get("config")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(stored, dict):
        return None
    # a model that carries its calendars needs no calendar file (detect takes the one the
    # images' dates fit): moved with its project, it still runs
    return config_from_dict(stored, f"{sidecar} (the model's training config)",
                            calendar=not meta.get("calendars"))


def detect_config(own: SurveyConfig, model_dir: Path) -> SurveyConfig:
    """detect's ``--config``: a file that names no ``sensor`` holds changes to the model's
    training config, the settings it leaves out come from there (from the shipped Sentinel-2
    config, a drone model's survey failed: 'the model's features do not fit the inputs')."""
    base = _training_config(model_dir)
    if "sensor" in own.given or base is None:
        return own
    values = {}
    for dotted in own.given:
        node: Any = own
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else getattr(node, part)
        values[dotted] = node
    out = with_overrides(base, **values)
    log.info("%s names no sensor: the settings it does not give come from the model's "
             "training config", own.source)
    out = out.model_copy(update={"source": f"{own.source} over {base.source}"})
    out._given = own.given
    return out


def _sensor_file(cfg: SurveyConfig):
    """The sensor file the config names (a camera of one's own), read; None for a name."""
    return load_sensor(cfg.sensor) if Path(cfg.sensor).suffix.lower() in (".yaml", ".yml") \
        else None


def prepare_scene(images: Sequence[Path], cfg: SurveyConfig, *, dem: Path | None,
                  aoi: Path | None = None, chunks: int | None = None,
                  camera: str | None = None, whole: bool = False) -> tuple:
    """Ingest the images (and DEM) lazily on one grid; nothing is computed. A sensor *file*
    as the config's ``sensor`` (a camera of one's own, another reflectance scaling) reads
    every image with it; a sensor name is for the record (the readers tell the sensor from
    each file's metadata). ``camera``: the drone camera to take where a file's band names fit
    more than one (detect: the model's, so a P4M model reads a P4M flight flown higher as P4M,
    not by its pixel size as the RedEdge-MX it would otherwise resemble). Returns the scene
    and the DEM on its grid; ``whole``: also the scene and DEM before the AOI's crop (the
    same objects without an AOI; that DEM only under a terrain correction, which is fitted
    on them)."""
    chunks = chunks or cfg.run.chunk_size
    sensor = _sensor_file(cfg)
    scene = open_scene(images, sensor, chunks=chunks, dem=dem, prefer=camera)
    _warn_other_family(cfg, scene.attrs["sensor"])
    uncut = scene
    if aoi is not None:               # read in the scene's CRS, so the scene is opened first
        from pipeline.aoi import read_aoi
        # with the margin a tile reads around itself (the masks' and the spatial features'),
        # nothing blanked: detect keeps its outputs to the AOI (TileContext.aoi)
        scene = clip_to_aoi(scene, read_aoi(aoi, scene.rio.crs), chunks,
                            margin=cfg.features.spatial_px + cfg.masks.max_flower_px)
    dem_da = read_dem(dem, Grid.of(scene.isel(time=0, band=0)), chunks) if dem else None
    if not whole:
        return scene, dem_da
    if uncut is scene or dem is None or cfg.terrain_correction == "none":
        # (the uncut scene's DEM serves the terrain correction's fit only)
        return scene, dem_da, uncut, dem_da if uncut is scene else None
    with _quiet("pipeline.ingest"):   # its coverage was said for the AOI's window
        uncut_dem = read_dem(dem, Grid.of(uncut.isel(time=0, band=0)), chunks)
    return scene, dem_da, uncut, uncut_dem


@contextlib.contextmanager
def _quiet(logger: str):
    """The warnings of ``logger`` left out for a moment (a second read of the same input)."""
    lg = logging.getLogger(logger)
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def _warn_other_family(cfg: SurveyConfig, sensor: str) -> None:
    """A config tuned for satellite pixels on drone images, or the other way round: its
    lengths (edge erosion, minimum mapping unit, merge distance) and features are for the
    other's pixels (a P4M flight trained with the Sentinel-2 config: a 200 m^2 unit)."""
    if Path(cfg.sensor).suffix:   # a sensor file reads every image: it is the images' sensor
        return
    satellite = {"sentinel2"}
    if (cfg.sensor in satellite) != (sensor in satellite):
        fit = "configs/survey-sentinel2.yaml" if sensor in satellite else \
            "configs/survey-drone.yaml (RGB cameras: survey-drone-rgb.yaml)"
        log.warning("the config (%s) is set for %s images but these are %s: its lengths and "
                    "features are for other pixels; use %s or a config based on it",
                    cfg.source or "sensor " + cfg.sensor, cfg.sensor, sensor, fit)


def masks(scene: xr.DataArray, cfg: SurveyConfig,
          window: tuple[slice, slice] | None = None) -> xr.DataArray:
    return apply_masks(scene, rescue_flowers=cfg.masks.rescue_flowers,
                       max_flower_px=cfg.masks.max_flower_px,
                       flower_swir16_max=cfg.masks.flower_swir16_max, window=window)


def terrain_fit(masked: xr.DataArray, dem: xr.DataArray | None, cfg: SurveyConfig):
    """Scene-wide terrain parameters (None when the correction is off)."""
    if cfg.terrain_correction == "none":
        return None
    if dem is None:
        raise InputError(f"terrain_correction is '{cfg.terrain_correction}' but no --dem was "
                         "given; give a DEM or set terrain_correction: none")
    from indices.terrain import fit_terrain
    return fit_terrain(masked, dem, cfg.terrain_correction)


def mask_and_correct(scene: xr.DataArray, dem: xr.DataArray | None,
                     cfg: SurveyConfig) -> xr.DataArray:
    """Masks, then (when configured) the terrain correction fitted on the whole scene; lazy."""
    masked = masks(scene, cfg)
    fit = terrain_fit(masked, dem, cfg)
    if fit is None:
        return masked
    from indices.terrain import apply_terrain, slope_aspect
    slope, aspect = slope_aspect(dem)
    return apply_terrain(masked, slope, aspect, fit)


def calendar_shift(calendar: Calendar, dem: xr.DataArray | None) -> xr.DataArray | None:
    """Each pixel's calendar shift in days (a calendar that moves with elevation), else None."""
    if not calendar.shifts_with_elevation:
        return None
    if dem is None:
        raise InputError(f"calendar '{calendar.name}' moves its phases "
                         f"{calendar.elevation_shift_days_per_100m:g} days per 100 m of "
                         "elevation: give a DEM (--dem, or dem: in a manifest), or use a "
                         "calendar without elevation_shift_days_per_100m")
    # one pass over the DEM: pixels without an elevation (voids, beyond its edge) keep the
    # reference elevation's phases, which a user of a calendar that moves with elevation
    # must know of
    void = float(np.isnan(dem).mean())
    if void > 0:
        log.warning("the DEM has no elevation for %.3g%% of the images (voids or beyond its "
                    "edge): there the phases of calendar '%s' are those at its reference "
                    "elevation (%g m)", 100 * void, calendar.name,
                    calendar.reference_elevation_m)
    return calendar.shift_days(dem)


#: the files of a Shapefile that change what it says (geometry, attributes, CRS, encoding)
_SHAPEFILE_PARTS = {".shp", ".shx", ".dbf", ".prj", ".cpg"}


def _digest_inputs(images: Sequence[Path], dem: Path | None,
                   others: Sequence[Path | None] = ()) -> dict[str, str]:
    """Hashes of the files a run reads: the image products (a folder a reader claims, such as
    a .SAFE, with every file in it), not whatever else shares their folder (labels, earlier
    outputs), the DEM and ``others`` (an AOI, an exclusion file; a Shapefile with its .dbf,
    .prj and .cpg)."""
    out = {}
    extra = [Path(p) for p in (dem, *others) if p is not None]
    for p in [*expand_paths(images, dem), *extra]:
        files = (sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else
                 sorted(q for q in p.parent.glob(f"{glob.escape(p.stem)}.*")
                        if q.suffix.lower() in _SHAPEFILE_PARTS)
                 if p.suffix.lower() == ".shp" else [p])
        for f in files:
            out[str(f.resolve())] = file_digest(f)   # absolute: provenance, wherever run from
    return out


# ----------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainScene:
    images: tuple[Path, ...]
    labels: Path
    dem: Path | None = None
    calendar: str | None = None


def read_manifest(path: Path) -> list[TrainScene]:
    """A YAML list (or ``scenes:`` list) of {images, labels, dem?, calendar?}; relative paths
    (a calendar file's too) are taken from the manifest's folder. ``images`` are files,
    folders or glob patterns (``scene/S2_*.tif``), one or a list. Every entry is checked here,
    before any scene is read: a later scene's mistake must not cost the earlier scenes' work."""
    from pipeline.errors import ConfigError
    path = Path(path)
    doc = load_yaml(path, "manifest", InputError)
    if isinstance(doc, dict) and set(doc) - {"scenes"}:
        raise InputError(f"{path}: unknown top-level keys {sorted(set(doc) - {'scenes'})}; "
                         "a manifest is a list of scenes (or 'scenes:' with one), and dem "
                         "and calendar go inside each scene")
    entries = doc.get("scenes") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: expected a list of scenes (images, labels, dem, calendar)")
    base = path.parent

    def looked(x: Any) -> str:
        """Where a relative path that is not there was looked for."""
        return ("" if Path(str(x)).is_absolute() else
                f" in {base.resolve()} (paths are taken from the manifest's folder)")

    def text(where: str, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InputError(f"{where}: '{key}' must be a path (text), not {value!r}; quote "
                             "it if it looks like a number or a date")
        return value

    out = []
    for i, e in enumerate(entries):
        where = f"{path}: scene {i + 1}"
        if not isinstance(e, dict) or "images" not in e or "labels" not in e:
            raise InputError(f"{path}: scene {i + 1} needs 'images' and 'labels'")
        unknown = set(e) - {"images", "labels", "dem", "calendar"}
        if unknown:
            raise InputError(f"{path}: scene {i + 1} has unknown keys {sorted(unknown)}; "
                             "allowed: images, labels, dem, calendar")

        imgs = e["images"] if isinstance(e["images"], list) else [e["images"]]
        if not [x for x in imgs if x not in (None, "")]:
            raise InputError(f"{where} has no images; list its image files, folders or "
                             "patterns under 'images'")
        files: list[Path] = []
        for x in (text(where, "images", x) for x in imgs):
            # a pattern, unless a file or folder of that name exists ("scene[2]/"); the
            # manifest's own folder name is not a pattern
            if glob.has_magic(x) and not (base / x).exists():
                found = sorted(glob.glob(os.path.join(glob.escape(str(base)), x),
                                         recursive=True))   # ** : any depth
                if not found:
                    raise InputError(f"{path}: scene {i + 1}: '{x}' matches no file{looked(x)}")
                files += map(Path, found)
            elif not (base / x).exists():
                raise InputError(f"{where}: image '{x}': no such file or folder{looked(x)}")
            else:
                files.append(base / x)
        if e["labels"] in (None, ""):
            raise InputError(f"{where} has no labels; give its labelled polygon file")
        labels = base / text(where, "labels", e["labels"])
        if not labels.exists():
            raise InputError(f"{where}: labels '{e['labels']}': no such file"
                             f"{looked(e['labels'])}")
        if labels.is_dir():
            raise InputError(f"{where}: labels '{e['labels']}' is a folder; give the labels "
                             "file in it")
        dem = None
        if e.get("dem") not in (None, ""):
            dem = base / text(where, "dem", e["dem"])
            if not dem.exists():
                raise InputError(f"{where}: dem '{e['dem']}': no such file"
                                 f"{looked(e['dem'])}")
        calendar = e.get("calendar")
        if calendar not in (None, ""):
            if not isinstance(calendar, str):
                raise InputError(f"{where}: 'calendar' must be a calendar name or file path "
                                 f"(text), not {calendar!r}")
            if Path(calendar).suffix:   # a file: from the manifest's folder, like the others
                # absolute: the model records it, and detect runs from other folders
                calendar = str((base / calendar).resolve())
            try:
                load_calendar(calendar)
            except ConfigError as exc:
                raise InputError(f"{where}: {exc}") from None
        else:
            calendar = None
        out.append(TrainScene(tuple(files), labels, dem, calendar))
    return out


_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".zip"}


def _refuse_repeated_images(scenes: Sequence[TrainScene],
                            digests: Sequence[dict[str, str]]) -> None:
    """Refuse training scenes that share an image (the same file, or a copy of it): a scene
    listed twice is validated on a copy of itself, so its threshold fits its own pixels (an
    audit: threshold 0.99, 2 of 43 plots found on another scene, against 34 of 43)."""
    seen: dict[str, tuple[int, str]] = {}
    for k, (sc, digest) in enumerate(zip(scenes, digests)):
        dem = str(Path(sc.dem).resolve()) if sc.dem else None
        for name, h in digest.items():
            if name == dem or Path(name).suffix.lower() not in _RASTER_SUFFIXES:
                continue    # scenes may share a DEM; products share schemas and metadata
            first = seen.setdefault(h, (k, name))
            if first[0] != k:
                which = Path(name).name if first[1] == name else f"{first[1]} = {name}"
                raise InputError(f"training scenes {first[0] + 1} and {k + 1} hold the same "
                                 f"image ({which}); list each scene once: a scene given twice "
                                 "is validated on a copy of itself")


def _check_scene_headers(scenes: Sequence[TrainScene], cfg: SurveyConfig) -> None:
    """Refuse two training scenes of the same ground on the same dates (a copy re-saved
    with other compression, or with a tag edited, is another file of the same scene: an
    audit got threshold 0.99 from one, against 0.24 for two real scenes), and scenes of
    different sensors. Read from the headers, before any pixel."""
    if len(scenes) < 2:
        return
    sensor = _sensor_file(cfg)
    seen: dict[frozenset, int] = {}
    sensors: dict[str, int] = {}
    for k, sc in enumerate(scenes):
        with _naming_scene(k, sc, len(scenes)):
            products = read_products(sc.images, sensor, dem=sc.dem)
        key = frozenset(
            (pr.rio.crs.to_string() if pr.rio.crs else "",
             tuple(round(v, 3) for v in pr.rio.bounds()), str(pr.attrs.get("time")))
            for pr in products)
        first = seen.setdefault(key, k)
        if first != k:
            raise InputError(f"training scenes {first + 1} and {k + 1} are the same ground on "
                             "the same dates (a copy of one scene?); list each scene once: a "
                             "scene given twice is validated on a copy of itself")
        for pr in products:      # (refused after every scene was sampled, before)
            sensors.setdefault(str(pr.attrs.get("sensor")), k)
        if len(sensors) > 1:
            a, b = sorted(sensors, key=sensors.get)[:2]
            raise InputError(f"training scenes {sensors[a] + 1} and {sensors[b] + 1} come "
                             f"from different sensors ('{a}', '{b}'); train one model per "
                             "sensor")


@contextlib.contextmanager
def _naming_scene(k: int, sc: TrainScene, n_scenes: int):
    """A user error met in training scene ``k`` of several names that scene (the labels
    file alone can be two scenes', and an image's or a season's error named none)."""
    try:
        yield
    except InputError as exc:
        if n_scenes < 2:
            raise
        msg = (exc.args[0] if exc.args else "").removeprefix(f"{sc.labels}: ")
        exc.args = (f"training scene {k + 1} ({sc.labels}): {msg}", *exc.args[1:])
        raise


def _scene_calendars(scenes: Sequence[TrainScene], cfg: SurveyConfig) -> list[Calendar]:
    """Each scene's calendar, loaded once, checked before any scene is read: a calendar that
    moves with elevation has the scene's DEM (found after the earlier scenes were sampled),
    and two scenes' calendars of one name are one calendar (the model keeps the calendars by
    name: the second's phases replaced the first's in its record)."""
    seen: dict[str, tuple[int, dict]] = {}
    several = len(scenes) > 1
    calendars = [load_calendar(sc.calendar or cfg.calendar) for sc in scenes]
    for k, (sc, calendar) in enumerate(zip(scenes, calendars)):
        if calendar.shifts_with_elevation and sc.dem is None:
            which = f"training scene {k + 1} ({sc.labels}): " if several else ""
            raise InputError(f"{which}calendar '{calendar.name}' moves its phases "
                             f"{calendar.elevation_shift_days_per_100m:g} days per 100 m of "
                             "elevation: give a DEM (" +
                             ("dem: in its manifest entry" if several else "--dem") +
                             "), or use a calendar without elevation_shift_days_per_100m")
        season = calendar.model_dump(include={"phases", "elevation_shift_days_per_100m",
                                              "reference_elevation_m"})
        first = seen.setdefault(calendar.name, (k, season))
        if first[1] != season:
            raise InputError(f"training scenes {first[0] + 1} and {k + 1} use two different "
                             f"calendars both named '{calendar.name}'; give one of them its "
                             "own name (name: in its file)")
    return calendars


def train(images: Sequence[Path], labels_path: Path, model_dir: Path, cfg: SurveyConfig, *,
          dem: Path | None = None) -> dict:
    """Fit the model on one scene's labelled polygons; writes the artifact into ``model_dir``."""
    return train_scenes([TrainScene(tuple(images), Path(labels_path), dem)], model_dir, cfg)


def train_manifest(manifest: Path, model_dir: Path, cfg: SurveyConfig) -> dict:
    return train_scenes(read_manifest(manifest), model_dir, cfg)


def train_scenes(scenes: Sequence[TrainScene], model_dir: Path, cfg: SurveyConfig) -> dict:
    """Sample every scene in its own season, validate with spatial folds, fit, save."""
    model_dir = Path(model_dir)
    check_can_create(model_dir, "--model")
    for sc in scenes:
        _check_out_apart(model_dir, sc.images, flag="--model", command="train")
    # hashed first (the model records them): a scene listed twice, by another path or as a
    # copy, is refused before any work
    digests = [_digest_inputs(sc.images, sc.dem) for sc in scenes]
    _refuse_repeated_images(scenes, digests)
    _check_scene_headers(scenes, cfg)
    scene_calendars = _scene_calendars(scenes, cfg)
    parts = []
    is_copy: list[np.ndarray] = []
    sensors = set()
    # classes of the labelled (and drawn unlabelled) polygons, augmented copies not counted
    label_classes: list[str] = []
    units = []                      # per scene: metres per CRS unit (x, y), for the CV blocks
    corners = []                    # per scene: its grid's corner, where the CV blocks start
    poppy_labelled = 0              # poppy polygons in the label files, over the scenes
    t0 = time.perf_counter()
    for k, sc in enumerate(scenes):
        with _naming_scene(k, sc, len(scenes)):
            calendar = scene_calendars[k]
            scene, dem_da = prepare_scene(sc.images, cfg, dem=sc.dem)
            # with several scenes, one may hold only background (or only poppy) polygons
            both = len(scenes) == 1
            drawn = cfg.model.background_sample_px > 0  # poppy-only label files are enough
            labels = read_labels(sc.labels, scene.rio.crs, require_both=both,
                                 background_drawn=drawn)
            poppy_labelled += int(np.sum(labels.is_target))
            shift = calendar_shift(calendar, dem_da)
            masked = mask_and_correct(scene, dem_da, cfg)
            feats = window_features(masked, calendar, cfg.features, shift)
            if "flowering" in feats.phase_dates and not feats.phase_dates["flowering"]:
                window = phase_window(calendar, "flowering", shift_range(shift))
                dates = ", ".join(str(t)[:10] for t in scene["time"].values)
                raise InputError(f"{sc.labels}: no image of its scene falls in the flowering "
                                 f"phase ({window} in calendar {calendar.name}; "
                                 f"dates: {dates}); poppy is learnt in bloom: give images from "
                                 "that window, or a calendar whose flowering phase covers them")
            # the scene's features, then those of its augmented copies (classifiers/augment.py)
            versions = [feats] + [
                window_features(mask_and_correct(augmented(
                    scene, seed=cfg.model.seed * 1000 + 10 * k + c + 1), dem_da, cfg),
                    calendar, cfg.features, shift) for c in range(cfg.model.augment_copies)]
            part = None
            copy_flags: list[bool] = []         # per polygon of the part: from an augmented copy
            for c, f in enumerate(versions):
                seed = cfg.model.seed + 7919 * c
                tl = (sample(f, labels, erode_m=cfg.model.erode_m,
                             max_pixels=cfg.model.max_pixels_per_polygon, seed=seed,
                             require_both=both and not drawn), labels)
                if c == 0 and len(tl[0].y) == 0:
                    # else a manifest entry whose labels miss its images trains silently on its
                    # drawn background alone, plots and all
                    raise InputError(f"{sc.labels}: no label polygon overlaps clear pixels of "
                                     "its images; check the labels' CRS and extent")
                if cfg.model.background_sample_px:
                    tl = join(tl, sample_background(
                        f, labels, n_pixels=cfg.model.background_sample_px,
                        buffer_m=cfg.model.background_buffer_m, seed=seed))
                part = tl if part is None else join(part, tl)
                copy_flags += [c > 0] * len(tl[1].geometries)
                if c == 0:
                    label_classes += tl[1].classes
            parts.append((*part, feats))
            units.append(Grid.of(scene).metres_per_unit())
            corners.append(Grid.of(scene).transform * (0, 0))
            is_copy.append(np.array(copy_flags, bool))
            sensors.add(scene.attrs["sensor"])
    if len(sensors) > 1:
        raise InputError(f"training scenes come from different sensors {sorted(sensors)}; "
                         "train one model per sensor")
    names = parts[0][0].feature_names
    for table, labels, _ in parts[1:]:
        if table.feature_names != names:
            raise InputError(f"{labels.source}: its scene gives other features than the first "
                             "scene (other bands?); train one model per sensor")
    if not poppy_labelled:       # (one scene's labels file says so when it is read)
        raise InputError(f"no polygon of class '{TARGET_CLASS}' in the labels of any of the "
                         f"{len(scenes)} scenes; the model needs examples of it")
    # ground metres (a table's pixel_m is in CRS units: degrees on a grid in degrees)
    pixel_sizes = [round(float(p[0].pixel_m * np.sqrt(ux * uy)), 4)
                   for p, (ux, uy) in zip(parts, units)]
    if max(pixel_sizes) > PIXEL_SIZE_TOLERANCE * min(pixel_sizes):
        log.warning("the training scenes have pixels of %s m: the neighbourhood features are "
                    "measured in pixels, so they cover other ground in each scene; resample "
                    "the scenes to one pixel size, or train one model per size",
                    ", ".join(f"{v:g}" for v in sorted(set(pixel_sizes))))
    table, labels, scene_of_poly = combine(parts)
    origin = _copy_origins(labels, scene_of_poly, np.concatenate(is_copy))
    unit_m = np.array(units)[scene_of_poly]
    grid_origin = np.array(corners)[scene_of_poly]
    pixel_m = np.array([p[0].pixel_m for p in parts])[scene_of_poly]
    check_classes(table.y, labels.source)
    t_sample = time.perf_counter() - t0
    est = make_estimator(cfg.model)
    # One OpenMP thread: on 2 cores, scikit-learn's threaded binning and tree building spin
    # and wait far more than they gain on training tables of this size (measured 5x slower).
    with threadpool_limits(1, user_api="openmp"):
        report = validate(est, table, labels,
                          **_validation_args(cfg, scene_of_poly, origin, unit_m, pixel_m,
                                             grid_origin),
                          repeats=cfg.model.cv_repeats, max_threshold=cfg.model.threshold_max,
                          min_threshold=cfg.model.threshold_min)
        _warn_weak(report, manifest=len(scenes) > 1)
        t1 = time.perf_counter()
        fit_balanced(est, table.X, table.y, cfg.model.seed)
        t_fit = time.perf_counter() - t1
        t2 = time.perf_counter()
        reduced = fit_missing_phase_models(table, labels, scene_of_poly, origin, report, cfg,
                                           unit_m, pixel_m, grid_origin) \
            if cfg.model.missing_phase_models else []
        t_reduced = time.perf_counter() - t2
    bg = table.X[table.y == 0]
    with warnings.catch_warnings():  # all-NaN feature columns give NaN on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        bg_mean = np.nanmean(bg, axis=0)
        bg_std = np.nanstd(bg, axis=0)
    report.update({
        "samples": {"pixels": len(table.y), "poppy_pixels": int(table.y.sum()),
                    "augmented_copies": cfg.model.augment_copies,
                    "polygons": len(label_classes), "scenes": len(scenes),
                    "classes": {c: label_classes.count(c) for c in sorted(set(label_classes))}},
        "timings_s": {"sample": round(t_sample, 2), "fit": round(t_fit, 2),
                      "missing_phase_models": round(t_reduced, 2)},
        "model": cfg.model.model_dump(),
        "edge_pixels": f"polygons eroded by {cfg.model.erode_m} m before sampling; sub-pixel "
                       "polygons kept whole (all touched pixels); a poppy polygon that erosion "
                       "leaves between rows of pixel centres: its own centres",
    })
    # the scenes' calendar when they share one (a manifest's calendar: myseason on every
    # scene gave a model of east-china, the config's, which detect then asked for)
    calendar_names = list(dict.fromkeys(c.name for c in scene_calendars))
    # the model carries every calendar whole (detect takes the one the images' dates fit);
    # its config names the first scene's, which is the model's when they share one
    saved_cfg = (with_overrides(cfg, calendar=str(scenes[0].calendar))
                 if scenes[0].calendar else cfg)
    hashes: dict[str, str] = {}
    for sc, digest in zip(scenes, digests):
        hashes.update(digest)
        hashes[str(Path(sc.labels).resolve())] = file_digest(sc.labels)
    meta = {
        "feature_names": list(names),
        "sensor": sensors.pop(),
        "calendar": ", ".join(calendar_names),
        # every calendar the scenes were sampled with, whole: detect compares the phases,
        # not only the name (a copy of east-china with other phases passed as east-china)
        "calendars": {c.name: c.model_dump(mode="json") for c in scene_calendars},
        "scene_calendars": [sc.calendar or cfg.calendar for sc in scenes],
        "classes": ["other", "poppy"],
        "label_classes": sorted(set(labels.classes)),
        "threshold": report["threshold"],
        "calibration": report["calibration"],
        "background_mean": [None if not np.isfinite(v) else float(v) for v in bg_mean],
        "background_std": [None if not np.isfinite(v) else float(v) for v in bg_std],
        "training": {"polygon_recall": report["polygon"]["recall"],
                     "polygon_precision": report["polygon"]["precision"],
                     "pixels": len(table.y)},
        "phase_dates": [p[2].phase_dates for p in parts],
        "pixel_m": pixel_sizes,
        "missing_phase_models": [spec for spec, _ in reduced],
        "versions": environment(),
        "data_hashes": hashes,
        "config": saved_cfg.model_dump(mode="json"),
    }
    if (Path(model_dir) / model_artifact.SIDECAR_FILE).is_file():
        log.warning("%s: replacing the model there", model_dir)
    model_artifact.save(model_dir, est, meta, report,
                        [e for _, e in reduced] if reduced else None,
                        report_text=text_table(report) + "\n")
    return report


def _copy_origins(labels: Labels, scene_of_poly: np.ndarray,
                  is_copy: np.ndarray) -> np.ndarray:
    """Per polygon, the polygon it copies: an augmented copy's origin is the polygon of the
    same scene with the same geometry (a labelled polygon, or a background block on the
    draw's grid), else itself."""
    first: dict[tuple[int, bytes], int] = {}
    for pid, (g, sc, cp) in enumerate(zip(labels.geometries, scene_of_poly, is_copy)):
        if not cp:
            first.setdefault((int(sc), g.wkb), pid)
    origin = np.array([first.get((int(sc), g.wkb), pid) if cp else pid
                       for pid, (g, sc, cp) in enumerate(zip(labels.geometries, scene_of_poly,
                                                             is_copy))], dtype="int64")
    return origin


def _validation_args(cfg: SurveyConfig, scene_of_poly: np.ndarray, origin: np.ndarray,
                     unit_m: np.ndarray | None = None,
                     pixel_m: np.ndarray | None = None,
                     grid_origin: np.ndarray | None = None) -> dict:
    """The cross-validation settings the main and the missing-phase models share.
    ``unit_m``, ``grid_origin``: per polygon, metres per CRS unit and grid corner of its scene
    (blocks in metres from the scene's corner, on grids in degrees too); ``pixel_m``: per
    polygon, its scene's pixel side (plot sizes in pixels)."""
    m = cfg.model
    return {"n_folds": m.cv_folds, "block_m": m.cv_block_m, "target_recall": m.target_recall,
            "seed": m.seed, "min_plot_px": m.threshold_min_plot_px,
            "scene_of_polygon": scene_of_poly, "hold_out_scenes": m.cv_hold_out_scenes,
            "polygon_origin": origin, "unit_m": unit_m, "pixel_m": pixel_m,
            "grid_origin": grid_origin}


def fit_missing_phase_models(table: Table, labels: Labels, scene_of_poly: np.ndarray,
                             origin: np.ndarray, report: dict, cfg: SurveyConfig,
                             unit_m: np.ndarray | None = None,
                             pixel_m: np.ndarray | None = None,
                             grid_origin: np.ndarray | None = None) -> list[tuple[dict, Any]]:
    """One model per combination of phases left out (at least one phase kept), on the same
    training pixels without those phases' features, validated like the main model (one repeat
    of the folds) and calibrated on its own out-of-fold scores, so that its probability means
    what the main model's does and the main threshold applies. Adds each one's figures to
    ``report``. The models without the flowering phase score the blind areas (no clear image
    in bloom) from the other phases (docs/classifier.md, "Blind areas are scored")."""
    names = list(table.feature_names)
    phases = [p for p in PHASES if any(p in feature_phases(n) for n in names)]
    if "flowering" not in phases:   # a drone flight: its one phase is all it has
        return []
    out = []
    for k in range(1, len(phases)):
        for missing in itertools.combinations(phases, k):
            cols = columns_without(names, missing)
            if not cols:
                continue
            sub = dataclasses.replace(table, X=np.ascontiguousarray(table.X[:, cols]),
                                      feature_names=[names[i] for i in cols])
            m = cfg.model
            rep = validate(make_estimator(m), sub, labels,
                           **_validation_args(cfg, scene_of_poly, origin, unit_m, pixel_m,
                                             grid_origin),
                           repeats=1,
                           threshold=report["threshold"])
            est = fit_balanced(make_estimator(m), sub.X, sub.y, m.seed)
            spec = {"missing": list(missing), "n_features": len(cols),
                    "calibration": rep["calibration"],
                    # for the record: detect applies the main model's threshold
                    "threshold_recall_rule": rep["threshold_recall_rule"],
                    "polygon_recall_min_plot": rep["polygon"].get("recall_min_plot"),
                    "polygon_precision": rep["polygon"]["precision"]}
            report.setdefault("missing_phase_models", []).append(spec)
            out.append((spec, est))
    return out


def combine(parts) -> tuple[Table, Labels, np.ndarray]:
    """One training table from several scenes; polygon ids offset to stay unique."""
    geoms, classes, scene_of, X, y, poly, xy = [], [], [], [], [], [], []
    offset = 0
    for k, (table, labels, _) in enumerate(parts):
        geoms += list(labels.geometries)
        classes += list(labels.classes)
        scene_of += [k] * len(labels.geometries)
        X.append(table.X)
        y.append(table.y)
        poly.append(table.polygon + offset)
        xy.append(table.xy)
        offset += len(labels.geometries)
    labels = Labels(tuple(geoms), tuple(classes), ", ".join(p[1].source for p in parts))
    table = Table(np.concatenate(X), np.concatenate(y), np.concatenate(poly),
                  np.concatenate(xy), parts[0][0].feature_names, parts[0][0].pixel_m)
    return table, labels, np.array(scene_of)


# ----------------------------------------------------------------------------- detect
@dataclass
class TileContext:
    """Everything a tile needs; enters the graph once as a single delayed object."""
    scene: xr.DataArray              # raw (unmasked) lazy Scene
    slope: xr.DataArray | None       # lazy, degrees (with a DEM)
    aspect: xr.DataArray | None
    dem: xr.DataArray | None
    calendar: Calendar               # its elevation shift needs the tile's DEM
    terrain: Any                     # indices.terrain.TerrainFit or None
    cfg: SurveyConfig
    plan: FeaturePlan
    estimator: Any
    calibration: dict
    reduced: tuple                   # classifiers.artifact.ReducedModel (missing phases)
    threshold: float
    stride: int
    halo: int                        # read beyond the feature window: masks see clouds whole
    patch_threshold: float           # a patch's peak must reach it (the model's threshold)
    drop_small: bool                 # no --exclude: pieces inside a tile below the MMU go
    # the output grid: tiles are given in its rows and columns, which start ``offset`` (rows,
    # columns) into ``scene`` (with --aoi, the scene holds a margin of context around them)
    offset: tuple[int, int] = (0, 0)
    out_transform: Any = None        # the output grid's transform (None: the scene's)
    aoi: Any = None                  # --aoi polygon (scene CRS): pixels outside score nothing
    # where the model's features are among the plan's (the inputs give more, or another
    # order); None: the plan's are the model's
    columns: tuple[int, ...] | None = None


def _one_openmp_thread() -> None:
    """Tiles are the unit of parallelism: each predicts with one OpenMP thread, so two tiles on
    two cores do not oversubscribe them. omp_set_num_threads acts on the calling thread only,
    so every tile sets it for the worker thread it runs on."""
    threadpool_limits(1, user_api="openmp")


def process_tile(ctx: TileContext, ys: slice, xs: slice) -> dict:
    """All pixel stages of one tile, timed; returns arrays and the tile's patch pieces."""
    _one_openmp_thread()
    t = {s: 0.0 for s in STAGES}
    t0 = time.perf_counter()
    H, W = ctx.scene.sizes["y"], ctx.scene.sizes["x"]
    oy, ox = ctx.offset
    ay, ax = slice(ys.start + oy, ys.stop + oy), slice(xs.start + ox, xs.stop + ox)  # in scene
    # read halo: spatial features need context (sp) and the masks, over that feature window,
    # judge clouds whole (ctx.halo beyond it)
    sp = ctx.plan.halo
    h = ctx.halo + sp  # the masks judge the whole feature window, so their halo lies outside it
    hy0, hy1 = max(0, ay.start - h), min(H, ay.stop + h)
    hx0, hx1 = max(0, ax.start - h), min(W, ax.stop + h)
    # the feature window: the tile plus the spatial halo
    fys = slice(max(0, ay.start - sp), min(H, ay.stop + sp))
    fxs = slice(max(0, ax.start - sp), min(W, ax.stop + sp))
    inner = (slice(ay.start - fys.start, ay.stop - fys.start),
             slice(ax.start - fxs.start, ax.stop - fxs.start))
    # a damaged file fails here, in the worker: an InputError naming it (rasterio's own error
    # does not survive the trip back from a process)
    # in a worker process (--scheduler processes, local:N) detect's own setting is not there
    with rasterio.Env(GDAL_CACHEMAX=TILE_GDAL_CACHE_BYTES):
        raw = read_pixels(lambda: ctx.scene[:, :, hy0:hy1, hx0:hx1].compute(scheduler="sync"),
                          scene_sources(ctx.scene))
    dem = slope = aspect = None
    if ctx.dem is not None and ctx.slope is not None:
        dem = read_pixels(lambda: ctx.dem[fys, fxs].compute(scheduler="sync"))
        slope = ctx.slope[fys, fxs].compute(scheduler="sync")
    if ctx.terrain is not None and ctx.aspect is not None:
        aspect = ctx.aspect[fys, fxs].compute(scheduler="sync")
    shift = None                     # the calendar's shift per pixel of the feature window
    if ctx.plan.phase_windows and dem is not None:
        shift = np.asarray(ctx.calendar.shift_days(dem.values), "float32")
    t1 = time.perf_counter()
    t["read"] = t1 - t0
    fwin = (slice(fys.start - hy0, fys.stop - hy0), slice(fxs.start - hx0, fxs.stop - hx0))
    # pixels inside the images (a reflectance on some date, clear or not): what the survey
    # was given to look at, so a pixel clouded on every date is blind, not outside the data
    refl = [i for i, b in enumerate(raw["band"].values.tolist()) if b != "scl"]
    has_data = np.isfinite(raw.values[:, refl, fwin[0], fwin[1]]).any(axis=(0, 1))
    raw = raw.chunk({"y": -1, "x": -1})  # a copy: rebinding frees the computed one
    masked = masks(raw, ctx.cfg, window=fwin)  # the halo informs the masks, is not kept
    if ctx.terrain is not None:
        from indices.terrain import apply_terrain
        masked = apply_terrain(masked, slope, aspect, ctx.terrain)
    masked = masked.compute(scheduler="sync")
    del raw  # the tile and its mask halo (~120 MB per 512 px tile): features need only masked
    # dask's copy of it sits in reference cycles of the masking graph: collect them now, not
    # whenever the collector next runs (measured: 117 MB still held during the features)
    gc.collect()
    if dem is not None and slope is not None:
        dem, slope = dem[inner], slope[inner]
    t2 = time.perf_counter()
    t["mask"] = t2 - t1
    cand, evidence, prob = _features_and_predict(masked, ctx, t, inner, shift)
    transform = ctx.scene.rio.transform() if ctx.out_transform is None else ctx.out_transform
    inside = np.ones(prob.shape, bool) if ctx.aoi is None else rfeatures.geometry_mask(
        [ctx.aoi], out_shape=prob.shape, invert=True,
        transform=transform * Affine.translation(xs.start, ys.start))
    rgb = _quicklook(masked, ctx.plan, inner, ys, xs, ctx.stride, inside)
    # the dates each pixel is clear on (a target lists those it was seen on)
    vals = masked.values
    clear = np.zeros((vals.shape[0], *prob.shape), bool)
    for i, b in enumerate(masked["band"].values.tolist()):
        if b != "scl":
            clear |= np.isfinite(vals[:, i, inner[0], inner[1]])
    del masked, vals
    t4 = time.perf_counter()
    fl = ctx.plan.phases.index("flowering") if "flowering" in ctx.plan.phases else None
    ev = evidence[fl] if fl is not None else np.zeros(prob.shape, "float32")
    prob = np.where(inside, prob, np.nan).astype("float32")   # outside the AOI: not surveyed
    valid = np.isfinite(prob) | (has_data[inner] & inside)
    # outside the data (or the AOI): not a blind area
    ev = np.where(valid | ((ev > 0) & inside), ev, np.nan)
    # no clear flowering observation: a blind area. Its pixels keep a probability only from a
    # model trained without the flowering phase (the main model's would rest on missing
    # flowering features); they stay in the blind areas either way
    if not any("flowering" in r.missing for r in ctx.reduced):
        prob = np.where(ev > 0, prob, np.nan).astype("float32")
    pieces, blind = chunk_pieces(prob, ev, None if dem is None else dem.values,
                                 None if slope is None else slope.values, cand,
                                 ys.start, xs.start, transform, ctx.threshold, clear)
    # inside the AOI (or the grid) without data on any date: a gap, blind if the assembly
    # finds the images around it (or it lies inside an AOI)
    gaps = gap_polygons(np.isnan(ev) & inside, ys.start, xs.start, transform)
    pieces, counts = _settle_inner_pieces(pieces, ctx, ys, xs, transform)
    seen = np.isfinite(prob)
    counts["seen_px"] = int(seen.sum())
    counts["candidate_px"] = int((prob[seen] >= ctx.threshold).sum())
    t["patches"] = time.perf_counter() - t4
    return {"prob": prob, "evidence": np.nan_to_num(ev, nan=255).astype("uint8"),
            "pieces": pieces, "blind": blind, "gaps": gaps, "rgb": rgb, "timings": t,
            "counts": counts}


def _release_freed_memory() -> None:
    """Hand the tiles' freed arrays back to the OS before the assembly: glibc keeps freed
    memory of worker threads in their arenas, so the assembly's peak would sit on top of the
    tiles' (measured at 4096 px: ~1.5 GB peak without this). No-op off glibc."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _settle_inner_pieces(pieces: list[Piece], ctx: TileContext, ys: slice, xs: slice,
                         transform) -> tuple[list[Piece], dict[str, int]]:
    """Pieces that no piece of another tile can join are whole patches already: those the
    patch rules would drop (peak below the model's threshold; with the pieces at most
    ``patches.group_distance_m`` from them, area below the minimum mapping unit, decided here
    only without an exclusion file, which is checked before it) are counted and dropped in the
    tile. At 4096 px, 70k of 122k patches were single pixels below the MMU, held in memory
    until the assembly dropped them."""
    crs = CRS.from_user_input(ctx.scene.rio.crs.to_wkt())
    # on a grid in degrees, the latitude farthest from the equator: the widest distance in
    # degrees, so a piece the assembly could still group is never settled here
    lat = float(np.abs(ctx.scene["y"].values[[0, -1]]).max()) if crs.is_geographic else 0.0
    group_d = crs_distance(ctx.cfg.patches.group_distance_m, crs, lat)
    if transform.b == 0 and transform.d == 0:      # north-up: the tile's box in CRS units
        x0, y0 = transform * (xs.start, ys.start)
        x1, y1 = transform * (xs.stop, ys.stop)
        lo_x, hi_x, lo_y, hi_y = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        touch, reach = 1e-6 * abs(transform.a), group_d

        def bounds(p: Piece) -> tuple[float, ...]:
            return p.geometry.bounds
    else:   # a rotated grid: the tile's edges are its own in pixel space, not a CRS box
        lo_x, hi_x, lo_y, hi_y = xs.start, xs.stop, ys.start, ys.stop
        touch, reach = 1e-6, group_d / math.hypot(transform.a, transform.d)   # pixels
        inv = ~transform
        to_px = [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]

        def bounds(p: Piece) -> tuple[float, ...]:
            return affinity.affine_transform(p.geometry, to_px).bounds

    def within(p: Piece, margin: float) -> bool:
        """``p`` comes within ``margin`` of the tile's edge."""
        minx, miny, maxx, maxy = bounds(p)
        return (minx <= lo_x + margin or maxx >= hi_x - margin or miny <= lo_y + margin
                or maxy >= hi_y - margin)

    # touching the edge, a piece may join a piece of the next tile (and reach the threshold
    # with it); within the group distance, it may count with one for the unit
    edge = [within(p, touch) for p in pieces]
    near = [within(p, touch + reach * (1 + 1e-6)) for p in pieces]
    dropped = {"below_threshold": sum(not e and p.max_p < ctx.patch_threshold
                                      for p, e in zip(pieces, edge)),
               "below_mmu": 0}
    live = [(p, n) for p, e, n in zip(pieces, edge, near)
            if e or p.max_p >= ctx.patch_threshold]
    if not ctx.drop_small:
        return [p for p, _ in live], dropped
    to_wgs = None if crs.is_projected else Transformer.from_crs(crs, "EPSG:4326",
                                                                 always_xy=True)
    mmu = ctx.cfg.patches.min_mapping_unit_m2 - 1e-6
    kept = []
    for idx in nearby_groups([p for p, _ in live], group_d):
        group = [live[i] for i in idx]
        if any(n for _, n in group) or math.fsum(area_m2(p.geometry, crs, to_wgs)
                                                  for p, _ in group) >= mmu:
            kept += [p for p, _ in group]
        else:
            dropped["below_mmu"] += len(group)
    return kept, dropped


#: Rows of a tile whose features and probabilities are computed at once. Features are
#: pixel-local, so strips give the same numbers as the whole tile, while the temporaries of
#: the indices, composites and the model's float64 copy of the feature matrix stay a strip's
#: size (a 512 px tile's peak was ~1.3 GB in features and ~0.6 GB in predict). 64 rows:
#: ~140 MB less per tile than 128, at the same speed (measured on a 2048 px scene's tile).
STRIP_ROWS = 64


def _features_and_predict(masked: xr.DataArray, ctx: TileContext, t: dict[str, float],
                          inner: tuple[slice, slice], shift: np.ndarray | None = None
                          ) -> tuple[CandidateFeatures, np.ndarray, np.ndarray]:
    """Features and probability of the ``inner`` window of ``masked`` (the tile inside its
    spatial-feature halo), computed in strips of rows that carry the same halo. Returns the
    features of the candidate pixels (for the patches' reasons), the evidence per phase and
    the probability; the tile's dense features are never kept. ``shift``: each pixel of
    ``masked``'s calendar shift in days (a calendar that moves with elevation)."""
    n, n_ph = len(ctx.plan.names), len(ctx.plan.phases)
    sp = ctx.plan.halo
    iy, ix = inner
    ny, nx = iy.stop - iy.start, ix.stop - ix.start
    evidence = np.empty((n_ph, ny, nx), dtype="float32")
    prob = np.empty((ny, nx), dtype="float32")
    index = np.full((ny, nx), -1, dtype="int32")
    values: list[np.ndarray] = []
    n_cand = 0
    # the phases the model's features use: a phase the config adds (features the model does
    # not take) must not decide which model scores a pixel
    used = set().union(*(feature_phases(ctx.plan.names[i]) for i in (
        range(n) if ctx.columns is None else ctx.columns)))
    model_phases = [ph in used for ph in ctx.plan.phases]
    for r0 in range(0, ny, STRIP_ROWS):
        r1 = min(ny, r0 + STRIP_ROWS)
        a0 = max(0, iy.start + r0 - sp)
        a1 = min(masked.sizes["y"], iy.start + r1 + sp)
        t0 = time.perf_counter()
        out = block_features(masked[:, :, a0:a1, :], ctx.plan,
                             None if shift is None else shift[a0:a1])
        crop = out[:, iy.start + r0 - a0:iy.start + r1 - a0, ix]
        feats = np.ascontiguousarray(crop[:n] if ctx.columns is None else crop[list(ctx.columns)])
        evidence[:, r0:r1] = crop[n:]
        del out, crop
        t1 = time.perf_counter()
        missing = {ph: ev == 0 for ph, ev, u in zip(ctx.plan.phases, evidence[:, r0:r1],
                                                    model_phases) if u}
        p = predict_block(feats, ctx.estimator, ctx.calibration, missing, ctx.reduced)
        prob[r0:r1] = p
        with np.errstate(invalid="ignore"):
            c = p >= ctx.threshold
        k = int(c.sum())
        index[r0:r1][c] = np.arange(n_cand, n_cand + k, dtype="int32")
        values.append(feats[:, c].T)
        n_cand += k
        t["features"] += t1 - t0
        t["predict"] += time.perf_counter() - t1
    n_model = n if ctx.columns is None else len(ctx.columns)
    cand = CandidateFeatures(index, np.concatenate(values) if values else
                             np.empty((0, n_model), "float32"))
    return cand, evidence, prob


#: quick-look colours: false colour (near-infrared, red, green: vegetation red), else true
#: colour; taken from the masked bands, whatever the features are
QUICKLOOK_BANDS = (("nir", "red", "green"), ("red", "green", "blue"))


def quicklook_bands(bands: Sequence[str]) -> list[str]:
    for combo in QUICKLOOK_BANDS:
        if all(b in bands for b in combo):
            return list(combo)
    return list(bands[:3])


def _quicklook(masked: xr.DataArray, plan: FeaturePlan, inner: tuple[slice, slice],
               ys: slice, xs: slice, stride: int, inside: np.ndarray) -> np.ndarray:
    """Every ``stride``-th pixel of the tile (on the output's thumbnail grid; ``ys``, ``xs``
    in its rows and columns): the flowering composite (median over the phase's dates) of the
    quick-look bands; NaN outside the AOI (``inside``: the tile's pixels inside it)."""
    iy, ix = inner
    dates = plan.phase_idx[plan.phases.index("flowering")] if "flowering" in plan.phases \
        else ()
    dates = dates or tuple(range(masked.sizes["time"]))
    sub = masked.isel(time=list(dates), y=slice(iy.start + (-ys.start) % stride, iy.stop, stride),
                      x=slice(ix.start + (-xs.start) % stride, ix.stop, stride))
    arr = np.asarray(sub.sel(band=quicklook_bands(masked["band"].values.tolist())).values,
                     dtype="float32")
    rgb = arr[0] if len(arr) == 1 else nanmedian0(arr)
    keep = inside[(-ys.start) % stride::stride, (-xs.start) % stride::stride]
    return np.where(keep, rgb, np.nan)


#: out-of-fold polygon recall under which train warns that the model is not to be relied on
WEAK_RECALL = 0.5


def _warn_weak(report: dict, manifest: bool = False) -> None:
    """A model that finds few of its own labelled plots out of fold, or flags much of the
    background, is still written (a first model to verify targets with), with a warning that
    says so."""
    more = "more scenes in the manifest" if manifest else "several scenes: --manifest"
    pg = report["polygon"]
    big = pg["poppy_polygons_min_plot"] > 0
    recall = pg["recall_min_plot"] if big else pg["recall"]
    n = pg["poppy_polygons_min_plot"] if big else pg["poppy_polygons"]
    if recall < WEAK_RECALL:
        log.warning("out of fold the model finds %.0f%% of its %d labelled poppy polygon(s)%s: "
                    "too few or too unlike plots to learn from; label more plots (%s) "
                    "before relying on its targets", 100 * recall, n,
                    f" >= {report['min_plot_px']:g} px" if big else "", more)
    # the other side: a threshold that reaches the recall only by flagging the background
    # (detect warns of the same above 10 % of a scene; train said nothing at 62-100 %)
    (tn, fp), _ = report["pixel"]["confusion_matrix"]
    flagged = fp / (tn + fp) if tn + fp else 0.0
    if flagged > CANDIDATE_SHARE_WARN:
        log.warning("out of fold the model's threshold flags %.0f%% of the background pixels "
                    "sampled: in a survey its targets would cover whole fields; label the "
                    "other crops and covers of the scene (%s) before relying on it",
                    100 * flagged, more)


def _check_out_apart(out: Path, images: Sequence[Path], model_dir: Path | None = None,
                     flag: str = "--out", command: str = "detect") -> None:
    """--out (train: --model) may not be an images folder nor hold an image given by name:
    the outputs (probability.tif, evidence.tif) would be read back as images on the
    documented rerun; nor be the model's folder or lie inside it (a model folder is replaced
    whole by the next train)."""
    o = out.resolve()
    for p in map(Path, images):
        r = p.resolve()
        if r == o or (p.is_file() and r.parent == o):
            raise InputError(f"{out}: holds the images read; give {command} another {flag} "
                             "(its files would mix with the images, and be read as images "
                             "when the run is repeated)")
    if model_dir is not None and o.is_relative_to(Path(model_dir).resolve()):
        raise InputError(f"{out}: is the model's folder or inside it; give {command} another "
                         f"{flag} (the outputs would mix with the model's files)")


def _blind_gaps(gaps: list, in_aoi: bool, transform, H: int, W: int) -> list:
    """Ground without data on any date that counts as blind: all of it inside an AOI (the
    ground asked for), else the holes the images surround (a stitching hole in a flight was
    reported nowhere); the collar or swath edge reaching the grid's edge is outside the data,
    not blind."""
    if in_aoi:
        return gaps
    return enclosed(gaps, transform, H, W)


def _settings_in_effect(cfg: SurveyConfig, trained: dict | None) -> SurveyConfig:
    """detect's config with the model's own ``model`` section: the estimator, its threshold
    and calibration were fixed by training, so a --config's model settings do nothing here
    (report.json recorded them as if they did). Said when the ones the user's config or
    options give differ (not those a partial config takes from the shipped one), and when
    the masks differ from training (the features then see other pixels than the model
    learnt from)."""
    if not isinstance(trained, dict) or not isinstance(trained.get("model"), dict):
        return cfg
    try:
        model = ModelConfig.model_validate(trained["model"])
    except ValueError:   # a model of an older version: its artifact was checked on loading
        return cfg
    changed = sorted(k for k, v in cfg.model.model_dump().items()
                     if v != model.model_dump().get(k)
                     and ("model" in cfg.given or f"model.{k}" in cfg.given))
    if changed:
        log.warning("the config's model settings (%s) are not used by detect: the model was "
                    "trained with its own, which the report records; retrain to change them",
                    ", ".join(changed))
    masks_then = trained.get("masks")
    if isinstance(masks_then, dict) and masks_then != cfg.masks.model_dump(mode="json"):
        changed = sorted(k for k, v in cfg.masks.model_dump(mode="json").items()
                         if v != masks_then.get(k))
        log.warning("masks.%s differ from the model's training config: the features see "
                    "other pixels than the model learnt from", ", masks.".join(changed))
    return cfg.model_copy(update={"model": model})


def _model_digests(model_dir: Path) -> dict[str, str]:
    """The sha256 of each file of the model (the threshold and calibration are in the
    json)."""
    return {name: file_digest(Path(model_dir) / name)
            for name in (model_artifact.MODEL_FILE, model_artifact.SIDECAR_FILE,
                         model_artifact.REDUCED_FILE) if (Path(model_dir) / name).is_file()}


def _fingerprint(digests: dict[str, str], model_digests: dict[str, str], cfg: SurveyConfig,
                 extra: dict) -> str:
    h = hashlib.sha256()
    for k, v in sorted(digests.items()):
        h.update(f"{k}={v}".encode())
    for v in model_digests.values():
        h.update(v.encode())
    # where and how much memory it runs with, and which file the settings came from (the
    # settings are here), do not change a tile: a rerun after raising the memory resumes
    h.update(json.dumps(cfg.model_dump(mode="json", exclude={
        "run": {"scheduler", "memory_per_worker"}, "source": True}), sort_keys=True).encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _warn_other_pixel_size(art: model_artifact.Artifact, scene: xr.DataArray) -> None:
    """Images of another pixel size than every training scene's: the neighbourhood features
    (radii in pixels) then see other ground than the model learnt from."""
    trained = [v for v in art.meta.get("pixel_m") or [] if isinstance(v, (int, float)) and v > 0]
    here = pixel_metres(scene.rio.transform(), scene.rio.crs)
    if trained and all(max(here / v, v / here) > PIXEL_SIZE_TOLERANCE for v in trained):
        log.warning("the images have pixels of %.3g m, the model was trained on %s m: its "
                    "neighbourhood features (in pixels) see other ground here; resample the "
                    "images to the training pixel size, or train on images of this size",
                    here, ", ".join(f"{v:g}" for v in sorted(set(trained))))


def _model_calendar(art: model_artifact.Artifact, times: np.ndarray,
                    dem: xr.DataArray | None) -> Calendar:
    """The calendar detect uses when the config names none: the model's own, as it was at
    training (model.json carries it whole, so the file need not be where it was). A model
    of scenes of several calendars (a manifest over regions or seasons) takes the one whose
    phases hold the images' dates: one with a bloom date, then the most phases and dates,
    then the first scene's (it took the config's default, which no scene had used)."""
    calendars = [Calendar.model_validate(d) for d in art.meta["calendars"].values()]
    if len(calendars) == 1:
        return calendars[0]
    used = [p for p in PHASES if any(p in feature_phases(n) for n in art.feature_names)]

    def fit(cal: Calendar) -> tuple[bool, int, int]:
        shifts = (shift_range(cal.shift_days(dem)) if cal.shifts_with_elevation
                  and dem is not None else None) or (0, 0)
        held = dates_in_phases(times, cal, [p for p in used if p in cal.phases], shifts)
        return (bool(held.get("flowering")), sum(1 for v in held.values() if v),
                sum(len(v) for v in held.values()))

    best = max(calendars, key=fit)              # the first of equals: the first scene's
    log.warning("the model was trained with calendars %s: the images' dates fit '%s' "
                "(a --config with calendar: NAME takes another)",
                ", ".join(f"'{c.name}'" for c in calendars), best.name)
    return best


def _absolute(path: Path | str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _with_formats(config: dict, formats: list[str]) -> dict:
    """A dumped config whose ``outputs.formats`` are the ones a run wrote."""
    return {**config, "outputs": {**config["outputs"], "formats": formats}}


def tile_dir(out: Path, fingerprint: str) -> Path:
    """Where a run's finished tiles are kept: one folder per fingerprint of its inputs and
    settings, so a rerun with other inputs leaves the earlier run's tiles alone until it has
    delivered (it deleted them at its start, and then failed on a damaged image)."""
    return Path(out) / STATE_DIR / "tiles" / fingerprint[:16]


def _save_tile(tdir: Path, key: str, res: dict) -> None:
    pieces = res["pieces"]
    with_feats = bool(pieces) and pieces[0].feat_sum is not None
    # the pieces' feature sums as arrays beside the rasters (as JSON lists, reading them back
    # was the slowest step of the assembly)
    feat_sum = (np.array([p.feat_sum for p in pieces], "float32") if with_feats
                else np.empty((0, 0), "float32"))
    n_feat = (np.array([p.n_feat for p in pieces], "int32") if with_feats
              else np.empty((0, 0), "int32"))
    np.savez(tdir / f".{key}.npz", prob=res["prob"], evidence=res["evidence"], rgb=res["rgb"],
             feat_sum=feat_sum, n_feat=n_feat)
    os.replace(tdir / f".{key}.npz", tdir / f"{key}.npz")
    docs = [{"wkb": p.geometry.wkb_hex, "n": p.n, "sum_p": p.sum_p, "max_p": p.max_p,
             "min_ev": p.min_ev, "sum_elev": p.sum_elev, "n_elev": p.n_elev,
             "sum_slope": p.sum_slope, "n_slope": p.n_slope, "seen": p.seen} for p in pieces]
    doc = {"pieces": docs, "blind": [g.wkb_hex for g in res["blind"]],
           "gaps": [g.wkb_hex for g in res["gaps"]],
           "timings": res["timings"], "counts": res["counts"]}
    tmp = tdir / f".{key}.json"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, tdir / f"{key}.json")   # the json is the tile's completion marker


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when it is damaged (cut short by a power cut or a full
    disk: nothing is fsync'ed)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _tile_done(tdir: Path, key: str) -> bool:
    """Whether a tile of an earlier run can be taken as it is: its JSON (the completion
    marker) and its arrays read back whole. A damaged tile (a power cut or a full disk can
    leave empty or truncated files) is removed and computed again; it was a traceback."""
    doc, npz = tdir / f"{key}.json", tdir / f"{key}.npz"
    if not doc.is_file():
        return False
    try:
        with np.load(npz) as z:
            ok = {"prob", "evidence", "rgb", "feat_sum", "n_feat"} <= set(z.files)
        ok = ok and {"pieces", "blind", "gaps", "timings", "counts"} <= set(_read_json(doc))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        ok = False
    if not ok:
        log.warning("%s: tile %s of the earlier run is damaged; computing it again", tdir, key)
        doc.unlink(missing_ok=True)
        npz.unlink(missing_ok=True)
    return ok


def _load_tile_doc(tdir: Path, key: str) -> tuple[list[Piece], list, list, dict, dict]:
    doc = json.loads((tdir / f"{key}.json").read_text())
    with np.load(tdir / f"{key}.npz") as z:
        feat_sum, n_feat = z["feat_sum"], z["n_feat"]
    has = len(feat_sum) == len(doc["pieces"]) and len(feat_sum) > 0
    pieces = [Piece(shapely.from_wkb(bytes.fromhex(d["wkb"])), d["n"], d["sum_p"], d["max_p"],
                    d["min_ev"], d["sum_elev"], d["n_elev"], d["sum_slope"], d["n_slope"],
                    feat_sum[i] if has else None, n_feat[i] if has else None, d["seen"])
              for i, d in enumerate(doc["pieces"])]
    blind = [shapely.from_wkb(bytes.fromhex(h)) for h in doc["blind"]]
    gaps = [shapely.from_wkb(bytes.fromhex(h)) for h in doc["gaps"]]
    return pieces, blind, gaps, doc["timings"], doc["counts"]


@dataclass
class DetectResult:
    out: Path
    n_targets: int
    files: list[Path]
    report: dict = field(default_factory=dict)


def _check_not_across_180(scene: xr.DataArray) -> None:
    """Refuse a survey whose ground crosses the 180th meridian: its targets and map would be
    drawn around the globe (RFC 7946 wants such polygons cut there; the map's warp failed
    with a traceback). No poppy region lies there; split the images at 180 degrees."""
    grid = Grid.of(scene)
    if grid.crs is None:
        return
    edge = shapely.segmentize(grid.footprint, max(grid.width, grid.height)
                              * grid.resolution / 64)
    to = Transformer.from_crs(grid.crs, 4326, always_xy=True)
    lon, _ = to.transform(*np.asarray(edge.exterior.coords).T)
    lon = np.asarray(lon)
    if lon.max() - lon.min() > 180 or (np.abs(np.diff(lon)) > 180).any():
        raise InputError("the images cross the 180th meridian; split them there and survey "
                         "each side on its own")


def detect(images: Sequence[Path], model_dir: Path, out: Path, cfg: SurveyConfig, *,
           dem: Path | None = None, aoi: Path | None = None, exclude: Path | None = None,
           formats: Sequence[str] | None = None,
           progress: Callable[[str, int], Callable[[int], None]] | None = None) -> DetectResult:
    """Find candidate patches; writes the deliverables into ``out`` (see the output contract)."""
    t_start = time.perf_counter()
    # ---- validate everything before anything is written
    check_can_create(Path(out), "--out")
    _check_out_apart(Path(out), images, model_dir)
    # --scheduler first (local:N within the machine's cap; an address answers as a dask
    # scheduler: one round trip, the connect timeout when nothing answers)
    check_runner(cfg.run.scheduler)
    art = model_artifact.load(model_dir)
    # a calendar the config names is checked against the model's before the images are
    # read; else the model's own, chosen by the images' dates below
    calendar = None
    if "calendar" in cfg.given or not art.meta.get("calendars"):
        calendar = load_calendar(cfg.calendar)
        check_calendar(art, calendar)
    # Read in half-tile chunks: a tile and its halo read 4 x 4 of them (2 x 2 tiles' worth of
    # pixels) where tile-sized chunks read 3 x 3 whole tiles. Smaller chunks read fewer pixels
    # but cost more than they save: at 2048 px, 16 tiles read in 11.3 s with 256 px chunks
    # and 21.4 s with 128 px (task overhead, concatenation, and GeoTIFF blocks, commonly
    # 256 px, decoded again for every chunk that cuts them).
    scene, dem_da, uncut, uncut_dem = prepare_scene(
        images, cfg, dem=dem, aoi=aoi, chunks=max(64, cfg.run.chunk_size // 2),
        camera=art.meta["sensor"], whole=True)
    if cfg.terrain_correction != "none" and dem_da is None:
        trained = art.meta.get("config", {}).get("terrain_correction")
        raise InputError(f"terrain_correction is '{cfg.terrain_correction}' but no --dem was "
                         "given; " + ("give a DEM (the model was trained with it)"
                                      if trained == cfg.terrain_correction else
                                      "give a DEM or set terrain_correction: none"))
    cfg = _settings_in_effect(cfg, art.meta.get("config"))
    _check_not_across_180(scene)
    _warn_other_pixel_size(art, scene)
    if calendar is None:
        calendar = _model_calendar(art, scene["time"].values, dem_da)
    shift = calendar_shift(calendar, dem_da)
    shifts = shift_range(shift)
    dates = [str(t)[:10] for t in scene["time"].values]
    held = dates_in_phases(scene["time"].values, calendar, list(calendar.phases),
                           shifts or (0, 0))
    check_phases(art, {p: [dates[i] for i in ix] for p, ix in held.items()}, calendar, dates,
                 shifts)
    plan = make_plan(masks(scene.isel(y=slice(0, 1), x=slice(0, 1)), cfg), calendar,
                     cfg.features, shifts)
    columns = check_fit(art, plan.names, scene.attrs["sensor"],
                        json.loads(scene.attrs.get("dropped_bands", "{}")),
                        scene["band"].values.tolist(),
                        terrain_correction=cfg.terrain_correction)
    exclusion = None
    if exclude is not None:
        geoms, _ = read_polygons(exclude, scene.rio.crs, what="exclusion file")
        exclusion = shapely.union_all(geoms)
    formats = tuple(formats or cfg.outputs.formats)
    out = Path(out)

    # ---- run tiles (resumable)
    # the output grid: the scene's, or with --aoi the window of the AOI's bounding box (the
    # scene around it is context for the tiles' masks and neighbourhood features)
    r0, r1, c0, c1 = json.loads(scene.attrs.get("aoi_window", "null")) or \
        (0, scene.sizes["y"], 0, scene.sizes["x"])
    H, W = r1 - r0, c1 - c0
    out_tf = scene.rio.transform() * Affine.translation(c0, r0)
    aoi_geom = None
    if aoi is not None:
        from pipeline.aoi import read_aoi
        aoi_geom = read_aoi(aoi, scene.rio.crs)
    cs = cfg.run.chunk_size
    stride = max(1, int(np.ceil(max(H, W) / 1024)))
    state = out / STATE_DIR
    lock_folder(state, out, "detect")
    # read once: the inputs can be GBs. The AOI and exclusion files count by content, so a
    # rerun after one was edited in place starts afresh instead of resuming
    digests = _digest_inputs(images, dem, (aoi, exclude))
    roles = {k: str(Path(v).resolve()) if v else None for k, v in (("dem", dem), ("aoi", aoi))}
    # the calendar and a sensor file count by content: the config names them by path, and a
    # calendar edited in place resumed every tile computed with the old phases
    sensor_file = (file_digest(Path(cfg.sensor)) if Path(cfg.sensor).suffix.lower()
                   in (".yaml", ".yml") else None)
    model_digests = _model_digests(model_dir)
    fp = _fingerprint(digests, model_digests, cfg, {**roles, "H": H, "W": W,
                                                "tile_format": TILE_FORMAT,
                                                "calendar": calendar.model_dump(mode="json"),
                                                "sensor_file": sensor_file})
    tdir = tile_dir(out, fp)
    run_file = tdir / "run.json"
    if run_file.is_file() and _read_json(run_file).get("fingerprint") != fp:
        shutil.rmtree(tdir, ignore_errors=True)     # damaged: its tiles cannot be trusted
    if any(p != tdir for p in (state / "tiles").glob("*")):
        # kept until this run has delivered: a run that fails (a damaged image found
        # mid-way) must not cost the earlier run its tiles
        log.info("%s holds a run with other inputs or settings: this one starts afresh "
                 "beside it", state)
    tdir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fp, "chunk_size": cs}))
    tiles = [(f"{y0:06d}_{x0:06d}", slice(y0, min(y0 + cs, H)), slice(x0, min(x0 + cs, W)))
             for y0 in range(0, H, cs) for x0 in range(0, W, cs)]
    todo = [t for t in tiles if not _tile_done(tdir, t[0])]
    resumed = len(tiles) - len(todo)
    if resumed:
        log.info("resuming: %d of %d tiles already done", resumed, len(tiles))
    # fitted on the whole scene, AOI or not: its c are a scene's statistics, and inside an AOI
    # every pixel must score as in a run without it
    terrain = terrain_fit(masks(uncut, cfg), uncut_dem, cfg)
    slope = aspect = None
    if dem_da is not None:
        from indices.terrain import slope_aspect
        slope, aspect = slope_aspect(dem_da)
    halo = cfg.masks.max_flower_px if "scl" in scene["band"].values else 0
    ctx = TileContext(scene, slope, aspect, dem_da, calendar, terrain, cfg, plan, art.estimator,
                      art.meta["calibration"], art.reduced, pixel_threshold(art.threshold, cfg),
                      stride, halo, art.threshold, exclusion is None, (r0, c0), out_tf, aoi_geom,
                      None if columns is None else tuple(columns))
    # Each tile is read once (only its halo is shared), so GDAL's block cache (default 5 % of
    # RAM) only grows: at 2048 px it added ~80 MB per two tiles (TILE_GDAL_CACHE_BYTES).
    with open_runner(cfg.run.scheduler, memory_per_worker=cfg.run.memory_per_worker) as runner, \
            rasterio.Env(GDAL_CACHEMAX=TILE_GDAL_CACHE_BYTES):
        if runner.dashboard:
            log.warning("dask dashboard: %s", runner.dashboard)
        # traverse=False: the context is one opaque object; traversed, dask would compute its
        # lazy scene (the whole scene in memory) before the first tile
        dctx = dask.delayed(ctx, pure=True, traverse=False)
        tasks = [(key, dask.delayed(process_tile, pure=True)(dctx, ys, xs))
                 for key, ys, xs in todo]
        tick = progress("tiles", len(tiles)) if progress else None
        if tick and resumed:
            tick(resumed)
        run_tiles(runner, tasks, lambda key, res: _save_tile(tdir, key, res), progress=tick)

    # ---- assemble
    _release_freed_memory()
    t_asm = time.perf_counter()
    pieces, blind, gaps, timings = [], [], [], {s: 0.0 for s in STAGES}
    # patches the tiles settled; pixels with a probability, and those at the threshold
    in_tiles = {"below_threshold": 0, "below_mmu": 0, "seen_px": 0, "candidate_px": 0}
    tick = progress("assemble", len(tiles)) if progress else None
    for key, _, _ in tiles:
        p, b, g, tm, counts = _load_tile_doc(tdir, key)
        pieces += p
        blind += b
        gaps += g
        for s in STAGES:
            timings[s] += tm.get(s, 0.0)
        for k in in_tiles:
            in_tiles[k] += counts[k]
        if tick:
            tick(1)
    patches = merge_pieces(pieces)
    del pieces
    weak = sum(1 for p in patches if p.score_max < art.threshold) + in_tiles["below_threshold"]
    patches = [p for p in patches if p.score_max >= art.threshold]  # patch rule: the peak
    removed = removed_targets = 0
    if exclusion is not None:
        # on a site: sharing ground with it, not just an edge (a field beside a park)
        on_site = [p.geometry.intersects(exclusion) and not p.geometry.touches(exclusion)
                   for p in patches]
        gone = [p for p, on in zip(patches, on_site) if on]
        patches = [p for p, on in zip(patches, on_site) if not on]
        removed = len(gone)
        # said in targets, as the list counts them: most patches on a flower field are
        # specks below the unit that would never have been listed
        removed_targets = len(target_patches(gone, scene.rio.crs.to_wkt(), cfg.patches)[0])
        log.warning("--exclude removed %d candidate target(s) on known ornamental sites "
                    "(%d patch(es) of the threshold, specks below the unit included)",
                    removed_targets, removed)
    dates = [str(t)[:10] for t in scene["time"].values]
    # a target's dates: the acquisitions its features used (a phase holds them) on which it
    # was clear, not an image dated outside the calendar, nor another flight's date
    used = {d for ds in plan.phase_dates.values() for d in ds}
    bg_mean = [np.nan if v is None else v for v in art.meta.get("background_mean", [])]
    bg_std = [np.nan if v is None else v for v in art.meta.get("background_std", [])]
    targets, below_mmu = build_targets(
        patches, scene.rio.crs.to_wkt(), patch_cfg=cfg.patches, rank_cfg=cfg.ranking,
        dates=[d if d in used else None for d in dates], sensor=scene.attrs["sensor"],
        feature_names=art.feature_names,
        bg_mean=bg_mean, bg_std=bg_std, blind_areas=merge_blind(blind + _blind_gaps(
            gaps, aoi_geom is not None, out_tf, H, W)))
    merged = len(patches) - below_mmu - len(targets.targets)   # joined a nearby target
    below_mmu += in_tiles["below_mmu"]
    n_patches = len(patches) + in_tiles["below_mmu"]
    del patches, blind     # the targets hold what the writers need (50k patches: ~100 MB)
    candidate_share = (round(in_tiles["candidate_px"] / in_tiles["seen_px"], 4)
                       if in_tiles["seen_px"] else None)
    if candidate_share is not None and candidate_share > CANDIDATE_SHARE_WARN:
        log.warning("the model flags %.0f%% of the area it saw: unless this scene is mostly "
                    "poppy, the model does not transfer to it and flags whole fields; label "
                    "some plots and other crops here and train on this scene too (train "
                    "--manifest)", 100 * candidate_share)

    timings["patches"] += time.perf_counter() - t_asm

    # ---- write into a staging folder, then move into place
    t_w = time.perf_counter()
    stage = state / "staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    transform = out_tf
    crs = scene.rio.crs
    tick = progress("write", 6) if progress else (lambda n: None)
    write_tiles_raster(stage / "probability.tif", tdir, tiles, "prob", H, W, crs, transform,
                       "float32", np.nan, "calibrated poppy probability")
    tick(1)
    write_tiles_raster(stage / "evidence.tif", tdir, tiles, "evidence", H, W, crs, transform,
                       "uint8", 255, "clear observations in the flowering phase")
    tick(1)
    rgb = _assemble_thumb(tdir, tiles, stride, H, W)
    thumb_tf = transform * transform.scale(stride, stride)
    files = writers.write_targets(targets, stage, formats, gcj02=cfg.outputs.gcj02)
    targets_written = [f.suffix[1:] for f in files if f.stem == "targets"]
    tick(1)
    files.append(writers.write_blind_areas(targets, stage))
    tick(1)
    files.append(maps.write_quicklook(stage / "quicklook.png", rgb, thumb_tf, crs, targets))
    tick(1)
    files.append(maps.write_map_html(stage / "map.html", rgb, thumb_tf, crs, targets))
    tick(1)
    timings["write"] = time.perf_counter() - t_w
    # in m^2 whatever the CRS (degrees in a geographic one: geodesic areas)
    pcrs = CRS.from_user_input(crs.to_wkt())
    to_wgs = Transformer.from_crs(pcrs, "EPSG:4326", always_xy=True)
    flowering_blind = sum(area_m2(g, pcrs, to_wgs) for g in targets.blind_areas)
    report = {
        "command": "detect",
        "inputs": digests,
        # absolute, as the inputs' paths are
        "model": {"dir": str(Path(model_dir).resolve()), "files": model_digests,
                  "threshold": art.threshold,
                  "pixel_threshold": pixel_threshold(art.threshold, cfg),
                  "sensor": art.meta["sensor"], "calendar": art.meta["calendar"]},
        "dem": _absolute(dem), "aoi": _absolute(aoi), "exclude": _absolute(exclude),
        # the formats written (--formats over the config's), not the config's list
        "config": _with_formats(cfg.model_dump(mode="json"), targets_written),
        "files": sorted([f.name for f in files] + ["probability.tif", "evidence.tif",
                                                    "report.json"]),
        "versions": environment(),
        "grid": {"crs": crs.to_string(), "shape": [H, W], "resolution": abs(transform.a)},
        # ground given (images, AOI) outside the survey grid: not surveyed, not blind either
        "unsurveyed": json.loads(scene.attrs.get("unsurveyed", "{}")),
        # the calendar the features were taken in (the model's own unless the config
        # named one; of a model of several, the one the dates fit)
        "calendar": {"name": calendar.name,
                     "phases": calendar.model_dump(mode="json")["phases"]},
        "dates": dates, "phase_dates": plan.phase_dates,
        "scheduler": cfg.run.scheduler, "tiles": len(tiles), "tiles_resumed": resumed,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "counts": {"targets": len(targets.targets),
                   "patches": n_patches + removed + weak,
                   "excluded": removed_targets, "excluded_patches": removed,
                   "below_mmu": below_mmu, "below_threshold": weak,
                   "merged_nearby": merged,
                   "candidate_share": candidate_share,
                   "blind_areas": len(targets.blind_areas),
                   "blind_area_m2": round(flowering_blind, 3)},
    }
    report["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
    write_json_atomic(stage / "report.json", report)
    files = [stage / "probability.tif", stage / "evidence.tif", *files, stage / "report.json"]
    final = [out / f.name for f in files]
    with uninterrupted():
        # deliverables of an earlier run into the same folder that this one does not write
        # (other --formats, no GCJ-02 copies) would sit beside a report that does not
        # describe them
        for old in DELIVERABLES - {f.name for f in files}:
            (out / old).unlink(missing_ok=True)
        for f, dst in zip(files, final):
            os.replace(f, dst)
    shutil.rmtree(stage, ignore_errors=True)
    for other in (state / "tiles").glob("*"):        # the tiles of runs this one replaced
        if other != tdir:
            shutil.rmtree(other) if other.is_dir() else other.unlink()
    (state / "run.json").unlink(missing_ok=True)     # where it was before the 21st session
    unlock_folder(state)
    return DetectResult(out, len(targets.targets), final, report)


def _assemble_thumb(tdir: Path, tiles, stride: int, H: int, W: int) -> np.ndarray:
    hs, ws = (H + stride - 1) // stride, (W + stride - 1) // stride
    rgb = None
    for key, ys, xs in tiles:
        with np.load(tdir / f"{key}.npz") as z:
            block = z["rgb"]
        if rgb is None:
            rgb = np.full((block.shape[0], hs, ws), np.nan, dtype="float32")
        oy = (ys.start + stride - 1) // stride
        ox = (xs.start + stride - 1) // stride
        rgb[:, oy:oy + block.shape[1], ox:ox + block.shape[2]] = block
    assert rgb is not None
    return rgb
