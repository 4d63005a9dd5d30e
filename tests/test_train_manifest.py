"""train --manifest: several scenes, each with its own labels (and calendar), one model."""
from __future__ import annotations

import json

import pytest
from scenes import make_tiny_scene

from pipeline.config import load_config, with_overrides
from pipeline.errors import InputError
from pipeline.survey import read_manifest, train_manifest


def test_manifest_trains_on_every_scene(tmp_path):
    a = make_tiny_scene(tmp_path / "a", seed=1)
    b = make_tiny_scene(tmp_path / "b", seed=2, x0=520000.0,
                        plots=[(5, 40, 3), (40, 10, 2), (20, 20, 2)])
    man = tmp_path / "manifest.yaml"
    man.write_text(
        "scenes:\n"
        f"  - images: [{', '.join(p.relative_to(tmp_path).as_posix() for p in a.images)}]\n"
        "    labels: a/labels.geojson\n"
        f"  - images: [{', '.join(p.relative_to(tmp_path).as_posix() for p in b.images)}]\n"
        "    labels: b/labels.geojson\n"
        "    calendar: east-china\n")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64})
    report = train_manifest(man, tmp_path / "model", cfg)
    assert report["samples"]["scenes"] == 2
    # two scenes with plots: the threshold comes from folds that hold out whole scenes
    assert report["folds"].startswith("StratifiedGroupKFold grouped by scenes")
    assert report["samples"]["classes"]["poppy"] == 6
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert len(meta["phase_dates"]) == 2
    assert any("b/labels.geojson" in k for k in meta["data_hashes"])


@pytest.mark.parametrize("text, msg", [
    ("[]", "list of scenes"),
    ("- images: [x.tif]\n", "needs 'images' and 'labels'"),
    ("- images: [x.tif]\n  labels: l.geojson\n  colour: red\n", "unknown keys"),
    ("- images: nothere/S2_*.tif\n  labels: l.geojson\n", "'nothere/S2_\\*.tif' matches no file"),
    # a key left empty is no file named 'None'
    ("- images:\n  labels: l.geojson\n", "scene 1 has no images;"),
    ("- images: []\n  labels: l.geojson\n", "scene 1 has no images;"),
    ("- images: [x.tif]\n  labels:\n", "scene 1 has no labels;"),
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
