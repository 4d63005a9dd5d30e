"""Survey config and calendars: one clear ConfigError naming the file, the key and the allowed
values; CLI overrides win over the file."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydantic
import pytest

from pipeline.config import (
    DEFAULT_CONFIG,
    known_calendars,
    load_calendar,
    load_config,
    with_overrides,
)
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "survey.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(_cfg(tmp_path, text))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "survey.yaml"))
    return msg


def test_shipped_config_and_calendars_load() -> None:
    cfg = load_config()
    assert cfg.source == str(DEFAULT_CONFIG)
    assert cfg.sensor == "sentinel2" and cfg.calendar == "east-china"
    assert load_config(DEFAULT_CONFIG) == cfg
    assert len(known_calendars()) >= 4
    for name in known_calendars():
        cal = load_calendar(name)
        assert "flowering" in cal.phases


def test_empty_file_gives_the_shipped_defaults(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, "# nothing\n"))
    assert cfg.model_dump(exclude={"source"}) == load_config().model_dump(exclude={"source"})


def test_a_partial_config_is_layered_on_the_shipped_one_for_its_sensor(tmp_path) -> None:
    """A config of only what it changes took the rest from the code's bare defaults (no
    spatial features, half the minimum mapping unit, no merging), not from the shipped config
    the docs name; section by section, the shipped config for its sensor fills it."""
    s2 = load_config()
    cfg = load_config(_cfg(tmp_path, "calendar: east-china\npatches:\n  "
                                     "min_mapping_unit_m2: 300\n"))
    assert cfg.patches.min_mapping_unit_m2 == 300
    assert cfg.patches.merge_distance_m == s2.patches.merge_distance_m == 10
    assert cfg.features == s2.features and cfg.model == s2.model
    drone = load_config(ROOT / "configs" / "survey-drone.yaml")
    cfg = load_config(_cfg(tmp_path, "sensor: mavic3m\n"))
    assert cfg.sensor == "mavic3m" and cfg.features == drone.features
    rgb = load_config(_cfg(tmp_path, "sensor: rgb\n"))
    assert rgb.features == load_config(ROOT / "configs" / "survey-drone-rgb.yaml").features


def test_a_relative_calendar_path_is_found_beside_the_config(tmp_path, monkeypatch) -> None:
    """It was looked up in the current folder: not found from elsewhere, or an unrelated
    file of that name used."""
    (tmp_path / "conf").mkdir()
    cal = (ROOT / "configs" / "calendars" / "east-china.yaml").read_text()
    (tmp_path / "conf" / "mycal.yaml").write_text(cal.replace("name: east-china",
                                                              "name: mine"))
    (tmp_path / "mycal.yaml").write_text("not: a calendar\n")
    conf = tmp_path / "conf" / "survey.yaml"
    conf.write_text("calendar: mycal.yaml\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(conf)
    assert Path(cfg.calendar) == tmp_path / "conf" / "mycal.yaml"
    assert load_calendar(cfg.calendar).name == "mine"


@pytest.mark.parametrize("text,needle", [
    (("patches:\n  min_mapping_unit_m2: 200\nrun:\n  chunk_size: 64\npatches:\n  "
      "merge_distance_m: 5\n"), "key 'patches' is given twice (lines 1 and 5)"),
    ("run:\n\tchunk_size: 64\n", "line 2, column 1: found character"),
    ("? [run, chunk_size]\n: 64\n", "unhashable key"),     # it was a traceback
])
def test_yaml_mistakes_say_what_and_where(tmp_path, text, needle) -> None:
    """A key given twice was accepted (the last one won); a tab said only 'while scanning
    for the next token'."""
    msg = _error(tmp_path, text)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("text,key,allowed", [
    ("modle:\n  kind: hgb\n", "'modle'", "model, patches"),
    ("masks:\n  rescue_flower: true\n", "'masks.rescue_flower'", "rescue_flowers"),
    ("run:\n  chunksize: 64\n", "'run.chunksize'", "chunk_size"),
])
def test_unknown_key_names_file_key_and_allowed_keys(tmp_path, text, key, allowed) -> None:
    msg = _error(tmp_path, text)
    assert f"unknown key {key}" in msg and allowed in msg


@pytest.mark.parametrize("text,key,allowed", [
    ("model:\n  kind: xgboost\n", "model.kind", "'hgb' or 'rf'"),
    ("terrain_correction: minnaert\n", "terrain_correction", "'none', 'c' or 'scs+c'"),
    ("outputs:\n  formats: [geojson, shp]\n", "outputs.formats.1", "'kml'"),
    ("run:\n  chunk_size: 8\n", "run.chunk_size", "greater than or equal to 16"),
    ("model:\n  target_recall: 1.5\n", "model.target_recall", "less than or equal to 1"),
    ("model:\n  target_recall: high\n", "model.target_recall", "valid number"),
    ("calendar: mars\n", "calendar", "east-china"),
    ("sensor: landsat8\n", "sensor", "p4m"),
    ("sensor: ''\n", "sensor", "must not be empty"),
    ("model: [1, 2]\n", "model", "dictionary"),
])
def test_wrong_value_names_file_key_and_allowed_values(tmp_path, text, key, allowed) -> None:
    msg = _error(tmp_path, text)
    assert f"key '{key}'" in msg and allowed in msg


def test_not_yaml_or_not_a_mapping_or_missing(tmp_path: Path) -> None:
    assert "not valid YAML" in _error(tmp_path, "model: [\n")
    assert "mapping" in _error(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(pydantic.ValidationError):
        cfg.model.kind = "rf"  # type: ignore[misc]


def test_overrides_win_and_leave_the_rest(tmp_path: Path) -> None:
    base = load_config(_cfg(tmp_path, "run:\n  scheduler: processes\n  chunk_size: 256\n"))
    cfg = with_overrides(base, **{"run.scheduler": "local:2", "patches.min_mapping_unit_m2":
                                  300, "model.kind": None})
    assert cfg.run.scheduler == "local:2" and cfg.patches.min_mapping_unit_m2 == 300
    assert cfg.run.chunk_size == 256 and cfg.model.kind == "hgb"   # None = not given
    assert cfg.source == base.source
    assert base.run.scheduler == "processes"                       # the original is untouched


@pytest.mark.parametrize("changes,needle", [
    ({"run.chunk_size": 5}, "key 'run.chunk_size'"),
    ({"run.shceduler": "threads"}, "unknown key 'run.shceduler'; allowed: chunk_size"),
    ({"rnu.scheduler": "threads"}, "unknown section 'rnu'"),
    ({"calendar": "mars"}, "unknown calendar 'mars'"),
])
def test_bad_override_names_the_option(changes, needle) -> None:
    with pytest.raises(ConfigError) as exc:
        with_overrides(load_config(), **changes)
    msg = str(exc.value)
    assert msg.startswith(f"option(s) {next(iter(changes))} over ") and needle in msg


def test_cli_scheduler_option_overrides_the_config(tmp_path: Path) -> None:
    import run as cli
    path = _cfg(tmp_path, "run:\n  scheduler: processes\n")
    assert cli._config(path, **{"run.scheduler": "local:3"}).run.scheduler == "local:3"
    assert cli._config(path, **{"run.scheduler": None}).run.scheduler == "processes"


def test_cli_bad_config_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    import run as cli
    path = _cfg(tmp_path, "model:\n  kind: xgboost\n")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli.main(["train", "--images", "x.tif", "--labels", "l.geojson", "--model",
                         str(tmp_path / "m"), "--config", str(path)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "survey.yaml" in err and "model.kind" in err and "'hgb' or 'rf'" in err
    assert not (tmp_path / "m").exists()


def _image(path: Path, pixel: float, crs: str, bands: tuple[str, ...] = ("red",)) -> Path:
    import numpy as np
    import rasterio
    from affine import Affine
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=len(bands),
                       dtype="float32", crs=crs,
                       transform=Affine(pixel, 0, 116.0 if crs == "EPSG:4326" else 500000,
                                        0, -pixel, 30.0 if crs == "EPSG:4326" else 3.3e6)) as d:
        d.write(np.full((len(bands), 8, 8), 0.1, "float32"))
        for i, b in enumerate(bands, 1):
            d.set_band_description(i, b)
        d.update_tags(ACQUISITION_DATE="2025-04-20")
    return path


def test_without_config_train_takes_the_config_of_the_pixel_size(tmp_path: Path) -> None:
    """Every length in a config (edge erosion, CV blocks, minimum mapping unit) is set for
    Sentinel-2 or for a drone: the images' pixel size chooses, in any CRS."""
    from pipeline.config import DRONE_CONFIG, DRONE_RGB_CONFIG
    from pipeline.survey import default_config
    ms, rgb = ("blue", "green", "red", "rededge2", "nir"), ("red", "green", "blue")
    cases = [(0.05, "EPSG:32650", ms, DRONE_CONFIG), (10.0, "EPSG:32650", ms, DEFAULT_CONFIG),
             (0.05 / 111_000, "EPSG:4326", ms, DRONE_CONFIG),
             (1e-4, "EPSG:4326", ms, DEFAULT_CONFIG),
             # a drone camera without near-infrared gets the RGB drone config
             (0.03, "EPSG:32650", rgb, DRONE_RGB_CONFIG), (10.0, "EPSG:32650", rgb, DEFAULT_CONFIG)]
    for i, (pixel, crs, bands, want) in enumerate(cases):
        cfg = default_config([_image(tmp_path / f"i{i}.tif", pixel, crs, bands)])
        assert cfg.source == str(want), (pixel, crs, bands)
    assert load_config(DRONE_CONFIG).patches != load_config(DEFAULT_CONFIG).patches
    assert load_config(DRONE_RGB_CONFIG).patches == load_config(DRONE_CONFIG).patches


def test_without_config_detect_takes_the_models_training_config(tmp_path: Path) -> None:
    import json

    from pipeline.survey import default_config
    img = _image(tmp_path / "i.tif", 10.0, "EPSG:32650")
    trained = with_overrides(load_config(), **{"patches.min_mapping_unit_m2": 123.0})
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"config": trained.model_dump(mode="json")}))
    cfg = default_config([img], model)
    assert cfg.patches.min_mapping_unit_m2 == 123.0 and "training config" in cfg.source
    (model / "model.json").write_text("{not json")   # loading the model reports it later
    assert default_config([img], model).source == str(DEFAULT_CONFIG)
    (model / "model.json").write_text(json.dumps({"config": {"model": {"kind": "x"}}}))
    with pytest.raises(ConfigError, match="training config.*model.kind"):
        default_config([img], model)


# --- calendars ---------------------------------------------------------------------------------
def _calendar(tmp_path: Path, phases: str, extra: str = "") -> Path:
    p = tmp_path / "cal.yaml"
    p.write_text(f"name: test\n{extra}phases:\n{phases}", encoding="utf-8")
    return p


@pytest.mark.parametrize("phases,needle", [
    ("  flowering: {start: '04-31', end: '05-20'}\n", "phases.flowering.start"),
    ("  flowering: {begin: '04-01', end: '05-20'}\n", "phases.flowering"),
    ("  bloom: {start: '04-01', end: '05-20'}\n", "'pre', 'flowering' or 'post'"),
])
def test_bad_calendar_names_file_and_key(tmp_path: Path, phases: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_calendar(_calendar(tmp_path, phases))
    assert str(exc.value).startswith(str(tmp_path / "cal.yaml")) and needle in str(exc.value)


def test_unknown_calendar_name_lists_the_known() -> None:
    with pytest.raises(ConfigError, match="unknown calendar 'mars'; known: .*east-china"):
        load_calendar("mars")


def test_phases_wrap_the_year_end_and_move_with_elevation(tmp_path: Path) -> None:
    from indices.window import phase_membership
    cal = load_calendar(_calendar(
        tmp_path, "  pre: {start: '11-01', end: '01-31'}\n"
                  "  flowering: {start: '02-01', end: '03-15'}\n",
        extra="elevation_shift_days_per_100m: 2\nreference_elevation_m: 500\n"))
    dates = np.array(["2024-12-20", "2025-01-10", "2025-02-01", "2025-02-15", "2025-03-16",
                      "2025-03-30"], dtype="datetime64[ns]")
    held = phase_membership(dates, cal, ["pre", "flowering"])
    assert [i for i, _, _ in held["pre"]] == [0, 1]                 # over the year end
    assert [i for i, _, _ in held["flowering"]] == [2, 3]           # 03-16: in no phase
    # 1000 m higher: 20 days later, so 02-15 is still pre there and 03-30 flowering
    assert cal.shift_days(1500.0) == 20 and cal.shift_days(np.nan) == 0
    held = dict(phase_membership(dates, cal, ["pre", "flowering"], shifts=(0, 20)))
    assert (3, 15, 20) in held["pre"] and (3, 0, 14) in held["flowering"]
    assert (5, 15, 20) in held["flowering"] and (4, 1, 20) in held["flowering"]


@pytest.mark.parametrize("text,needle", [
    # the loader sets 'source' itself: a file's own one was a TypeError traceback
    ("source: mine\n", "unknown key 'source'; allowed: sensor, calendar"),
    # YAML allows keys that are not strings (a TypeError traceback before)
    ("1: x\n", "key '1': Keys should be strings"),
    ("features:\n  spatial_radii_px: [2, 99]\n",
     "key 'features.spatial_radii_px': radii must be 1-64 pixels, not [99]"),
])
def test_keys_the_loader_could_not_take_are_config_errors(tmp_path, text, needle) -> None:
    assert needle in _error(tmp_path, text)


def test_a_calendar_without_flowering_is_refused_where_it_is_named(tmp_path: Path) -> None:
    """Poppy is found in bloom: a calendar without a flowering phase was accepted by train (a
    model without bloom) and a KeyError traceback in detect."""
    cal = _calendar(tmp_path, "  pre: {start: '03-01', end: '03-31'}\n")
    with pytest.raises(ConfigError) as exc:
        load_calendar(cal)
    msg = str(exc.value)
    assert msg.startswith(f"{cal}: key 'phases': no 'flowering' phase") and "\n" not in msg
    # named by a config, the config's loading refuses it, naming the calendar file
    with pytest.raises(ConfigError, match=f"^{cal}: key 'phases': no 'flowering' phase"):
        load_config(_cfg(tmp_path, f"calendar: {cal}\n"))


def test_a_missing_calendar_file_is_not_a_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "nocal.yaml"
    msg = _error(tmp_path, f"calendar: {missing}\n")
    assert f"key 'calendar': calendar file not found: {missing}" in msg
    assert "config file not found" not in msg and "east-china" in msg
    with pytest.raises(ConfigError, match=f"^calendar file not found: {missing}; .*east-china"):
        load_calendar(missing)


def test_detect_with_a_calendar_lacking_a_phase_the_model_used_is_a_model_error() -> None:
    """A calendar of flowering and post, a model that learnt from pre: a ModelError naming
    the phase and the calendar (a KeyError traceback before)."""
    from classifiers.artifact import Artifact
    from classifiers.predict import check_phases
    from pipeline.config import Calendar
    from pipeline.errors import ModelError
    cal = Calendar(name="short", phases={"flowering": {"start": "04-01", "end": "05-20"},
                                         "post": {"start": "05-21", "end": "06-30"}})
    art = Artifact(None, {"feature_names": ["pre.median.NDVI", "flowering.median.NDVI"],
                          "phase_dates": [{"pre": ["2024-03-15"], "flowering": ["2024-04-20"]}]})
    with pytest.raises(ModelError, match="uses the pre phase but calendar short has none"):
        check_phases(art, {"flowering": ["2024-04-20"], "post": []}, cal, ["2024-04-20"])


@pytest.mark.parametrize("text,key,needle", [
    # these loaded and failed later as "the model's features do not fit"
    ("features:\n  bands: [red, ultraviolet]\n", "features.bands",
     "unknown band 'ultraviolet'; allowed (canonical band names): coastal, blue"),
    ("features:\n  spatial_vars: [NDVI, FOO]\n  spatial_radii_px: [1]\n",
     "features.spatial_vars", "unknown variable 'FOO'; allowed: the bands coastal"),
    ("features:\n  spatial_vars: [NDVI@rel, ndyi@leaf]\n", "features.spatial_vars",
     "unknown variable 'ndyi@leaf' (did you mean 'NDYI'?)"),
    # refused before only when the features were planned, without the file or the key
    ("features:\n  indices: [NDVI, FOOBAR]\n", "features.indices",
     "unknown index 'FOOBAR'; the index catalogue has: NDVI"),
    # poppy is found in bloom: no model without flowering features
    ("features:\n  phases: [pre, post]\n", "features.phases", "['pre', 'post'] lacks 'flowering'"),
])
def test_unknown_feature_names_are_refused_at_load(tmp_path, text, key, needle) -> None:
    msg = _error(tmp_path, text)
    assert f"key '{key}': {needle}" in msg


def test_every_band_index_and_spatial_variable_form_loads() -> None:
    from indices.catalogue import load_catalogue
    from pipeline.bands import CANONICAL_BANDS
    cat = tuple(load_catalogue())
    cfg = with_overrides(load_config(), **{
        "features.bands": CANONICAL_BANDS, "features.indices": cat,
        "features.spatial_vars": ("nir@rel", "NDYI@leaf", "red@leaf@rel", *cat)})
    assert cfg.features.indices == cat


@pytest.mark.parametrize("key,value,needle", [
    # 'lots' loaded and failed in dask.distributed with a traceback
    ("memory_per_worker", "lots", "'lots' is not a memory size; write e.g. 3GB"),
    ("memory_per_worker", "-2GB", "'-2GB' is not a memory size"),
    # dask reads 4 as 4 bytes: the workers restarted for ever and detect never ended
    ("memory_per_worker", "4", "'4' is 4 bytes, too little for a worker (at least 256MiB"),
    ("memory_per_worker", "50MB", "'50MB' is 47.68 MiB, too little"),
    # the minimum named as the value it refused (256MB < 256 MiB); 1.5 read as '2 bytes'
    ("memory_per_worker", "256MB",
     "'256MB' is 244.14 MiB, too little for a worker (at least 256MiB"),
    ("memory_per_worker", "1.5", "'1.5' is 1.5 bytes"),
    ("scheduler", "thread", "'thread' is not one of threads, processes"),
    ("scheduler", "local:0", "local:N needs N >= 1"),
])
def test_run_values_are_checked_at_load(tmp_path, key, value, needle) -> None:
    assert f"key 'run.{key}': {needle}" in _error(tmp_path, f"run:\n  {key}: {value}\n")


@pytest.mark.parametrize("memory", ["3GB", "512 MiB", "auto", "0.5", "0", "4000000000"])
def test_memory_sizes_dask_reads_load(tmp_path, memory) -> None:
    cfg = load_config(_cfg(tmp_path, f"run:\n  memory_per_worker: {memory}\n"))
    assert cfg.run.memory_per_worker == memory


def test_a_bad_scheduler_option_is_refused_with_the_config(tmp_path) -> None:
    with pytest.raises(ConfigError, match="^option.s. run.scheduler over .*'tcp:/x' is not one"):
        with_overrides(load_config(), **{"run.scheduler": "tcp:/x"})


@pytest.mark.parametrize("key,value,needle", [
    # these loaded and were only met (or not) later: a NaN priority, an inverted ranking, a
    # detect that writes no target file, a scikit-learn traceback for the seed
    ("ranking.w_score", ".nan", "Input should be a finite number"),
    ("patches.merge_distance_m", ".inf", "Input should be a finite number"),
    ("ranking.w_area", "-0.2", "Input should be greater than or equal to 0"),
    ("outputs.formats", "[]", "Tuple should have at least 1 item"),
    ("model.seed", "-1", "Input should be greater than or equal to 0"),
    ("model.seed", "20240501", "Input should be less than or equal to 4000000"),
])
def test_numbers_that_only_failed_later_are_refused_at_load(tmp_path, key, value,
                                                            needle) -> None:
    section, name = key.split(".")
    msg = _error(tmp_path, f"{section}:\n  {name}: {value}\n")
    assert f"key '{key}': {needle}" in msg


def test_a_sensor_file_must_exist_and_be_a_sensor_file(tmp_path: Path) -> None:
    """cfg.sensor is not read again after loading: a missing sensor file passed silently."""
    missing = tmp_path / "cam.yaml"
    assert f"key 'sensor': {missing}: sensor file not found" in _error(
        tmp_path, f"sensor: {missing}\n")
    missing.write_text("name: cam\nkind: drone\n")
    assert "key 'sensor': " in _error(tmp_path, f"sensor: {missing}\n")
    from pipeline.sensors import SENSORS_DIR
    assert load_config(_cfg(tmp_path, f"sensor: {SENSORS_DIR / 'p4m.yaml'}\n")).sensor.endswith(
        "p4m.yaml")


@pytest.mark.parametrize("start,needle", [("W14-1", "'W14-1' is not a MM-DD date"),
                                          ("4-1", "'4-1' is not a MM-DD date")])
def test_a_phase_date_is_month_day_only(tmp_path, start, needle) -> None:
    """'W14-1' passed (Python reads 2000-W14-1 as an ISO week date) and crashed later."""
    f = tmp_path / "cal.yaml"
    f.write_text(f'name: x\nphases:\n  flowering: {{start: "{start}", end: "05-31"}}\n')
    with pytest.raises(ConfigError, match=needle):
        load_calendar(f)


def test_impossible_calendar_shift_and_repeated_radii_are_refused(tmp_path) -> None:
    f = tmp_path / "cal.yaml"
    f.write_text('name: x\nphases:\n  flowering: {start: "04-01", end: "05-31"}\n'
                 'elevation_shift_days_per_100m: 100000\n')
    with pytest.raises(ConfigError, match="elevation_shift_days_per_100m"):
        load_calendar(f)
    assert "lists a radius twice" in _error(tmp_path, "features:\n  spatial_radii_px: [1, 1, 4]\n")


def test_a_leap_day_phase_with_an_elevation_shift_is_shown(tmp_path) -> None:
    """'02-29' was validated, then crashed the phase's display (a year without 29 February)."""
    from indices.window import phase_window
    f = tmp_path / "cal.yaml"
    f.write_text('name: x\nphases:\n  flowering: {start: "02-29", end: "05-31"}\n'
                 'elevation_shift_days_per_100m: 3\n')
    assert phase_window(load_calendar(f), "flowering", (2, 5)) == \
        "03-02 to 06-05 (elevation: 2 to 5 days later)"


def test_yaml_merge_keys_work(tmp_path) -> None:
    """An anchor merged into a mapping (`<<: *spring`), a key overridden there, is valid YAML
    that the duplicate-key check refused as 'could not determine a constructor'."""
    p = tmp_path / "cal.yaml"
    p.write_text("name: merged\nphases:\n  pre: &spring {start: '03-01', end: '03-31'}\n"
                 "  flowering:\n    <<: *spring\n    start: '04-01'\n    end: '05-31'\n"
                 "  post: {start: '05-21', end: '06-30'}\n", encoding="utf-8")
    cal = load_calendar(str(p))
    assert (cal.phases["flowering"].start, cal.phases["flowering"].end) == ("04-01", "05-31")
    assert cal.phases["pre"].end == "03-31"
