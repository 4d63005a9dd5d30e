"""Missing-phase models: pixels that a cloud, the swath edge or an early end of the survey
leaves without a clear image in a phase are scored by a model trained without that phase's
features, not by the main model on NaN features (classifiers/artifact.ReducedModel)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from scenes import make_tiny_scene

from classifiers import artifact
from classifiers.artifact import ReducedModel, columns_without
from classifiers.predict import check_phases, predict_block
from pipeline import survey
from pipeline.config import load_calendar, load_config, with_overrides
from pipeline.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["pre.median.NDVI", "flowering.median.NDVI", "post.median.NDVI",
         "flowering-pre.median.NDVI", "post-flowering.median.NDVI", "pre.dev_r1.NDVI"]


class Const:
    """A stand-in estimator: P(poppy) = ``p`` for every pixel; records the columns it saw."""

    def __init__(self, p: float):
        self.p, self.seen = p, []

    def predict_proba(self, X):
        self.seen.append(X.copy())
        return np.column_stack([np.full(len(X), 1 - self.p), np.full(len(X), self.p)])


def test_columns_without_a_phase_drop_its_composites_contrasts_and_context():
    assert columns_without(NAMES, ["pre"]) == [1, 2, 4]
    assert columns_without(NAMES, ["post"]) == [0, 1, 3, 5]
    assert columns_without(NAMES, ["pre", "post"]) == [1]


def test_each_pixel_is_scored_by_the_model_for_the_phases_it_lacks():
    rng = np.random.default_rng(0)
    block = rng.uniform(0, 1, (len(NAMES), 2, 3)).astype("float32")
    block[:, 1, 2] = np.nan                              # no data at all: NaN, no model asked
    missing = {"pre": np.array([[1, 0, 0], [1, 0, 0]], bool),
               "flowering": np.zeros((2, 3), bool),
               "post": np.array([[0, 1, 0], [1, 0, 0]], bool)}
    main, no_pre, no_both = Const(0.2), Const(0.6), Const(0.9)
    reduced = (ReducedModel(("pre",), (1, 2, 4), no_pre, 1.0, 0.0),
               ReducedModel(("pre", "post"), (1,), no_both, 1.0, 2.0))
    p = predict_block(block, main, {"a": 1.0, "b": 0.0}, missing, reduced)
    # (0, 0) lacks pre only; (1, 0) pre and post; (0, 1) post only, for which no model: main
    np.testing.assert_allclose(p[0], [0.6, 0.2, 0.2], rtol=1e-5)
    assert p[1, 0] == pytest.approx(1 / (1 + np.exp(-(np.log(9) + 2))), rel=1e-5)  # its Platt
    assert p[1, 1] == pytest.approx(0.2) and np.isnan(p[1, 2])
    # the reduced models saw only their own columns of their own pixels
    np.testing.assert_array_equal(no_pre.seen[0], block[[1, 2, 4], 0, 0][None])
    np.testing.assert_array_equal(no_both.seen[0], block[[1], 1, 0][None])
    assert sum(len(x) for x in main.seen) == 3
    # a pixel lacking pre and post where only a model without pre exists: the main model
    p = predict_block(block, main, {"a": 1.0, "b": 0.0}, missing, reduced[:1])
    assert p[1, 0] == pytest.approx(0.2) and p[0, 0] == pytest.approx(0.6)
    # a pixel seen in no phase is not scored, though its neighbourhood features are finite
    none = {ph: m | np.array([[0, 0, 1], [0, 0, 0]], bool) for ph, m in missing.items()}
    p = predict_block(block, main, {"a": 1.0, "b": 0.0}, none, reduced)
    assert np.isnan(p[0, 2]) and p[0, 1] == pytest.approx(0.2)


def test_a_survey_without_a_phase_is_scored_when_a_model_lacks_exactly_it(caplog):
    # an in-process CLI run with -q earlier in the session leaves the package loggers at ERROR
    caplog.set_level(logging.WARNING, logger="classifiers.predict")
    cal = load_calendar("east-china")
    full = {"pre": ["2024-03-15"], "flowering": ["2024-04-20"], "post": ["2024-06-05"]}
    art = artifact.Artifact(None, {"feature_names": NAMES, "phase_dates": [full]},
                            (ReducedModel(("post",), (0, 1, 3, 5), None, 1.0, 0.0),))
    no_post = dict(full, post=[])
    check_phases(art, no_post, cal, ["2024-03-15", "2024-04-20"])
    assert "every pixel is scored by the model's missing-phase model" in caplog.text
    with pytest.raises(ModelError, match="pre phase"):    # no model without pre and post
        check_phases(art, dict(no_post, pre=[]), cal, ["2024-04-20"])
    # a model without the flowering phase scores blind areas under clouds, but a survey
    # with no image dated in bloom is refused all the same: the dates are wrong
    art = artifact.Artifact(None, art.meta, (ReducedModel(("flowering",), (0, 2, 5), None,
                                                          1.0, 0.0),))
    with pytest.raises(ModelError, match="poppy is found in bloom"):
        check_phases(art, dict(full, flowering=[]), cal, ["2024-03-15", "2024-06-05"])
    # June images only: the missing bloom is named, not the missing March (whose advice,
    # a model without pre, would fail again)
    with pytest.raises(ModelError, match="uses the flowering phase"):
        check_phases(art, dict(full, pre=[], flowering=[]), cal, ["2024-06-05"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("missing")
    scene = make_tiny_scene(d / "train", seed=3)
    survey.train(scene.images, scene.labels, d / "model", load_config())
    return d, scene


def test_training_stores_one_model_per_combination_of_optional_phases(trained):
    d, _ = trained
    meta = json.loads((d / "model" / "model.json").read_text())
    specs = meta["missing_phase_models"]
    assert [s["missing"] for s in specs] == [["pre"], ["flowering"], ["post"],
                                             ["pre", "flowering"], ["pre", "post"],
                                             ["flowering", "post"]]
    for s in specs:
        assert 0 < s["threshold_recall_rule"] < 1 and set(s["calibration"]) >= {"a", "b"}
        assert 0 <= s["polygon_recall_min_plot"] <= 1
        assert s["n_features"] == len(columns_without(meta["feature_names"], s["missing"]))
    art = artifact.load(d / "model")
    assert [r.missing for r in art.reduced] == [tuple(s["missing"]) for s in specs]
    report = json.loads((d / "model" / "train_report.json").read_text())
    assert len(report["missing_phase_models"]) == 6
    assert "model without pre and post" in (d / "model" / "train_report.txt").read_text()
    # the estimators live in reduced.skops, loaded under the same trusted-type check
    (d / "copy").mkdir()
    for f in ("model.skops", "model.json"):
        (d / "copy" / f).write_bytes((d / "model" / f).read_bytes())
    with pytest.raises(ModelError, match="reduced.skops is missing"):
        artifact.load(d / "copy")


def _detect(model: Path, images, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "detect", "--images",
                           *map(str, images), "--model", str(model), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_clouded_pre_date_is_scored_by_the_model_trained_without_pre(trained, tmp_path,
                                                                       monkeypatch):
    """The survey's only March image is all cloud: every pixel lacks the pre phase and goes to
    the model without pre features, which is the model features.phases: [flowering, post]
    trains on the same labels (the same estimator, calibrated on its own folds)."""
    d, train = trained
    seen = []
    real = survey.predict_block

    def spy(feats, est, calibration, missing=None, reduced=()):
        seen.append((missing, reduced))
        return real(feats, est, calibration, missing, reduced)
    monkeypatch.setattr(survey, "predict_block", spy)
    scene = make_tiny_scene(tmp_path / "survey", seed=4, cloud_date=0)
    survey.detect(scene.images, d / "model", tmp_path / "a", load_config(),
                  formats=["geojson"])
    assert seen and all(m["pre"].all() and not m["flowering"].any() for m, _ in seen)
    assert all([r.missing for r in red][0] == ("pre",) for _, red in seen)
    with rasterio.open(tmp_path / "a" / "probability.tif") as src:
        assert np.isfinite(src.read(1)).all()
    doc = yaml.safe_load((ROOT / "configs" / "survey-sentinel2.yaml").read_text())
    doc["features"]["phases"] = ["flowering", "post"]
    (tmp_path / "no-pre.yaml").write_text(yaml.safe_dump(doc))
    cfg = with_overrides(load_config(tmp_path / "no-pre.yaml"),
                         **{"model.missing_phase_models": False})
    survey.train(train.images, train.labels, tmp_path / "m2", cfg)
    full, no_pre = artifact.load(d / "model"), artifact.load(tmp_path / "m2")
    cols = list(full.reduced[0].columns)
    assert [full.feature_names[i] for i in cols] == no_pre.feature_names
    X = np.random.default_rng(1).normal(0, 0.3, (2000, len(cols)))
    np.testing.assert_array_equal(full.reduced[0].estimator.predict_proba(X),
                                  no_pre.estimator.predict_proba(X))


def test_without_missing_phase_models_a_survey_without_a_phase_is_refused(trained, tmp_path):
    d, train = trained
    cfg = with_overrides(load_config(), **{"model.missing_phase_models": False})
    survey.train(train.images, train.labels, tmp_path / "m", cfg)
    assert not (tmp_path / "m" / "reduced.skops").exists()
    images = [p for p in train.images if "0605" not in p.name]
    r = _detect(tmp_path / "m", images, tmp_path / "out")
    assert r.returncode == 2 and "uses the post phase" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_a_model_is_refused_under_another_terrain_correction():
    """The features are reflectances after the terrain correction: a model trained without
    one meets shifted features under SCS+C (and the other way round)."""
    from classifiers.predict import check_fit
    art = artifact.Artifact(None, {"feature_names": NAMES, "sensor": "sentinel2",
                                   "calendar": "east-china",
                                   "config": {"terrain_correction": "none"}}, ())
    check_fit(art, NAMES, "sentinel2", terrain_correction="none")
    with pytest.raises(ModelError, match="terrain_correction 'none', the config uses 'scs"):
        check_fit(art, NAMES, "sentinel2", terrain_correction="scs+c")
    # the same features in another order (spatial_vars reordered), or more of them (a band
    # the training scene lacked): where the model's are, not "missing e.g. [], 306 expected,
    # 326 computed"
    assert check_fit(art, NAMES, "sentinel2") is None
    assert check_fit(art, NAMES[::-1], "sentinel2") == [5, 4, 3, 2, 1, 0]
    more = ["x.median.NBR", *NAMES[:3], "y.median.NBR", *NAMES[3:]]
    assert [more[i] for i in check_fit(art, more, "sentinel2")] == NAMES
    with pytest.raises(ModelError, match="missing e.g."):
        check_fit(art, NAMES[1:], "sentinel2")


def test_training_images_without_a_phase_train_a_model_that_detects(tmp_path):
    """No training image in March: every pre-phase feature is NaN in the training table.
    scikit-learn 1.9's gradient boosting fails on an all-NaN column (a traceback from train);
    such a column is fitted as a constant no split uses, and the model still finds the plots
    of a survey scene that has all phases."""
    train = make_tiny_scene(tmp_path / "train", seed=3, dates=DATES_NO_PRE)
    survey.train(train.images, train.labels, tmp_path / "m", load_config())
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert any(n.startswith("pre.") for n in meta["feature_names"])
    scene = make_tiny_scene(tmp_path / "survey", seed=4)
    r = _detect(tmp_path / "m", scene.images, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    found = json.loads((tmp_path / "out" / "targets.geojson").read_text())["features"]
    assert len(found) >= 2


DATES_NO_PRE = ["2024-04-12", "2024-04-28", "2024-05-12", "2024-06-05"]


class _Probe:
    """A stand-in estimator whose score is a neighbourhood feature (the 9 x 9 NDVI contrast):
    any change of a pixel's surroundings changes its probability."""

    def __init__(self, k: int):
        self.k = k

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-10 * np.nan_to_num(X[:, self.k])))
        return np.column_stack([1 - p, p])


def test_an_aoi_does_not_change_the_scores_inside_it(trained, tmp_path, monkeypatch):
    """The pixels around a small AOI are context for the masks and the neighbourhood features
    (they were blanked first: a spot the full run scored 0.81-0.95 fell to 0.02). Inside the
    AOI the probabilities equal the full run's; the outputs stay on the AOI's window, and a
    pixel of the window outside the polygon (a triangle) scores nothing."""
    from pyproj import Transformer
    d, _ = trained
    real_load = artifact.load

    def probing(model_dir):
        art = real_load(model_dir)
        k = art.feature_names.index("flowering.dev_r4.NDVI")
        return artifact.Artifact(_Probe(k), art.meta, ())
    monkeypatch.setattr(artifact, "load", probing)
    scene = make_tiny_scene(tmp_path / "survey", seed=4)
    cfg = load_config()
    survey.detect(scene.images, d / "model", tmp_path / "full", cfg)
    tf = scene.transform
    to_ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    # a right triangle over rows 26-40 and columns 34-48 (plot 2 at row 30, column 40; the
    # wheat west of column 32 lies in the 9 x 9 window of the pixels at the AOI's west edge)
    corners = [tf * (34, 26), tf * (48, 26), tf * (34, 40), tf * (34, 26)]
    ring = [list(to_ll.transform(x, y)) for x, y in corners]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                          "coordinates": [ring]}}]}))
    survey.detect(scene.images, d / "model", tmp_path / "aoi", cfg, aoi=aoi)
    with rasterio.open(tmp_path / "full" / "probability.tif") as a, \
            rasterio.open(tmp_path / "aoi" / "probability.tif") as b:
        whole, part = a.read(1), b.read(1)
        col, row = ~a.transform * (b.transform.c, b.transform.f)
    r0, c0 = round(row), round(col)
    assert (r0, c0) == (26, 34) and part.shape == (14, 14)
    window = whole[r0:r0 + 14, c0:c0 + 14]
    inside = np.isfinite(part)
    assert 80 < inside.sum() < 120                               # about half the window
    assert np.ptp(window[inside]) > 0.1                          # the probe does vary
    np.testing.assert_allclose(part[inside], window[inside], atol=1e-6)
    assert np.isnan(part[-2:, -2:]).all()                        # beyond the hypotenuse


def test_detect_records_the_models_own_settings_and_says_what_it_ignores(trained, tmp_path,
                                                                          caplog):
    """A detect config's model section (kind, target recall) does nothing: the estimator and
    its threshold come from training. report.json recorded them as if used, silently; now it
    records the model's, and the log says which given settings were not used, and which
    masks differ from training."""
    d, _ = trained
    scene = make_tiny_scene(tmp_path / "survey", seed=4)
    cfg = with_overrides(load_config(), **{"model.kind": "rf", "model.target_recall": 0.5,
                                           "masks.rescue_flowers": False})
    with caplog.at_level(logging.WARNING):
        survey.detect(scene.images, d / "model", tmp_path / "out", cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["model"]["kind"] == "hgb"
    assert report["config"]["model"]["target_recall"] == 0.95
    assert report["config"]["masks"]["rescue_flowers"] is False        # used: recorded
    text = caplog.text
    assert "model settings (kind, target_recall) are not used by detect" in text
    assert "masks.rescue_flowers differ from the model's training config" in text


def test_model_settings_a_partial_config_does_not_give_are_not_warned(tmp_path, caplog):
    """A detect --config of one's own that changes only the unit was told that model
    settings it never gave (taken from the shipped config it is layered on) "are not used";
    only the model settings the file itself gives are named."""
    scene = make_tiny_scene(tmp_path / "train", seed=3)
    survey.train(scene.images, scene.labels, tmp_path / "model", with_overrides(
        load_config(), **{"model.cv_repeats": 1, "model.missing_phase_models": False}))
    survey_scene = make_tiny_scene(tmp_path / "survey", seed=4)
    own = tmp_path / "own.yaml"
    for n, text in enumerate(["patches:\n  min_mapping_unit_m2: 300\n",
                              "patches:\n  min_mapping_unit_m2: 300\nmodel:\n  cv_repeats: 2\n"]):
        own.write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            survey.detect(survey_scene.images, tmp_path / "model", tmp_path / f"out{n}",
                          load_config(own))
        warned = [r.getMessage() for r in caplog.records if "are not used" in r.getMessage()]
        assert warned == ([] if n == 0 else [
            "the config's model settings (cv_repeats) are not used by detect: the model was "
            "trained with its own, which the report records; retrain to change them"])


def test_a_config_for_the_other_kind_of_images_is_warned(tmp_path, caplog):
    """A P4M flight trained with the Sentinel-2 config ran silently with a 200 m^2 unit."""
    scene = make_tiny_scene(tmp_path / "s", seed=1)
    drone_cfg = load_config(ROOT / "configs" / "survey-drone.yaml")
    with caplog.at_level(logging.WARNING):
        survey.prepare_scene(scene.images, drone_cfg, dem=None)
    assert "is set for p4m images but these are sentinel2" in caplog.text
    assert "use configs/survey-sentinel2.yaml" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        survey.prepare_scene(scene.images, load_config(), dem=None)
    assert "is set for" not in caplog.text


def test_a_hole_the_images_surround_is_blind_but_their_edge_is_not(trained, tmp_path):
    """A block without data on every date inside the scene (a stitching hole) was reported
    nowhere: not blind, not unsurveyed. It is a blind area now; no data along the scene's
    edge (a collar, a swath edge) stays outside the data. With an AOI, all ground inside it
    without data is blind (it was asked for)."""
    d, _ = trained
    scene = make_tiny_scene(tmp_path / "survey", seed=4)
    for img in scene.images:
        with rasterio.open(img, "r+") as dst:
            a = dst.read()
            a[:, 10:15, 50:55] = 0                 # the hole: 5 x 5 px, 2500 m^2
            a[:, :, :3] = 0                        # the collar along the west edge
            dst.write(a)
    survey.detect(scene.images, d / "model", tmp_path / "out", load_config())
    blind = json.loads((tmp_path / "out" / "blind_areas.geojson").read_text())["features"]
    assert [round(f["properties"]["area_m2"]) for f in blind] == [2500]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["blind_area_m2"] == pytest.approx(2500, rel=1e-3)
    from pyproj import Transformer
    to_ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    tf = scene.transform
    ring = [list(to_ll.transform(*(tf * (c, r)))) for c, r in
            [(0, 0), (20, 0), (20, 20), (0, 20), (0, 0)]]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                          "coordinates": [ring]}}]}))
    survey.detect(scene.images, d / "model", tmp_path / "aoi", load_config(), aoi=aoi)
    blind = json.loads((tmp_path / "aoi" / "blind_areas.geojson").read_text())["features"]
    assert [round(f["properties"]["area_m2"], -2) for f in blind] == [6000]   # 3 x 20 px


def test_a_scene_giving_the_features_in_another_order_scores_the_same(trained, tmp_path):
    """detect with a config listing the spatial variables in another order computes the same
    features in another order: they are handed to the model in its own (it was refused with
    'missing e.g. []')."""
    d, _ = trained
    scene = make_tiny_scene(tmp_path / "survey", seed=4)
    cfg = load_config()
    survey.detect(scene.images, d / "model", tmp_path / "a", cfg)
    turned = with_overrides(cfg, **{"features.spatial_vars":
                                    tuple(reversed(cfg.features.spatial_vars))})
    survey.detect(scene.images, d / "model", tmp_path / "b", turned)
    with rasterio.open(tmp_path / "a" / "probability.tif") as a, \
            rasterio.open(tmp_path / "b" / "probability.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    ta = json.loads((tmp_path / "a" / "targets.geojson").read_text())["features"]
    tb = json.loads((tmp_path / "b" / "targets.geojson").read_text())["features"]
    assert [f["properties"] for f in ta] == [f["properties"] for f in tb] and ta


def test_a_phase_the_config_adds_does_not_choose_the_model(tmp_path, monkeypatch):
    """A model of features.phases [flowering, post] run with a config that adds pre: its
    features are left out, and it must not decide which model scores a pixel (a pixel clouded
    in March and June went to the main model on NaN post features, not to the model without
    post)."""
    scene = make_tiny_scene(tmp_path / "train", seed=3)
    cfg = with_overrides(load_config(), **{"features.phases": ("flowering", "post")})
    survey.train(scene.images, scene.labels, tmp_path / "model", cfg)
    surv = make_tiny_scene(tmp_path / "survey", seed=4)
    for k in (0, len(surv.images) - 1):             # March and June clouded in the top half
        with rasterio.open(surv.images[k], "r+") as dst:
            scl = dst.read(13)
            scl[:32] = 9
            dst.write(scl, 13)
    routed = []
    real = survey.predict_block

    def spy(feats, est, calibration, missing=None, reduced=()):
        routed.append(missing)
        return real(feats, est, calibration, missing, reduced)
    monkeypatch.setattr(survey, "predict_block", spy)
    survey.detect(surv.images, tmp_path / "model", tmp_path / "b", load_config(),
                  formats=["geojson"])
    # the pixels are routed by the model's phases only: those without post (top half) go to
    # the model without post, whatever pre holds
    assert routed and all(sorted(m) == ["flowering", "post"] for m in routed)
    assert sum(int(m["post"].sum()) for m in routed) == 32 * 64


def test_an_aoi_does_not_change_the_terrain_correction(tmp_path, monkeypatch):
    """With terrain_correction scs+c, the c of each date and band were fitted on the AOI's
    crop (with its context margin), so every corrected reflectance, and every probability
    inside the AOI, differed from a run without the AOI. They are a scene's statistics: the
    fit sees the whole scene, and gives the whole run's c."""
    from pyproj import Transformer
    cfg = with_overrides(load_config(), terrain_correction="scs+c")
    n = 160           # the AOI with its context margin (54 px) is a part of the scene
    scene = make_tiny_scene(tmp_path / "survey", seed=4, size=n)
    yy, xx = np.mgrid[0:n, 0:n]
    elev = (400 + 60 * np.sin(xx / 5.0) + 40 * np.cos(yy / 7.0)).astype("float32")
    with rasterio.open(scene.images[0]) as src:
        profile = {"driver": "GTiff", "width": n, "height": n, "count": 1,
                   "dtype": "float32", "crs": src.crs, "transform": src.transform}
    dem = tmp_path / "dem.tif"
    with rasterio.open(dem, "w", **profile) as dst:
        dst.write(elev, 1)
    train = make_tiny_scene(tmp_path / "train", seed=3)
    survey.train(train.images, train.labels, tmp_path / "model", cfg, dem=dem)
    fits = []
    real = survey.terrain_fit

    def spy(masked, dem_da, cfg):
        fits.append((masked.sizes["y"], masked.sizes["x"], real(masked, dem_da, cfg)))
        return fits[-1][2]
    monkeypatch.setattr(survey, "terrain_fit", spy)
    survey.detect(scene.images, tmp_path / "model", tmp_path / "full", cfg, dem=dem,
                  formats=["geojson"])
    tf = scene.transform
    to_ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    ring = [list(to_ll.transform(*(tf * c))) for c in [(60, 60), (80, 60), (80, 84),
                                                        (60, 84), (60, 60)]]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                          "coordinates": [ring]}}]}))
    res = survey.detect(scene.images, tmp_path / "model", tmp_path / "aoi", cfg, dem=dem,
                        aoi=aoi, formats=["geojson"])
    assert res.report["grid"]["shape"] == [24, 20]               # the outputs: the AOI's
    (h0, w0, whole), (h1, w1, part) = fits
    assert (h0, w0) == (h1, w1) == (n, n)
    assert np.isfinite(whole.c).any()
    np.testing.assert_array_equal(part.c, whole.c)
