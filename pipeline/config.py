"""Survey configuration: YAML parsed once into validated, frozen objects.

``load_config(path)`` reads a survey YAML (``configs/survey-sentinel2.yaml`` by default) and
returns a :class:`SurveyConfig`. A wrong key or value raises :class:`ConfigError` with one line
naming the file, the key and the allowed values. Everything downstream receives these objects,
never raw dicts.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "survey-sentinel2.yaml"
#: The defaults for drone orthomosaics (pixels finer than DRONE_PIXEL_M): multispectral
#: cameras (a near-infrared band), and RGB cameras (visible bands only)
DRONE_CONFIG = CONFIG_DIR / "survey-drone.yaml"
DRONE_RGB_CONFIG = CONFIG_DIR / "survey-drone-rgb.yaml"
DRONE_PIXEL_M = 2.0
PHASES = ("pre", "flowering", "post")


class _Frozen(BaseModel):
    #: no .nan or .inf: every number of a config is a size, a share or a count
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class MaskConfig(_Frozen):
    #: keep small, SWIR-dark SCL cloud/snow patches (Sen2Cor's white-flower mistake) as land
    rescue_flowers: bool = True
    #: largest patch (pixels) that can be rescued; clouds are larger
    max_flower_px: int = Field(50, ge=1, le=1000)
    #: a rescued patch's mean swir16 is at most this: the spectral cloud test's SWIR bound
    #: (clouds are brighter; petals over soil reach 0.25-0.30, docs/classifier.md)
    flower_swir16_max: float = Field(0.30, gt=0, le=1)


class FeatureConfig(_Frozen):
    #: reflectance bands composited per phase (those the sensor lacks are skipped)
    bands: tuple[str, ...] = ("blue", "green", "red", "rededge1", "rededge2", "rededge3",
                              "nir", "nir08", "swir16", "swir22")
    #: catalogue indices composited per phase (those the sensor cannot compute are skipped)
    indices: tuple[str, ...] = ("NDVI", "GNDVI", "NDRE", "CIre", "NDYI", "NDWI", "BSI", "PSRI",
                                "NBR", "PWI", "VWI", "RPI", "MPI", "ExG", "VARI", "NGRDI")
    #: per-phase medians of the raw bands as features. Off in the Sentinel-2 survey config:
    #: raw reflectance carries each scene's brightness (terrain, calibration, haze) and
    #: transferred worse to held-out scenes than indices and phase contrasts
    #: (docs/classifier.md); on for sensors with few bands and one date (drones)
    band_medians: bool = True
    #: calendar phases that get features; a single drone flight has only ``flowering``, so
    #: drone configs list just that phase instead of carrying all-NaN pre/post columns
    phases: tuple[Literal["pre", "flowering", "post"], ...] = PHASES
    #: spatial context (indices/texture.py): bands/indices whose per-phase median gets local
    #: statistics over square windows of radius ``spatial_radii_px``: plant and flower
    #: patterns at centimetre pixels (drone); the contrast of a pixel to its neighbours
    #: (``dev``) at 10 m (Sentinel-2 config). ``<var>@leaf``: on green-leaf pixels only;
    #: ``<var>@rel``: each statistic over the window's mean (brightness-free). Off by default
    spatial_vars: tuple[str, ...] = ()
    spatial_radii_px: tuple[int, ...] = ()
    spatial_stats: tuple[Literal["mean", "std", "max", "min", "dev"], ...] = (
        "mean", "std", "max")

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from pipeline.bands import CANONICAL_BANDS
        _refuse_unknown(v, CANONICAL_BANDS, "band", "allowed (canonical band names): "
                        f"{', '.join(CANONICAL_BANDS)}")
        return v

    @field_validator("indices")
    @classmethod
    def _indices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from indices.catalogue import load_catalogue
        cat = list(load_catalogue())
        _refuse_unknown(v, cat, "index", f"the index catalogue has: {', '.join(cat)}")
        return v

    @field_validator("spatial_vars")
    @classmethod
    def _spatial_vars(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from indices.catalogue import load_catalogue
        from indices.texture import split_var
        from pipeline.bands import CANONICAL_BANDS
        cat = list(load_catalogue())
        _refuse_unknown([split_var(x)[0] for x in v], list(CANONICAL_BANDS) + cat, "variable",
                        f"allowed: the bands {', '.join(CANONICAL_BANDS)} and the indices "
                        f"{', '.join(cat)}, each optionally + @leaf and/or @rel", given=v)
        return v

    @field_validator("phases")
    @classmethod
    def _phases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "flowering" not in v:
            raise ValueError(f"{list(v)} lacks 'flowering': poppy is found in bloom, so the "
                             "flowering phase always gets features")
        return v

    @field_validator("spatial_radii_px")
    @classmethod
    def _radii(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [r for r in v if r < 1 or r > 64]
        if bad:
            raise ValueError(f"radii must be 1-64 pixels, not {bad}")
        if len(set(v)) < len(v):   # each radius computed twice: duplicate feature columns
            raise ValueError(f"{list(v)} lists a radius twice; list each once")
        return v

    @property
    def spatial_px(self) -> int:
        """Halo (pixels) a tile must read around itself for the spatial features."""
        return max(self.spatial_radii_px) if self.spatial_vars and self.spatial_radii_px else 0


def _refuse_unknown(values: Sequence[str], known: Sequence[str], what: str, allowed: str,
                    given: Sequence[str] | None = None) -> None:
    """A ValueError naming the first of ``values`` not in ``known`` (as written: ``given``),
    with its spelling in ``known`` when only the case differs, and what is ``allowed``."""
    for x, shown in zip(values, given or values):
        if x not in known:
            same = [k for k in known if k.lower() == x.lower()]
            hint = f" (did you mean '{same[0]}'?)" if same else ""
            raise ValueError(f"unknown {what} '{shown}'{hint}; {allowed}")


class ModelConfig(_Frozen):
    kind: Literal["hgb", "rf"] = "hgb"
    target_recall: float = Field(0.95, gt=0, le=1)
    #: the threshold is set for ``target_recall`` of the labelled poppy polygons of at least
    #: this many pixels; smaller (sub-pixel) plots are not required to be found
    threshold_min_plot_px: float = Field(4.0, ge=0)
    #: the threshold never exceeds this: where the training plots all score near 1 out of fold
    #: (drone plots of hundreds of pixels), the recall rule says nothing about other flights
    threshold_max: float = Field(0.99, gt=0, lt=1)
    #: ... and never falls below this: a threshold far under the cap lets a drone model's
    #: specks chain into targets the size of a field (docs/drone.md); the default is the
    #: recall rule's own floor
    threshold_min: float = Field(0.01, gt=0, lt=1)
    #: at most 4e6: cross-validation shuffles use seed * 1000 + repeat, which scikit-learn
    #: takes up to 2**32 - 1
    seed: int = Field(0, ge=0, le=4_000_000)
    #: boosting iterations and tree depth: small trees transferred as well as big ones to
    #: held-out scenes and predict 2x faster (docs/classifier.md)
    max_iter: int = Field(100, ge=10, le=2000)
    max_depth: int = Field(4, ge=2, le=32)
    learning_rate: float = Field(0.08, gt=0, le=1)
    #: fewest training pixels per leaf (hgb and rf): larger = smoother, less scene-specific
    min_samples_leaf: int = Field(80, ge=1)
    l2_regularization: float = Field(1.0, ge=0)
    #: trees of the random forest (kind: rf)
    n_estimators: int = Field(200, ge=10, le=2000)
    #: pixels sampled per polygon at most (keeps training bounded on big fields)
    max_pixels_per_polygon: int = Field(400, ge=1)
    #: mixed edge pixels: polygons are eroded by this many metres before sampling
    #: (falls back to the unreduced polygon when erosion would empty it)
    erode_m: float = Field(5.0, ge=0)
    #: pixels drawn at random from each training scene's unlabelled area as extra background
    #: (field edges, roads, hamlets: where most false targets came from); 0 = labels only.
    #: Assumes poppy is rare outside the labelled plots (classifiers/sampling.py)
    background_sample_px: int = Field(10000, ge=0, le=1_000_000)
    #: unlabelled pixels this close to a labelled poppy polygon are not drawn
    background_buffer_m: float = Field(30.0, ge=0)
    cv_folds: int = Field(5, ge=2, le=20)
    #: the grouped cross-validation is repeated with other fold shuffles and the out-of-fold
    #: scores averaged: a steadier threshold across training seeds (docs/classifier.md)
    cv_repeats: int = Field(3, ge=1, le=10)
    #: with several training scenes (--manifest), hold out whole scenes in cross-validation
    #: (the threshold then meets unseen scenes, as detect does); false: spatial blocks only
    cv_hold_out_scenes: bool = True
    #: side of the square spatial blocks used to group polygons in cross-validation
    cv_block_m: float = Field(500.0, gt=0)
    #: augmented copies of each training scene (gain, sub-pixel band shift, blur; drawn from
    #: ``seed``), sampled like the original: a model less tied to its training flight's
    #: levels and sharpness (classifiers/augment.py, docs/drone.md). 0 = none
    augment_copies: int = Field(0, ge=0, le=5)
    #: also train a model without each combination of phases (at least one kept), for pixels
    #: a cloud or the swath edge leaves without a clear image in them (blind areas included)
    #: and surveys that end before a phase; about twice the training time (docs/classifier.md)
    missing_phase_models: bool = True

    @model_validator(mode="after")
    def _threshold_range(self):
        if self.threshold_min > self.threshold_max:
            raise ValueError(f"threshold_min {self.threshold_min} is above threshold_max "
                             f"{self.threshold_max}")
        return self


class PatchConfig(_Frozen):
    #: minimum mapping unit in m^2 (Sentinel-2: 1 px = 100 m^2). The Sentinel-2 survey config
    #: sets 200 (2 px): single-pixel patches were most of the false targets on held-out
    #: scenes, while plots of >= 4 px still give patches of >= 2 px (docs/classifier.md)
    min_mapping_unit_m2: float = Field(100.0, ge=0)
    #: two-level patch rule: pixels at or above min(pixel_threshold, model threshold) form
    #: patches, and a patch is kept when its peak reaches the model's threshold. 1.0 (default)
    #: = one threshold for both. Lower values raised the matching-rule precision on held-out
    #: scenes but by merging false pixels into blobs of up to 60 ha (docs/classifier.md), so
    #: they are not the default.
    pixel_threshold: float = Field(1.0, gt=0, le=1)
    #: patches at most this many metres apart (directly or through a chain of others) count
    #: together for the minimum mapping unit: a plot's flowers show as separate blobs at a
    #: drone's few cm (plants 0.2-0.5 m apart, leaves, buds and shadows between), each smaller
    #: than the unit although the plot is not. 0 = each patch on its own
    group_distance_m: float = Field(0.0, ge=0)
    #: candidates (already above the minimum mapping unit, alone or in their group) at most
    #: this many metres apart (directly or through a chain of others) form one target: one
    #: place for a field team, which cannot tell apart spots closer than its positioning
    #: (phone GNSS ~3 m; a Sentinel-2 target's own position is uncertain by about a pixel).
    #: The target is the union of the parts (a MultiPolygon when they do not touch).
    #: 0 = patches touching only at a corner stay separate targets
    merge_distance_m: float = Field(0.0, ge=0)


class RankingConfig(_Frozen):
    """priority = w_score*score + w_area*area_term + w_evidence*evidence_term (documented in docs/)."""
    w_score: float = Field(0.7, ge=0)
    w_area: float = Field(0.2, ge=0)
    w_evidence: float = Field(0.1, ge=0)
    #: area at which the area term saturates (m^2)
    area_saturation_m2: float = Field(2000.0, gt=0)


class OutputConfig(_Frozen):
    formats: tuple[Literal["geojson", "gpkg", "csv", "gpx", "kml"], ...] = Field(
        ("geojson", "gpkg", "csv", "gpx", "kml"), min_length=1)
    gcj02: bool = False


#: the least memory a local:N worker can run tiles in (bytes)
MIN_WORKER_MEMORY = 256 * 2**20


class RunConfig(_Frozen):
    chunk_size: int = Field(512, ge=16, le=8192)
    #: memory limit of each ``local:N`` worker, as dask.distributed reads it: a size ("3GB",
    #: "512MiB"), "auto", a share of the machine's memory (0.5) or 0 for no limit
    memory_per_worker: str = "3GB"
    #: threads | processes | sync | local:N | tcp://HOST:PORT of a dask scheduler
    #: (pipeline/scheduler.py)
    scheduler: str = "threads"

    @field_validator("memory_per_worker", mode="before")
    @classmethod
    def _memory_number(cls, v: Any) -> Any:
        """A bare number in the YAML (4000000000, 0.5) is a size as dask reads it."""
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("memory_per_worker")
    @classmethod
    def _memory(cls, v: str) -> str:
        if v.strip() == "auto":
            return v
        try:
            size = float(v)
        except ValueError:
            from dask.utils import parse_bytes
            try:
                size = parse_bytes(v) if v.strip() else -1
            except ValueError:
                size = -1
        if not size >= 0:   # also NaN
            raise ValueError(f"'{v}' is not a memory size; write e.g. 3GB, 512MiB, auto, a "
                             "share of the machine's memory such as 0.5, or 0 for no limit")
        if 1 < size < MIN_WORKER_MEMORY:
            # dask reads a bare 4 as 4 bytes: its workers then restart for ever (no tile
            # finishes, nothing is said); below ~256 MB not even the interpreter fits
            from dask.utils import format_bytes
            said = format_bytes(int(size)) if size >= 1024 else f"{size:g} bytes"
            raise ValueError(f"'{v}' is {said}, too little for a worker (at least "
                             "256MiB; a bare number above 1 is bytes, up to 1 a share of the "
                             "machine's memory): write e.g. 3GB")
        return v

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        from pipeline.errors import PoppyscanError
        from pipeline.scheduler import parse_spec
        try:
            parse_spec(v)
        except PoppyscanError as exc:
            raise ValueError(str(exc).removeprefix("--scheduler ")) from None
        return v


class SurveyConfig(_Frozen):
    #: a name of configs/sensors/: the sensor family the settings are tuned for, for the
    #: record (the readers identify each image's sensor from its own metadata, and detect
    #: checks the model's sensor against that). A sensor *file* (.yaml) instead reads every
    #: image with it: a camera of one's own, another reflectance scaling (docs/inputs.md)
    sensor: str = "sentinel2"
    calendar: str = "east-china"
    terrain_correction: Literal["none", "c", "scs+c"] = "none"
    masks: MaskConfig = MaskConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    patches: PatchConfig = PatchConfig()
    ranking: RankingConfig = RankingConfig()
    outputs: OutputConfig = OutputConfig()
    run: RunConfig = RunConfig()
    source: str = ""
    #: the settings (dotted keys) the user's own config file or options give; the others
    #: come from the shipped config it is layered on, or from the code
    _given: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def given(self) -> frozenset[str]:
        return self._given

    @field_validator("sensor", "calendar")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class Phase(_Frozen):
    start: str  # "MM-DD"
    end: str

    @field_validator("start", "end")
    @classmethod
    def _month_day(cls, v: str) -> str:
        # MM-DD only: Python reads '2000-W14-1' as an ISO week date
        try:
            if not re.fullmatch(r"\d\d-\d\d", v):
                raise ValueError(v)
            dt.date.fromisoformat(f"2000-{v}")
        except ValueError as exc:
            raise ValueError(f"'{v}' is not a MM-DD date") from exc
        return v

    def contains(self, day: dt.date, shift_days: float = 0.0) -> bool:
        d = day - dt.timedelta(days=shift_days)
        md = (d.month, d.day)
        s = tuple(int(p) for p in self.start.split("-"))
        e = tuple(int(p) for p in self.end.split("-"))
        if s <= e:
            return s <= md <= e
        return md >= s or md <= e  # wraps over the year end


class Calendar(_Frozen):
    name: str
    description: str = ""
    reference: str = ""
    phases: dict[Literal["pre", "flowering", "post"], Phase]
    #: days the phases move later per 100 m above the reference (a few days at most: 16922
    #: days is not a season)
    elevation_shift_days_per_100m: float = Field(0.0, ge=-30, le=30)
    reference_elevation_m: float = 0.0

    @field_validator("phases")
    @classmethod
    def _flowering(cls, v: dict[str, Phase]) -> dict[str, Phase]:
        if "flowering" not in v:   # features, the threshold and detect all need the bloom
            raise ValueError("no 'flowering' phase: poppy is found in bloom; add "
                             "flowering: {start: 'MM-DD', end: 'MM-DD'}")
        return v

    @property
    def shifts_with_elevation(self) -> bool:
        """Whether the phases move with height (features then need a DEM)."""
        return self.elevation_shift_days_per_100m != 0

    def shift_days(self, elevation_m):
        """Whole days the phases move later at ``elevation_m`` (a number or an array; works
        on numpy and xarray); no elevation (NaN) keeps the reference calendar."""
        k = self.elevation_shift_days_per_100m
        days = (elevation_m - self.reference_elevation_m) / 100.0 * k
        if hasattr(days, "fillna"):
            return days.fillna(0).round()
        return np.round(np.nan_to_num(days, nan=0.0))


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed where ``loc`` points (its parent's fields), if that is a section."""
    cls = model
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return [k for k in cls.model_fields if k != "source"]


def _format_error(where: Path | str, exc: ValidationError,
                  model: type[BaseModel] | None = None) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(err["loc"])) if model is not None else []
        hint = f"allowed: {', '.join(allowed)}" if allowed else "check its spelling"
        return f"{where}: unknown key '{key}'; {hint}"
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return f"{where}: key '{key}': {err.get('input')!r} is not allowed; allowed: " \
               f"{ctx['expected']}"
    msg, given = err["msg"], err.get("input")
    if err["type"] == "value_error":   # our validators' own words, which name the value
        msg = msg.removeprefix("Value error, ")
        if isinstance(given, (dict, list, tuple)) or str(given) in msg:
            return f"{where}: key '{key}': {msg}"
    shown = repr(given)
    if len(shown) > 80:   # a whole file given where a value belongs
        shown = shown[:77] + "..."
    return f"{where}: key '{key}': {msg} (got {shown})"


def load_yaml(path: Path, what: str = "config file", error: type[Exception] = ConfigError
              ) -> Any:
    """The parsed YAML document of ``path``; a missing or invalid file raises ``error`` with
    one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:   # saved as "ANSI" on a Chinese Windows: GBK, of which GB18030 is a superset
            text = raw.decode("gb18030")
        except UnicodeDecodeError:
            raise error(f"{path}: {what} is not text (neither UTF-8 nor GBK); save it as "
                        "UTF-8") from None
        log.info("%s: read as GBK (not UTF-8)", path)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)   # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise error(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last:
    a second `patches:` section silently replaced the first one's settings)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue           # `<<: *anchor`: its keys may be overridden here
            key = self.construct_object(key_node, deep=deep)
            try:
                again = key in seen
            except TypeError:      # a list as key: the base class says "unhashable key"
                continue
            if again:
                raise _DuplicateKey(
                    f"key '{key}' is given twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); give it once (the second would replace "
                    "the first)")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What the parser found and where: 'line 40, column 1: found character '\\t' that cannot
    start any token' (a tab), not only 'while scanning for the next token'."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    hint = "; indent with spaces, not tabs" if "\\t" in problem else ""
    return f"{where}{problem}{hint}"


def _read_yaml(path: Path) -> dict[str, Any]:
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_config(path: Path | None = None, *, say_base: bool = True) -> SurveyConfig:
    """Load and validate a survey config (default: configs/survey-sentinel2.yaml).

    A config of one's own need only hold what it changes: the settings it leaves out come
    from the shipped config for its ``sensor`` (survey-sentinel2.yaml, survey-drone.yaml or
    survey-drone-rgb.yaml), section by section, not from the code's bare defaults (a file of
    only ``calendar: east-china`` had no spatial features and half the minimum mapping unit).
    A calendar or sensor file named by a relative path is found beside the config, as a
    manifest's paths are (it was looked up in the current folder). ``say_base=False``: the
    shipped config it is layered on is not logged (detect layers a file without ``sensor``
    on the model's training config instead: ``pipeline.survey.detect_config``)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    data = _read_yaml(path)
    given = frozenset(_dotted_keys(data))
    if "source" in data:   # set by the loader, not a key of the file
        raise ConfigError(f"{path}: unknown key 'source'; allowed: "
                          f"{', '.join(_allowed_keys(SurveyConfig, ('source',)))}")
    for key in ("calendar", "sensor"):
        v = data.get(key)
        if isinstance(v, str) and Path(v).suffix and not Path(v).is_absolute():
            data[key] = str((path.parent / v).resolve())
    base = _shipped_base(data, path)
    if base is not None and base.resolve() != path.resolve():
        data = _layered(_read_yaml(base), data)
        if say_base:
            log.info("%s: settings it does not give come from %s", path,
                     base.relative_to(REPO_ROOT))
    try:
        cfg = SurveyConfig.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc, SurveyConfig)) from None
    check_names(cfg, path)
    cfg._given = given
    return cfg


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"model": {"seed": 1}, "calendar": "x"}`` -> ``["model.seed", "calendar"]``."""
    out = []
    for k, v in data.items():
        out += (_dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v
                else [f"{prefix}{k}"])
    return out


def _shipped_base(data: dict[str, Any], where: Path) -> Path | None:
    """The shipped config a user's config is layered on: the one for its sensor (a drone
    camera: survey-drone.yaml, an RGB camera: survey-drone-rgb.yaml; Sentinel-2 or none
    given: survey-sentinel2.yaml). None for a sensor the loader cannot tell (checked later)."""
    sensor = data.get("sensor", "sentinel2")
    if not isinstance(sensor, str):
        return None
    from pipeline.sensors import known_sensors, load_sensor
    if not Path(sensor).suffix and sensor not in known_sensors():
        return None
    if Path(sensor).suffix and not Path(sensor).is_file():
        return None
    try:
        spec = load_sensor(sensor)
    except ConfigError as exc:
        raise ConfigError(f"{where}: key 'sensor': {exc}") from None
    if spec.kind != "drone":
        return DEFAULT_CONFIG
    return DRONE_CONFIG if "nir" in spec.canonical.values() else DRONE_RGB_CONFIG


def _layered(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``: sections merged key by key, every other value ``own``'s."""
    out = dict(base)
    for k, v in own.items():
        out[k] = _layered(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) \
            else v
    return out


def default_config_for(pixel_m: float, bands: Sequence[str]) -> Path:
    """The shipped survey config for images of this pixel size and these (canonical) bands:
    Sentinel-2 from 2 m up, else drone: multispectral with a ``nir`` band, RGB without one.
    Every length in a config (edge erosion to minimum mapping unit) is set for satellite or
    drone pixels; the drone features differ by whether the camera sees near-infrared
    (docs/drone.md)."""
    if pixel_m >= DRONE_PIXEL_M:
        return DEFAULT_CONFIG
    return DRONE_CONFIG if "nir" in bands else DRONE_RGB_CONFIG


def config_from_dict(data: dict[str, Any], where: str, *,
                     calendar: bool = True) -> SurveyConfig:
    """A config stored as a dict (a model's training config), validated like a file;
    ``calendar=False``: its calendar is not looked for (the model carries its calendars)."""
    try:
        cfg = SurveyConfig.model_validate({**data, "source": where})
    except ValidationError as exc:
        raise ConfigError(_format_error(where, exc, SurveyConfig)) from None
    check_names(cfg, where, calendar=calendar)
    return cfg


def check_names(cfg: SurveyConfig, where: Path | str, *, calendar: bool = True) -> None:
    """Fail early, naming the file and the key, on an unknown calendar or sensor (or a
    calendar or sensor file that is missing or invalid)."""
    if calendar:
        if not Path(cfg.calendar).suffix and cfg.calendar not in known_calendars():
            raise ConfigError(f"{where}: key 'calendar': unknown calendar '{cfg.calendar}'; "
                              f"allowed: {', '.join(known_calendars())} (or a calendar file "
                              "path)")
        if Path(cfg.calendar).suffix and not Path(cfg.calendar).is_file():
            raise ConfigError(f"{where}: key 'calendar': {_no_calendar_file(cfg.calendar)}")
        load_calendar(cfg.calendar)
    from pipeline.sensors import known_sensors, load_sensor
    if not Path(cfg.sensor).suffix and cfg.sensor not in known_sensors():
        raise ConfigError(f"{where}: key 'sensor': unknown sensor '{cfg.sensor}'; allowed: "
                          f"{', '.join(known_sensors())} (or a sensor file path)")
    if Path(cfg.sensor).suffix:   # a sensor file: it must exist and parse
        try:
            load_sensor(cfg.sensor)
        except ConfigError as exc:
            raise ConfigError(f"{where}: key 'sensor': {exc}") from None


def known_calendars() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "calendars").glob("*.yaml"))


def _no_calendar_file(path: str | Path) -> str:
    return (f"calendar file not found: {path}; give an existing calendar file or a built-in "
            f"calendar: {', '.join(known_calendars())}")


def load_calendar(name_or_path: str | Path) -> Calendar:
    """Load a regional calendar by name (configs/calendars/NAME.yaml) or path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / "calendars" / f"{name_or_path}.yaml"
        if not p.is_file():
            raise ConfigError(
                f"unknown calendar '{name_or_path}'; known: {', '.join(known_calendars())}")
    elif not p.is_file():
        raise ConfigError(_no_calendar_file(p))
    data = _read_yaml(p)
    try:
        return Calendar.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(p, exc, Calendar)) from None


def with_overrides(cfg: SurveyConfig, **changes: Any) -> SurveyConfig:
    """A copy of ``cfg`` with dotted-path overrides (CLI options win over the config).

    A bad override is a ConfigError naming the option, not the config file it overrides.
    """
    data = cfg.model_dump()
    given = {k: v for k, v in changes.items() if v is not None}
    where = f"option(s) {', '.join(sorted(given))} over {cfg.source or 'the defaults'}"
    for dotted, value in given.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{where}: unknown section '{part}' in '{dotted}'; allowed: "
                                  f"{', '.join(k for k in SurveyConfig.model_fields if k != 'source')}")
            node = node[part]
        node[leaf] = value
    try:
        out = SurveyConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_format_error(where, exc, SurveyConfig)) from None
    if {"calendar", "sensor"} & set(given):
        check_names(out, where)
    out._given = cfg.given | set(given)
    return out
