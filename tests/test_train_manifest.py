"""train --manifest: several scenes, each with its own labels (and calendar), one model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from scenes import make_tiny_scene

from pipeline.config import load_config, with_overrides
from pipeline.errors import InputError
from pipeline.survey import read_manifest, train_manifest


def _two_scenes(tmp_path, a, b, b_labels: str, extra: str = ""):
    """A manifest of scenes ``a`` (its labels) and ``b`` (``b_labels``), paths relative."""
    def images(sc):
        return ", ".join(p.relative_to(tmp_path).as_posix() for p in sc.images)
    man = tmp_path / "manifest.yaml"
    man.write_text("scenes:\n"
                   f"  - images: [{images(a)}]\n    labels: a/labels.geojson\n"
                   f"  - images: [{images(b)}]\n    labels: {b_labels}\n" + extra)
    return man


def test_manifest_trains_on_every_scene(tmp_path, monkeypatch):
    a = make_tiny_scene(tmp_path / "a", seed=1)
    b = make_tiny_scene(tmp_path / "b", seed=2, x0=520000.0,
                        plots=[(5, 40, 3), (40, 10, 2), (20, 20, 2)])
    _two_scenes(tmp_path, a, b, "b/labels.geojson", "    calendar: east-china\n")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64})
    monkeypatch.chdir(tmp_path)                  # a manifest path relative to where one is
    report = train_manifest(Path("manifest.yaml"), tmp_path / "model", cfg)
    assert report["samples"]["scenes"] == 2
    # two scenes with plots: the threshold comes from folds that hold out whole scenes
    assert report["folds"].startswith("StratifiedGroupKFold grouped by scenes")
    assert report["samples"]["classes"]["poppy"] == 6
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert len(meta["phase_dates"]) == 2
    assert any("b/labels.geojson" in k for k in meta["data_hashes"])
    assert all(Path(k).is_absolute() for k in meta["data_hashes"])     # provenance


def test_an_entry_whose_labels_miss_its_images_is_refused(tmp_path):
    """The second scene's labels lie 1 degree away: it would have trained on its drawn
    background alone, its own plots included (single-scene training already refused this)."""
    a = make_tiny_scene(tmp_path / "a", seed=1)
    b = make_tiny_scene(tmp_path / "b", seed=2, x0=520000.0)
    doc = json.loads(b.labels.read_text())
    for f in doc["features"]:
        f["geometry"]["coordinates"] = [[[x + 1.0, y] for x, y in ring]
                                        for ring in f["geometry"]["coordinates"]]
    far = tmp_path / "b" / "far.geojson"
    far.write_text(json.dumps(doc))
    man = _two_scenes(tmp_path, a, b, "b/far.geojson")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64})
    with pytest.raises(InputError, match=r"^training scene 2 \(.*far.geojson\): no label "
                                         "polygon overlaps clear pixels"):
        train_manifest(man, tmp_path / "model", cfg)
    assert not (tmp_path / "model").exists()


def test_scene_errors_name_the_scene_and_no_poppy_anywhere_is_said_so(tmp_path):
    """A season error of the second entry named no scene; label files of background alone
    over every scene were refused as "no 'poppy' polygon overlaps clear pixels ... check the
    labels' CRS and extent", which sent the user after the wrong cause."""
    a = make_tiny_scene(tmp_path / "a", seed=1)
    b = make_tiny_scene(tmp_path / "b", seed=2, x0=520000.0,
                        dates=["2023-04-12", "2024-03-15", "2024-04-12", "2024-05-12"])
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64})
    man = _two_scenes(tmp_path, a, b, "b/labels.geojson")
    with pytest.raises(InputError, match=r"^training scene 2 \(.*b/labels.geojson\): the "
                                         "images come from 2 seasons"):
        train_manifest(man, tmp_path / "model", cfg)
    b = make_tiny_scene(tmp_path / "b2", seed=2, x0=520000.0)
    for sc in (a, b):
        doc = json.loads(sc.labels.read_text())
        doc["features"] = [f for f in doc["features"] if f["properties"]["class"] != "poppy"]
        sc.labels.write_text(json.dumps(doc))
    man = _two_scenes(tmp_path, a, b, "b2/labels.geojson")
    with pytest.raises(InputError, match="no polygon of class 'poppy' in the labels of any of "
                                         "the 2 scenes"):
        train_manifest(man, tmp_path / "model", cfg)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("text, msg", [
    ("[]", "list of scenes"),
    ("- images: [x.tif]\n", "needs 'images' and 'labels'"),
    ("- images: [x.tif]\n  labels: l.geojson\n  colour: red\n", "unknown keys"),
    ("- images: nothere/S2_*.tif\n  labels: l.geojson\n", "'nothere/S2_\\*.tif' matches no file"),
])
def test_bad_manifest_is_a_user_error(tmp_path, text, msg):
    man = tmp_path / "m.yaml"
    man.write_text(text)
    with pytest.raises(InputError, match=msg):
        read_manifest(man)


def test_manifest_images_may_be_glob_patterns(tmp_path):
    """A manifest is written by hand: ``a/S2_*.tif`` means the files, as in a shell; the
    manifest's own folder name is never read as a pattern (``survey [2023]``)."""
    base = tmp_path / "survey [2023]"
    a = make_tiny_scene(base / "a", seed=1)
    (base / "a" / "notes.txt").write_text("not an image")
    man = base / "m.yaml"
    man.write_text("- images: a/S2_*.tif\n  labels: a/labels.geojson\n"
                   f"- images: [a/{a.images[0].name}]\n  labels: a/labels.geojson\n")
    first, second = read_manifest(man)
    assert list(first.images) == sorted(a.images)
    assert list(second.images) == [a.images[0]]
    # '**' is any depth, as in a shell with globstar (it was one level: the nested dates
    # were not found)
    up = tmp_path / "m.yaml"                      # the dates two folders down from it
    up.write_text("- images: '**/S2_*.tif'\n  labels: 'survey [2023]/a/labels.geojson'\n")
    [nested] = read_manifest(up)
    assert list(nested.images) == sorted(a.images)


def test_a_label_file_of_poppy_plots_alone_trains_with_the_unlabelled_background(tmp_path):
    """Teams often hold only the plots they verified: with the unlabelled background draw
    (default) those are enough; without it the file needs background classes."""
    from pipeline.survey import train
    sc = make_tiny_scene(tmp_path / "a", seed=1)
    doc = json.loads(sc.labels.read_text())
    doc["features"] = [f for f in doc["features"] if f["properties"]["class"] == "poppy"]
    sc.labels.write_text(json.dumps(doc))
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64})
    report = train(sc.images, sc.labels, tmp_path / "model", cfg)
    assert set(report["samples"]["classes"]) == {"poppy", "unlabelled"}
    assert report["samples"]["classes"]["poppy"] == 3
    assert report["polygon"]["recall_min_plot"] >= report["target_recall"] - 1e-9
    with pytest.raises(InputError, match="only 'poppy' polygons"):
        train(sc.images, sc.labels, tmp_path / "model2",
              with_overrides(cfg, **{"model.background_sample_px": 0}))
    assert not (tmp_path / "model2").exists()


@pytest.mark.parametrize("entry, msg", [
    # a number passed on to Path() was a TypeError traceback in train
    ("  calendar: 5\n", "scene 2: 'calendar' must be a calendar name or file path .text., not 5"),
    ("  calendar: mars\n", "scene 2: unknown calendar 'mars'; known: .*east-china"),
    ("  calendar: cal.yaml\n", "scene 2: calendar file not found: .*cal.yaml"),
    ("  dem: [a.tif]\n", "scene 2: 'dem' must be a path .text., not \\['a.tif'\\]"),
    ("  dem: nodem.tif\n", "scene 2: dem 'nodem.tif': no such file"),
])
def test_a_later_scenes_mistake_is_found_before_any_scene_is_read(tmp_path, entry, msg):
    """Each entry's values are checked when the manifest is read, naming the manifest and the
    scene: not after the first scenes' work, not as a traceback."""
    (tmp_path / "x.tif").write_bytes(b"")
    (tmp_path / "l.geojson").write_text("{}")
    man = tmp_path / "m.yaml"
    man.write_text("- images: x.tif\n  labels: l.geojson\n"
                   "- images: x.tif\n  labels: l.geojson\n" + entry)
    with pytest.raises(InputError, match=f"^{man}: {msg}"):
        read_manifest(man)


@pytest.mark.parametrize("text, msg", [
    # 'images:' left empty said ".../None: no such file or folder"
    ("- images:\n  labels: l.geojson\n", "scene 1 has no images"),
    ("- images: []\n  labels: l.geojson\n", "scene 1 has no images"),
    ("- images: [x.tif, {a: 1}]\n  labels: l.geojson\n", "scene 1: 'images' must be a path"),
    ("- images: x.tif\n  labels:\n", "scene 1 has no labels"),
    ("- images: nothere.tif\n  labels: l.geojson\n", "scene 1: image 'nothere.tif': no such file"),
    ("- images: x.tif\n  labels: nolabels.geojson\n", "scene 1: labels 'nolabels.geojson': no such"),
])
def test_empty_or_missing_manifest_paths_are_named(tmp_path, text, msg):
    (tmp_path / "x.tif").write_bytes(b"")
    (tmp_path / "l.geojson").write_text("{}")
    man = tmp_path / "m.yaml"
    man.write_text(text)
    with pytest.raises(InputError, match=f"^{man}: {msg}"):
        read_manifest(man)


def test_a_manifest_calendar_file_is_taken_from_the_manifests_folder(tmp_path):
    from pipeline.config import CONFIG_DIR
    (tmp_path / "x.tif").write_bytes(b"")
    (tmp_path / "l.geojson").write_text("{}")
    (tmp_path / "cal.yaml").write_text(
        (CONFIG_DIR / "calendars" / "east-china.yaml").read_text(encoding="utf-8"))
    man = tmp_path / "m.yaml"
    man.write_text("- images: x.tif\n  labels: l.geojson\n  calendar: cal.yaml\n"
                   "- images: x.tif\n  labels: l.geojson\n  calendar: east-china\n")
    first, second = read_manifest(man)
    assert first.calendar == str((tmp_path / "cal.yaml").resolve())
    assert second.calendar == "east-china"


def test_manifest_keys_beside_scenes_and_a_labels_folder_are_refused(tmp_path):
    """'calendar:' and 'dem:' beside 'scenes:' were ignored silently (the model used the
    config's calendar and no DEM); a labels folder failed after training (IsADirectoryError
    while hashing the inputs)."""
    (tmp_path / "x.tif").write_bytes(b"")
    (tmp_path / "plots").mkdir()
    man = tmp_path / "m.yaml"
    man.write_text("calendar: afghanistan-east\ndem: dem.tif\nscenes:\n"
                   "  - images: x.tif\n    labels: plots\n")
    with pytest.raises(InputError, match=r"unknown top-level keys \['calendar', 'dem'\]; .*"
                                         "inside each scene"):
        read_manifest(man)
    man.write_text("scenes:\n  - images: x.tif\n    labels: plots\n")
    with pytest.raises(InputError, match="scene 1: labels 'plots' is a folder"):
        read_manifest(man)


def test_a_manifest_saved_as_gbk_is_read(tmp_path):
    """A manifest saved as 'ANSI' on a Chinese Windows (GBK) was a UnicodeDecodeError
    traceback; binary garbage is one line."""
    (tmp_path / "地块").mkdir()
    (tmp_path / "地块" / "x.tif").write_bytes(b"")
    (tmp_path / "l.geojson").write_text("{}")
    man = tmp_path / "m.yaml"
    man.write_bytes("# 春季普查\n- images: 地块/x.tif\n  labels: l.geojson\n".encode("gbk"))
    [scene] = read_manifest(man)
    assert scene.images == (tmp_path / "地块" / "x.tif",)
    man.write_bytes(b"\x00\xff\xfe\x81\x00")
    with pytest.raises(InputError, match="m.yaml: "):
        read_manifest(man)


def test_a_scene_listed_twice_is_refused_before_any_work(tmp_path):
    """The same images twice (another spelling, or a copy of the folder): validated on a
    copy of itself, the threshold went to the 0.99 cap and another scene's detect found 2 of
    43 plots, with no warning."""
    import shutil
    make_tiny_scene(tmp_path / "a", seed=1)
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")
    for other in ("a/S2_*.tif", "a_copy"):
        man = tmp_path / "m.yaml"
        man.write_text(f"- images: a\n  labels: a/labels.geojson\n"
                       f"- images: {other}\n  labels: a/labels.geojson\n")
        same = r"S2_\d{8}\.tif" if other.startswith("a/") else r"\S+/a/S2_\S+ = \S+/a_copy/S2_\S+"
        with pytest.raises(InputError, match=rf"training scenes 1 and 2 hold the same image "
                                             rf"\({same}\); list each scene once"):
            train_manifest(man, tmp_path / "model", load_config())
        assert not (tmp_path / "model").exists()


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """Relative paths are the manifest's folder's: one written relative to where the user
    stands was 'no such file or folder' without saying where it was looked for."""
    (tmp_path / "man").mkdir()
    (tmp_path / "s1").mkdir()
    man = tmp_path / "man" / "m.yaml"
    man.write_text("- images: s1\n  labels: s1/labels.geojson\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"image 's1': no such file or folder in "
                                         rf"{tmp_path / 'man'} \(paths are taken from"):
        read_manifest(Path("man/m.yaml"))


def test_a_manifest_models_calendar_is_its_scenes_and_detect_compares_phases(tmp_path, caplog):
    """Both scenes sampled with 'myseason' gave a model of 'east-china' (the config's), which
    detect then asked for; a renamed copy of the training calendar (the same phases) was
    refused. A calendar of the training name with other phases (shifted to this year's
    spring, as the docs advise) is taken, and the log says so."""
    import logging

    from classifiers import artifact
    from classifiers.predict import check_calendar
    from pipeline.config import CONFIG_DIR, load_calendar
    from pipeline.errors import ModelError
    east = (CONFIG_DIR / "calendars" / "east-china.yaml").read_text(encoding="utf-8")
    mine = east.replace("name: east-china", "name: myseason").replace(
        'post:      {start: "05-21"', 'post:      {start: "05-25"')
    assert mine.count("myseason") == 1 and '"05-25"' in mine
    (tmp_path / "myseason.yaml").write_text(mine, encoding="utf-8")
    a = make_tiny_scene(tmp_path / "a", seed=1)
    b = make_tiny_scene(tmp_path / "b", seed=2, x0=520000.0,
                        plots=[(5, 40, 3), (40, 10, 2), (20, 20, 2)])
    man = _two_scenes(tmp_path, a, b, "b/labels.geojson", "    calendar: myseason.yaml\n")
    man.write_text(man.read_text().replace("    labels: a/labels.geojson\n",
                                           "    labels: a/labels.geojson\n"
                                           "    calendar: myseason.yaml\n"))
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64})
    train_manifest(man, tmp_path / "model", cfg)
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["calendar"] == "myseason" and list(meta["calendars"]) == ["myseason"]
    assert meta["config"]["calendar"] == str(tmp_path / "myseason.yaml")
    art = artifact.load(tmp_path / "model")
    check_calendar(art, load_calendar(tmp_path / "myseason.yaml"))            # taken
    renamed = tmp_path / "renamed.yaml"                    # the same season, another name
    renamed.write_text(mine.replace("name: myseason", "name: our-valley"), encoding="utf-8")
    check_calendar(art, load_calendar(renamed))
    with pytest.raises(ModelError, match="trained with calendar 'myseason', the config uses "
                                         "'east-china'"):
        check_calendar(art, load_calendar("east-china"))
    shifted = tmp_path / "shifted.yaml"                    # myseason's name, other phases
    shifted.write_text(east.replace("name: east-china", "name: myseason"), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="classifiers.predict"):
        check_calendar(art, load_calendar(shifted))
    assert "'myseason' has other phases than at training" in caplog.text
    # training again into the folder says it replaces the model there
    with caplog.at_level(logging.WARNING, logger="pipeline.survey"):
        train_manifest(man, tmp_path / "model", cfg)
    assert "model: replacing the model there" in caplog.text


@pytest.mark.parametrize("false_alarms,warned", [(700, True), (10, False)])
def test_train_warns_when_its_threshold_flags_the_background(caplog, false_alarms, warned):
    """Out of fold 62-100 % of each background class flagged, and train said nothing (detect
    then flagged 79 % of a training scene)."""
    import logging

    from pipeline.survey import _warn_weak
    report = {"polygon": {"poppy_polygons_min_plot": 5, "recall_min_plot": 1.0,
                          "poppy_polygons": 5, "recall": 1.0},
              "min_plot_px": 4,
              "pixel": {"confusion_matrix": [[1000 - false_alarms, false_alarms], [5, 95]]}}
    with caplog.at_level(logging.WARNING, logger="pipeline.survey"):
        _warn_weak(report)
    assert ("threshold flags 70% of the background pixels" in caplog.text) is warned
    assert ("background" in caplog.text) is warned


LATE_DATES = ["2024-05-15", "2024-06-12", "2024-06-28", "2024-07-12", "2024-08-05"]


def _late_calendar(folder: Path, name: str = "late") -> Path:
    """East China's phases two and a half months later (LATE_DATES fall in them)."""
    p = folder / f"{name}.yaml"
    p.write_text(f"name: {name}\nphases:\n  pre: {{start: '05-01', end: '05-31'}}\n"
                 "  flowering: {start: '06-01', end: '07-31'}\n"
                 "  post: {start: '07-21', end: '08-31'}\n", encoding="utf-8")
    return p


def test_a_model_of_two_calendars_carries_both_and_detect_takes_the_one_the_dates_fit(
        tmp_path, monkeypatch, caplog):
    """Scenes of east-china and of a later calendar gave a model recorded as 'east-china'
    (the config's default); detect without --config then surveyed a late scene in
    east-china's phases, or refused it. The model carries both calendars and detect takes
    the one the images' dates fit, from any folder and with the calendar file gone (it was
    stored relative to the folder train ran from)."""
    import logging

    from pipeline import survey
    proj = tmp_path / "proj"
    a = make_tiny_scene(proj / "a", seed=1)
    b = make_tiny_scene(proj / "b", seed=2, x0=520000.0, dates=LATE_DATES,
                        plots=[(5, 40, 3), (40, 10, 2), (20, 20, 2)])
    _late_calendar(proj)
    _two_scenes(proj, a, b, "b/labels.geojson", "    calendar: late.yaml\n")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64, "model.cv_repeats": 1,
                                           "model.missing_phase_models": False})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    train_manifest(Path("../proj/manifest.yaml"), tmp_path / "model", cfg)
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["calendar"] == "east-china, late" and list(meta["calendars"]) == [
        "east-china", "late"]
    assert meta["scene_calendars"] == ["east-china", str((proj / "late.yaml").resolve())]
    (proj / "late.yaml").unlink()                          # the model carries it
    monkeypatch.chdir(tmp_path)
    for name, dates, flowering in (("late", LATE_DATES, ["2024-06-12", "2024-06-28",
                                                         "2024-07-12"]),
                                   ("east", None, ["2024-04-12", "2024-04-28",
                                                   "2024-05-12"])):
        kw = {"dates": dates} if dates else {}
        sc = make_tiny_scene(tmp_path / f"survey-{name}", seed=4, x0=540000.0, **kw)
        run_cfg = with_overrides(survey.default_config(sc.images, tmp_path / "model"),
                                 **{"run.chunk_size": 64})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.survey"):
            res = survey.detect(sc.images, tmp_path / "model", tmp_path / f"out-{name}",
                                run_cfg, formats=("geojson",))
        assert res.report["phase_dates"]["flowering"] == flowering
        want = "late" if name == "late" else "east-china"
        assert res.report["calendar"]["name"] == want
        assert f"the images' dates fit '{want}'" in caplog.text


def test_two_calendars_of_one_name_or_a_missing_elevation_dem_are_refused_before_any_work(
        tmp_path):
    """A scene's calendar shifted 20 days under the default's name replaced the default's
    phases in the model's record; a DEM missing for a calendar that moves with elevation
    was found after the earlier scenes were sampled, naming no scene."""
    from pipeline import survey
    a = make_tiny_scene(tmp_path / "a", seed=1)
    b = make_tiny_scene(tmp_path / "b", seed=2, x0=520000.0,
                        plots=[(5, 40, 3), (40, 10, 2), (20, 20, 2)])
    _late_calendar(tmp_path, "east-china")                 # another season, the same name
    man = _two_scenes(tmp_path, a, b, "b/labels.geojson", "    calendar: east-china.yaml\n")
    read = []
    real = survey.prepare_scene
    survey_prepare = lambda *a, **k: read.append(1) or real(*a, **k)   # noqa: E731
    import unittest.mock
    with unittest.mock.patch.object(survey, "prepare_scene", survey_prepare):
        with pytest.raises(InputError, match="scenes 1 and 2 use two different calendars "
                                             "both named 'east-china'"):
            train_manifest(man, tmp_path / "model", load_config())
        man = _two_scenes(tmp_path, a, b, "b/labels.geojson",
                          "    calendar: afghanistan-east\n")
        with pytest.raises(InputError, match=r"training scene 2 \(.*b/labels.geojson\): "
                                             "calendar 'afghanistan-east' moves its phases "
                                             ".* days per 100 m of elevation: give a DEM "
                                             r"\(dem: in its manifest entry\)"):
            train_manifest(man, tmp_path / "model", load_config())
    assert read == [] and not (tmp_path / "model").exists()


def test_a_scene_and_a_resaved_copy_of_it_are_refused_before_any_work(tmp_path):
    """Only byte-identical copies were refused: the same images re-saved with other
    compression trained a model validated on a copy of its own scene (threshold 0.99)."""
    import rasterio
    a = make_tiny_scene(tmp_path / "a", seed=1)
    (tmp_path / "b").mkdir()
    for src in a.images:
        with rasterio.open(src) as r:
            profile = {**r.profile, "compress": "lzw"}
            with rasterio.open(tmp_path / "b" / src.name, "w", **profile) as dst:
                dst.write(r.read())
                dst.update_tags(**r.tags())
                dst.descriptions = r.descriptions
                dst.scales, dst.offsets = r.scales, r.offsets
    (tmp_path / "b" / "labels.geojson").write_text((tmp_path / "a" / "labels.geojson").read_text())
    from dataclasses import replace
    b = replace(a, images=[tmp_path / "b" / p.name for p in a.images])
    man = _two_scenes(tmp_path, a, b, "b/labels.geojson")
    with pytest.raises(InputError, match="training scenes 1 and 2 are the same ground on the "
                                         "same dates"):
        train_manifest(man, tmp_path / "model", load_config())
    assert not (tmp_path / "model").exists()


def test_a_folder_whose_name_looks_like_a_pattern_is_taken_as_it_is(tmp_path):
    """images: "scene[2]", a folder: 'matches no file', or with a folder scene2 beside it,
    that folder's images silently (as expand_patterns does for --images, a path that exists
    is taken as it is)."""
    for name in ("scene[2]", "scene2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "S2_20240412.tif").write_bytes(b"")
    (tmp_path / "l.geojson").write_text("{}")
    man = tmp_path / "m.yaml"
    man.write_text('- images: "scene[2]"\n  labels: l.geojson\n')
    [first] = read_manifest(man)
    assert first.images == (tmp_path / "scene[2]",)


def _coarser(sc, folder: Path):
    """The scene's images with 20 m pixels (the same arrays over twice the ground)."""
    from dataclasses import replace

    import rasterio
    from affine import Affine
    folder.mkdir(parents=True)
    out = []
    for src in sc.images:
        with rasterio.open(src) as r:
            t = r.transform
            profile = {**r.profile, "transform": Affine(20, 0, t.c, 0, -20, t.f)}
            with rasterio.open(folder / src.name, "w", **profile) as dst:
                dst.write(r.read())
                dst.update_tags(**r.tags())
                dst.descriptions = r.descriptions
                dst.scales, dst.offsets = r.scales, r.offsets
        out.append(folder / src.name)
    (folder / "labels.geojson").write_text(sc.labels.read_text())
    return replace(sc, images=out)


def test_other_pixel_sizes_in_training_and_in_a_survey_are_warned(tmp_path, caplog):
    """A 10 m and a 20 m scene trained together silently, and a 10 m model surveyed 20 m
    images silently: the neighbourhood features are in pixels."""
    import logging

    from pipeline import survey
    a = make_tiny_scene(tmp_path / "a", seed=1)
    b = _coarser(make_tiny_scene(tmp_path / "b0", seed=2, x0=520000.0), tmp_path / "b")
    man = _two_scenes(tmp_path, a, b, "b/labels.geojson")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64, "model.cv_repeats": 1,
                                           "model.missing_phase_models": False})
    with caplog.at_level(logging.WARNING, logger="pipeline.survey"):
        train_manifest(man, tmp_path / "model", cfg)
    assert "the training scenes have pixels of 10, 20 m" in caplog.text
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["pixel_m"] == [10.0, 20.0]
    survey.train(a.images, a.labels, tmp_path / "model10", cfg)
    for sc, warned in ((make_tiny_scene(tmp_path / "s10", seed=4, x0=540000.0), False),
                       (_coarser(make_tiny_scene(tmp_path / "s0", seed=4, x0=540000.0),
                                 tmp_path / "s20"), True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.survey"):
            survey.detect(sc.images, tmp_path / "model10", tmp_path / f"out{warned}", cfg,
                          formats=("geojson",))
        assert ("the images have pixels of 20 m, the model was trained on 10 m"
                in caplog.text) is warned


def _in_degrees(sc, folder: Path, lat: float = 60.0):
    """The scene's images and labels on a grid in degrees at ``lat`` N, the same arrays with
    about 10 m square ground pixels (0.00018 x 0.00009 degrees at 60 N)."""
    from dataclasses import replace

    import numpy as np
    import rasterio
    import shapely
    from affine import Affine
    from pyproj import Transformer

    from pipeline.grid import pixel_metres
    folder.mkdir(parents=True)
    tf = Affine(10 / (111_412 * np.cos(np.radians(lat))), 0, 10.0, 0, -10 / 111_412, lat)
    out = []
    for src in sc.images:
        with rasterio.open(src) as r:
            with rasterio.open(folder / src.name, "w", **{**r.profile, "crs": "EPSG:4326",
                                                          "transform": tf}) as dst:
                dst.write(r.read())
                dst.update_tags(**r.tags())
                dst.descriptions = r.descriptions
                dst.scales, dst.offsets = r.scales, r.offsets
        out.append(folder / src.name)
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)

    def moved(xy):
        col, row = ~sc.transform * tuple(to_utm.transform(xy[:, 0], xy[:, 1]))
        return np.column_stack(tf * (np.asarray(col), np.asarray(row)))
    labels = json.loads(sc.labels.read_text())
    for f in labels["features"]:
        f["geometry"] = shapely.geometry.mapping(
            shapely.transform(shapely.geometry.shape(f["geometry"]), moved))
    (folder / "labels.geojson").write_text(json.dumps(labels))
    assert abs(pixel_metres(tf, rasterio.crs.CRS.from_epsg(4326)) - 10) < 0.2
    return replace(sc, images=out, labels=folder / "labels.geojson", transform=tf)


def test_pixel_sizes_of_a_grid_in_degrees_are_ground_metres(tmp_path, caplog):
    """A model trained on images in degrees recorded its pixel size in degrees ('trained on
    0.0001 m'), and 10 m pixels at 60 N were taken for 20 m (111 km per degree of longitude):
    every survey there was warned to resample its images."""
    import logging

    from pipeline import survey
    a = _in_degrees(make_tiny_scene(tmp_path / "a0", seed=1), tmp_path / "a")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64, "model.cv_repeats": 1,
                                           "model.missing_phase_models": False})
    survey.train(a.images, a.labels, tmp_path / "model", cfg)
    [pixel] = json.loads((tmp_path / "model" / "model.json").read_text())["pixel_m"]
    assert abs(pixel - 10.0) < 0.2
    for trained in ("model", "model10"):
        if trained == "model10":           # a 10 m model of a scene in UTM
            survey.train(make_tiny_scene(tmp_path / "u", seed=2).images,
                         tmp_path / "u" / "labels.geojson", tmp_path / trained, cfg)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.survey"):
            survey.detect(a.images, tmp_path / trained, tmp_path / f"out_{trained}", cfg,
                          formats=("geojson",))
        assert "the images have pixels of" not in caplog.text


def test_scenes_of_two_sensors_are_refused_before_any_scene_is_read(tmp_path):
    """A Sentinel-2 scene and a drone flight in one manifest were refused only after every
    scene was sampled."""
    import unittest.mock

    import numpy as np
    import rasterio
    from affine import Affine

    from pipeline import survey
    a = make_tiny_scene(tmp_path / "a", seed=1)
    (tmp_path / "b").mkdir()
    flight = tmp_path / "b" / "flight_20240502.tif"
    with rasterio.open(flight, "w", driver="GTiff", width=40, height=40, count=5,
                       dtype="float32", crs="EPSG:32650",
                       transform=Affine(0.05, 0, 500000.0, 0, -0.05, 3300000.0)) as dst:
        dst.write(np.random.default_rng(0).uniform(0.02, 0.6, (5, 40, 40)).astype("float32"))
        dst.descriptions = ("blue", "green", "red", "rededge2", "nir")
    (tmp_path / "b" / "labels.geojson").write_text(a.labels.read_text())
    man = tmp_path / "m.yaml"
    man.write_text("- images: a\n  labels: a/labels.geojson\n"
                   "- images: b/flight_20240502.tif\n  labels: b/labels.geojson\n")
    with unittest.mock.patch.object(survey, "prepare_scene",
                                    side_effect=AssertionError("a scene was read")):
        with pytest.raises(InputError, match="training scenes 1 and 2 come from different "
                                             "sensors \\('sentinel2', 'p4m'\\)"):
            train_manifest(man, tmp_path / "model", load_config())


def test_the_same_scene_on_another_grid_origin_trains_the_same_model(tmp_path):
    """The cross-validation blocks started at the CRS's origin: the same pixels and labels
    moved 250 m east gave other folds, so another threshold (0.82 or 0.87, 54 or 15 targets
    on an outside audit's survey). They start at the scene's corner."""
    import numpy as np

    from pipeline import survey
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64, "model.cv_repeats": 1,
                                           "model.missing_phase_models": False,
                                           "model.cv_block_m": 200.0})
    import shapely
    from pyproj import Transformer
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
    reports = []
    for dx in (0.0, 250.0, 430.0):
        sc = make_tiny_scene(tmp_path / f"s{dx:.0f}", seed=3, x0=500_000.0 + dx)
        # the first scene's labels in its CRS, moved with the pixels (exact: whole pixels)
        first = json.loads((tmp_path / "s0" / "labels.geojson").read_text())
        for f in first["features"]:
            g = shapely.transform(shapely.geometry.shape(f["geometry"]),
                                  lambda xy: np.column_stack(to_utm.transform(*xy.T)))
            g = shapely.box(*np.round(g.bounds, -1))          # on the 10 m pixel edges
            f["geometry"] = shapely.geometry.mapping(shapely.affinity.translate(g, dx))
        first["crs"] = {"type": "name", "properties": {"name": "EPSG:32650"}}
        labels = sc.folder / "labels_utm.geojson"
        labels.write_text(json.dumps(first))
        survey.train(sc.images, labels, tmp_path / f"m{dx:.0f}", cfg)
        reports.append(json.loads((tmp_path / f"m{dx:.0f}" / "train_report.json").read_text()))
    assert reports[0]["samples"]["poppy_pixels"] > 0
    for r in reports[1:]:
        assert r["samples"] == reports[0]["samples"]
        assert r["threshold"] == reports[0]["threshold"]
        assert r["calibration"] == reports[0]["calibration"]     # out-of-fold scores
        assert r["polygon"] == reports[0]["polygon"] and r["pixel"] == reports[0]["pixel"]


def test_a_detect_config_without_sensor_changes_the_models_own_settings(tmp_path, capsys):
    """A --config of a few lines given to detect was filled in from the shipped Sentinel-2
    config, not from the model's: a model trained with other features (a drone model, or
    other neighbourhood radii) was refused, 'the model's features do not fit the inputs'."""
    import run as cli
    sc = make_tiny_scene(tmp_path / "a", seed=1)
    own = tmp_path / "train.yaml"
    own.write_text("features:\n  spatial_radii_px: [1]\nrun:\n  chunk_size: 64\n"
                   "model:\n  cv_repeats: 1\n  missing_phase_models: false\n")
    images = [str(p) for p in sc.images]
    assert cli.main(["-q", "train", "--images", *images, "--labels", str(sc.labels),
                     "--model", str(tmp_path / "m"), "--config", str(own)]) == 0
    mmu = tmp_path / "mmu.yaml"
    mmu.write_text("patches:\n  min_mapping_unit_m2: 300\n")
    s = make_tiny_scene(tmp_path / "s", seed=4, x0=540000.0)
    assert cli.main(["-q", "detect", "--images", *map(str, s.images), "--model",
                     str(tmp_path / "m"), "--out", str(tmp_path / "out"), "--config",
                     str(mmu), "--formats", "geojson"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["patches"]["min_mapping_unit_m2"] == 300
    assert report["config"]["features"]["spatial_radii_px"] == [1]
