"""Drone surveys: spatial context features, the drone config, train/detect on simulated flights.

The end-to-end tests train on two small simulated P4M flights and detect on three others
(every scene its own seed) with the shipped configs/survey-drone.yaml; the recall/precision
floors are below the lowest values measured over several seed sets (docs/drone.md), not tuned
to one draw.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from indices.texture import spatial_block, spatial_names
from indices.window import make_plan, window_features
from outputs.evaluate import match_files
from pipeline.config import CONFIG_DIR, load_calendar, load_config, with_overrides
from pipeline.errors import ConfigError

DRONE_CFG = CONFIG_DIR / "survey-drone.yaml"


# --- spatial features --------------------------------------------------------------------------
def test_spatial_stats_match_a_direct_window_computation() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (1, 30, 40)).astype("float32")
    img[0, 5:9, 10:14] = np.nan
    out = spatial_block(img, [2], ("mean", "std", "max", "min"))
    for (y, x) in [(0, 0), (7, 12), (15, 20), (29, 39), (6, 8)]:
        win = img[0, max(0, y - 2):y + 3, max(0, x - 2):x + 3]
        w = win[np.isfinite(win)]
        np.testing.assert_allclose(out[:, y, x], [w.mean(), w.std(), w.max(), w.min()],
                                   rtol=1e-4, atol=1e-5)


def test_spatial_stats_of_an_all_missing_window_are_missing() -> None:
    img = np.ones((1, 20, 20), "float32")
    img[0, :10, :10] = np.nan
    out = spatial_block(img, [1], ("mean", "std", "max"))
    assert np.isnan(out[:, 3, 3]).all()          # window entirely inside the NaN square
    assert np.isfinite(out[:, 9, 9]).all()       # window touches one valid pixel
    assert out[0, 9, 9] == 1.0


def test_spatial_stats_of_a_tile_with_halo_equal_the_whole_image() -> None:
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (2, 64, 64)).astype("float32")
    img[1, 30:34, 30:40] = np.nan
    whole = spatial_block(img, [3, 5])
    h = 5
    tile = spatial_block(img[:, 32 - h:64, 16 - h:48 + h], [3, 5])[:, h:, h:-h]
    np.testing.assert_allclose(tile, whole[:, 32:, 16:48], rtol=1e-5, atol=1e-6)


def test_spatial_names_order() -> None:
    assert spatial_names(["flowering"], ["NDVI"], [2, 4], ["mean", "max"]) == [
        "flowering.mean_r2.NDVI", "flowering.max_r2.NDVI",
        "flowering.mean_r4.NDVI", "flowering.max_r4.NDVI"]


# --- config and feature plan -------------------------------------------------------------------
def test_drone_config_is_single_phase_with_spatial_context_and_metric_units() -> None:
    cfg = load_config(DRONE_CFG)
    assert cfg.features.phases == ("flowering",)
    assert cfg.features.spatial_px == max(cfg.features.spatial_radii_px) > 0
    # 5 cm pixels: one plant is ~0.05-0.1 m^2, plots from 0.5 m^2 must survive the MMU
    assert 0.05 <= cfg.patches.min_mapping_unit_m2 <= 0.5
    assert cfg.ranking.area_saturation_m2 <= 100
    assert cfg.model.erode_m <= 0.2
    with pytest.raises(ConfigError, match="spatial_radii_px"):
        with_overrides(cfg, **{"features.spatial_radii_px": [0]})
    s2 = load_config()
    assert s2.features.spatial_px == 0 and "pre" in s2.features.phases


def _drone_scene(bands: list[str], n: int = 48, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.02, 0.5, (1, len(bands), n, n)).astype("float32")
    data[0, :, :4, :4] = np.nan
    da = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={
        "time": [np.datetime64("2024-04-20", "ns")], "band": bands,
        "y": 3300000.0 - 0.05 * (np.arange(n) + 0.5), "x": 500000.0 + 0.05 * (np.arange(n) + 0.5),
        "sun_zenith": ("time", [30.0]), "sun_azimuth": ("time", [150.0])})
    da = da.rio.write_crs("EPSG:32650")
    da.attrs["sensor"] = "p4m"
    return da.chunk({"time": -1, "band": -1, "y": 20, "x": 20})


@pytest.mark.parametrize("bands", [["blue", "green", "red", "rededge2", "nir"],
                                   ["red", "green", "blue"]])
def test_drone_features_have_no_empty_phase_and_overlap_like_one_block(bands) -> None:
    cfg = load_config(DRONE_CFG)
    scene = _drone_scene(bands)
    feats = window_features(scene, load_calendar(cfg.calendar), cfg.features)
    assert not any(n.startswith(("pre.", "post.", "flowering-", "post-")) for n in feats.names)
    assert any("_r" in n for n in feats.names)
    chunked = feats.data.values
    one = window_features(scene.chunk({"y": -1, "x": -1}), load_calendar(cfg.calendar),
                          cfg.features).data.values
    np.testing.assert_allclose(chunked, one, rtol=1e-5, atol=1e-6, equal_nan=True)
    # every feature has data somewhere (no all-NaN column that breaks the classifier)
    assert np.isfinite(chunked).reshape(len(feats.names), -1).any(axis=1).all()
    plan = make_plan(scene, load_calendar(cfg.calendar), cfg.features)
    assert plan.halo == cfg.features.spatial_px and list(plan.names) == feats.names
