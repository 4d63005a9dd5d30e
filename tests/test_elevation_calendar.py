"""A calendar whose phases move later with elevation (``elevation_shift_days_per_100m``, as in
configs/calendars/afghanistan-east.yaml): each pixel's features come from the dates its own
phases hold, through train and the tiled detect path alike; without a DEM it is refused."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from scenes import CRS, make_tiny_scene

from pipeline import survey
from pipeline.config import load_calendar, load_config, with_overrides
from pipeline.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
HIGH = (slice(40, None), slice(50, None))       # 300 m: phases 9 days later (3 d / 100 m)
HALO = 4                                        # the default config's widest spatial window


def _calendar(path: Path, shift_days: int = 0, per_100m: float = 0) -> Path:
    """east-china (same name, so the model fits), phases moved ``shift_days`` later."""
    base = load_calendar("east-china")

    def later(md: str) -> str:
        d = dt.date.fromisoformat(f"2001-{md}") + dt.timedelta(days=shift_days)
        return d.strftime("%m-%d")
    doc = {"name": base.name, "phases": {p: {"start": later(ph.start), "end": later(ph.end)}
                                         for p, ph in base.phases.items()},
           "elevation_shift_days_per_100m": per_100m, "reference_elevation_m": 0}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("elev")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 32})
    tr = make_tiny_scene(d / "train", seed=3)
    survey.train(tr.images, tr.labels, d / "model", cfg)
    scene = make_tiny_scene(d / "scene", seed=4, size=96,
                            plots=[(10, 10, 4), (60, 70, 4), (80, 20, 3), (45, 60, 3)])
    with rasterio.open(scene.images[0]) as src:
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
                   "dtype": "float32", "crs": CRS, "transform": src.transform}
    elev = np.zeros((96, 96), "float32")
    elev[HIGH] = 300.0
    with rasterio.open(d / "dem.tif", "w", **profile) as dst:
        dst.write(elev, 1)
    return d, cfg, scene


def _detect(setup, out: Path, calendar: Path, dem: bool, monkeypatch) -> tuple[np.ndarray, ...]:
    d, cfg, scene = setup
    monkeypatch.setattr(survey, "STRIP_ROWS", 8)   # strips cut the high area, as on big tiles
    cfg = with_overrides(cfg, calendar=str(calendar))
    survey.detect(scene.images, d / "model", out, cfg, dem=d / "dem.tif" if dem else None,
                  formats=["geojson"])
    with rasterio.open(out / "probability.tif") as p, rasterio.open(out / "evidence.tif") as e:
        return p.read(1), e.read(1)


def test_each_pixel_is_detected_in_its_own_phases(setup, tmp_path, monkeypatch):
    """At 0 m the calendar itself, at 300 m the calendar 9 days later (6 June then counts as
    flowering too), in one run over several tiles and strips."""
    moving = _calendar(tmp_path / "moving.yaml", per_100m=3)
    prob, ev = _detect(setup, tmp_path / "a", moving, True, monkeypatch)
    low_p, low_e = _detect(setup, tmp_path / "b", _calendar(tmp_path / "flat.yaml"), False,
                           monkeypatch)
    high_p, high_e = _detect(setup, tmp_path / "c", _calendar(tmp_path / "late.yaml", 9), False,
                             monkeypatch)
    inside = np.zeros(prob.shape, bool)
    inside[HIGH[0].start + HALO:, HIGH[1].start + HALO:] = True
    outside = np.ones(prob.shape, bool)
    outside[HIGH[0].start - HALO:, HIGH[1].start - HALO:] = False
    for got, low, high in ((prob, low_p, high_p), (ev, low_e, high_e)):
        np.testing.assert_array_equal(got[outside], low[outside])
        np.testing.assert_array_equal(got[inside], high[inside])
    # the two calendars really differ there: 4 flowering dates seen instead of 3
    assert (high_e[inside] == 4).all() and (low_e[inside] == 3).all()


def test_without_a_dem_train_and_detect_refuse_a_calendar_that_moves(setup, tmp_path):
    d, cfg, scene = setup
    moving = with_overrides(cfg, calendar=str(_calendar(tmp_path / "moving.yaml", per_100m=3)))
    # the calendar's reason alone (it began with the labels' path, as if they were wrong)
    with pytest.raises(InputError, match="^calendar 'east-china' moves its phases 3 days per 100 m"
                                         ".*give a DEM"):
        survey.train(scene.images, scene.labels, tmp_path / "m", moving)
    assert not (tmp_path / "m").exists()
    conf = tmp_path / "survey.yaml"
    conf.write_text(yaml.safe_dump({"calendar": str(tmp_path / "moving.yaml")}))
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "detect", "--images",
                        *map(str, scene.images), "--model", str(d / "model"), "--out",
                        str(tmp_path / "out"), "--config", str(conf)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "give a DEM" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_dem_voids_under_a_calendar_that_moves_are_named(tmp_path, caplog):
    """Pixels without an elevation keep the reference elevation's phases; the user is told how
    much of the grid that is (it was silent), and a DEM without voids says nothing."""
    moving = load_calendar(str(_calendar(tmp_path / "moving.yaml", per_100m=3)))
    elev = np.zeros((96, 96), "float32")
    elev[:24] = np.nan                             # a quarter of the grid
    dem = xr.DataArray(elev, dims=("y", "x"))
    with caplog.at_level("WARNING"):
        shift = survey.calendar_shift(moving, dem)
    assert (shift.values == 0).all()           # at 0 m and in the void: the reference
    msg = [r.getMessage() for r in caplog.records if "no elevation" in r.getMessage()]
    assert len(msg) == 1 and "25%" in msg[0] and "reference elevation (0 m)" in msg[0]
    caplog.clear()
    with caplog.at_level("WARNING"):
        survey.calendar_shift(moving, dem.fillna(120.0))
    assert not [r for r in caplog.records if "no elevation" in r.getMessage()]
