"""The CLI contract: --help of every command, exit codes, one-line user errors, nothing
written on a user error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scenes import make_tiny_scene

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["simulate", "inspect", "fetch", "train", "detect", "assign", "verify", "recheck",
            "history", "summary", "demo"]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    import run as cli
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and command in out


@pytest.mark.parametrize("argv", [
    ["assign", "--targets", "t.geojson", "--units", "u.geojson", "--out", "o"],
    ["verify", "--targets", "t.geojson", "--field", "f.csv", "--out", "o"],
    ["recheck", "--flags", "f.geojson", "--images", "x.tif", "--model", "m", "--out", "o"],
    ["history", "--targets", "a.geojson", "b.geojson", "--out", "o"],
    ["summary", "--verified", "v", "--units", "u.geojson", "--out", "o"],
    ["assign"],                              # said which reserved options were missing
    ["-q", "verify", "garbage", "--out", "o"],
])
def test_campaign_commands_are_reserved(argv, tmp_path, capsys, monkeypatch):
    import run as cli
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "not implemented yet" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_repeated_log_line_is_printed_once(capsys):
    """A notice logged per tile or per training copy (a skipped index, a scaling note) shows
    once: the CLI's handler drops exact repeats."""
    import logging

    import run as cli
    cli._setup_logging(verbose=False, quiet=False)
    log = logging.getLogger("pipeline.test")
    for _ in range(3):
        log.info("skipping 2 index(es) the scene's bands cannot give")
    log.info("another line")
    assert capsys.readouterr().err == ""       # held for the first seconds of a command
    cli._show_held_log()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["poppyscan: skipping 2 index(es) the scene's bands cannot give",
                   "poppyscan: another line"]


def test_held_log_lines_come_out_on_time_before_the_result_and_live_with_v(capsys,
                                                                            monkeypatch):
    """Lines are held for the first seconds (a timer shows them even if nothing else is
    logged), shown before a command's result, and not held at all with -v."""
    import logging
    import time

    import run as cli
    log = logging.getLogger("pipeline.test")
    monkeypatch.setattr(cli._Held, "HOLD_S", 0.2)
    cli._setup_logging(verbose=False, quiet=False)
    log.warning("a note while checking")
    assert capsys.readouterr().err == ""
    time.sleep(0.6)
    assert capsys.readouterr().err == "poppyscan: a note while checking\n"
    log.warning("a live note")
    assert capsys.readouterr().err == "poppyscan: a live note\n"
    monkeypatch.setattr(cli._Held, "HOLD_S", 30.0)
    cli._setup_logging(verbose=False, quiet=False)
    log.warning("said before the result")
    cli._say("the result")
    out = capsys.readouterr()
    assert out.err == "poppyscan: said before the result\n" and out.out == "the result\n"
    cli._setup_logging(verbose=True, quiet=False)
    log.debug("a debug line")
    assert capsys.readouterr().err == "poppyscan: a debug line\n"


@pytest.mark.parametrize("argv,hint", [
    (["detect", "--images", "x.tif", "--model", "m", "--out", "o"],
     "interrupted; rerun the same command to resume\n"),
    # train and inspect start again: "to resume" promised what they do not do
    (["inspect", "--images", "x.tif"], "interrupted; rerun the same command\n"),
    (["train", "--images", "x.tif", "--labels", "l.geojson", "--model", "m"],
     "interrupted; rerun the same command\n"),
])
def test_ctrl_c_exits_130_with_the_rerun_hint(monkeypatch, capsys, argv, hint):
    import run as cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.endswith(hint)


def test_no_command_is_one_line_on_stderr(capsys):
    """It printed the whole help on stdout and nothing on stderr."""
    import run as cli
    assert cli.main([]) == 2 and cli.main(["-q"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "poppyscan: error: give a command (simulate, inspect, fetch, train, detect, demo); "
        "see `python run.py --help`"] * 2


def test_unknown_option_is_one_line_exit_2(capsys):
    import run as cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["detect", "--images", "x.tif", "--model", "m", "--out", "o", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--bogus" in err


def test_bad_format_is_rejected(capsys):
    import run as cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["detect", "--images", "x.tif", "--model", "m", "--out", "o",
                  "--formats", "shp"])
    assert exc.value.code == 2 and "allowed" in capsys.readouterr().err


def test_empty_format_list_says_no_format_was_given(capsys):
    import run as cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["detect", "--images", "x.tif", "--model", "m", "--out", "o", "--formats", ","])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no format given" in err and "unknown" not in err


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    # the contract: one line on stderr (log lines held until the inputs are validated go)
    assert len(lines) == 1 and lines[0].startswith("poppyscan: error"), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    scene = make_tiny_scene(d / "scene", seed=3)
    r = run("-q", "train", "--images", *map(str, scene.images), "--labels", str(scene.labels),
            "--model", str(d / "model"))
    assert r.returncode == 0, r.stderr
    return d, scene


def test_train_writes_the_model_contract(trained):
    d, _ = trained
    for name in ("model.skops", "model.json", "train_report.json"):
        assert (d / "model" / name).is_file()
    meta = json.loads((d / "model" / "model.json").read_text())
    assert meta["sensor"] == "sentinel2" and meta["calendar"] == "east-china"
    assert 0 < meta["threshold"] < 1
    assert "kappa" not in (d / "model" / "train_report.json").read_text().lower()


def test_detect_writes_the_output_contract(trained, tmp_path):
    d, scene = trained
    other = make_tiny_scene(tmp_path / "other", seed=4)
    out = tmp_path / "out"
    r = run("-q", "detect", "--images", *map(str, other.images), "--model", str(d / "model"),
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    for name in ("targets.geojson", "probability.tif", "evidence.tif", "report.json",
                 "quicklook.png"):
        assert (out / name).is_file(), name
    import rasterio
    with rasterio.open(other.images[0]) as img:
        grid = (img.crs, img.transform, img.shape)
    for name in ("probability.tif", "evidence.tif"):   # tiled, compressed, on the scene grid
        with rasterio.open(out / name) as ras:       # (a 64 px grid was written in strips)
            assert ras.profile["tiled"] and ras.block_shapes == [(32, 32)], name
            assert ras.compression is not None and (ras.crs, ras.transform, ras.shape) == grid
    fc = json.loads((out / "targets.geojson").read_text())
    assert "crs" not in fc and fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == 3
    for f in fc["features"]:
        p = f["properties"]
        assert f["id"] == p["target_id"]
        for key in ("rank", "score", "score_max", "area_m2", "lon", "lat"):
            assert key in p
    assert sorted(f["properties"]["rank"] for f in fc["features"]) == [1, 2, 3]
    rep = json.loads((out / "report.json").read_text())
    for stage in ("read", "mask", "features", "predict", "patches", "write"):
        assert stage in rep["timings_s"]
    assert all(v.startswith("sha256:") for v in rep["inputs"].values())
    share = rep["counts"]["candidate_share"]
    assert 0 < share < 0.1
    assert rep["unsurveyed"] == {"images_outside_grid_share": 0.0}
    assert f"3 target(s); the model flags {100 * share:.1f}% of the area seen" in r.stdout


def _halves(images: list[Path], folder: Path) -> list[Path]:
    """Each date cut into two overlapping tiles (columns 0-39 and 24-63), as adjacent
    Sentinel-2 tiles are, with the contract's metadata."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir()
    out = []
    for p in images:
        with rasterio.open(p) as src:
            for name, col in (("west", 0), ("east", 24)):
                win = Window(col, 0, 40, src.height)
                q = folder / f"{name}_{p.name}"
                prof = dict(src.profile, width=40, transform=src.window_transform(win))
                with rasterio.open(q, "w", **prof) as dst:
                    dst.write(src.read(window=win))
                    dst.update_tags(**src.tags())
                    dst.descriptions, dst.scales, dst.offsets = (src.descriptions,
                                                                 src.scales, src.offsets)
                out.append(q)
    return out


def test_adjacent_tiles_given_together_are_surveyed_as_one(trained, tmp_path):
    """The scene as two overlapping tiles per date gives the targets of the whole scene: the
    survey grid spans both tiles (it was the first tile's; the second's ground was cut
    away)."""
    d, _ = trained
    other = make_tiny_scene(tmp_path / "other", seed=4)
    tiles = _halves(other.images, tmp_path / "tiles")
    ids = []
    for name, images in (("whole", other.images), ("tiles", tiles)):
        r = run("-q", "detect", "--images", *map(str, images), "--model", str(d / "model"),
                "--out", str(tmp_path / f"out_{name}"))
        assert r.returncode == 0, r.stderr
        fc = json.loads((tmp_path / f"out_{name}" / "targets.geojson").read_text())
        ids.append(sorted(f["id"] for f in fc["features"]))
    assert len(ids[0]) == 3 and ids[1] == ids[0]


def test_a_targets_dates_are_the_acquisitions_its_features_used(trained, tmp_path):
    """An image dated outside the calendar (August) is left out of the features ('not
    used'), but was listed in every target's `dates` as if it had been."""
    import shutil

    import rasterio
    d, scene = trained
    august = tmp_path / "S2_20240815.tif"
    shutil.copy(scene.images[-1], august)
    with rasterio.open(august, "r+") as dst:
        dst.update_tags(ACQUISITION_DATE="2024-08-15")
    out = tmp_path / "out"
    r = run("-q", "detect", "--images", *map(str, scene.images), str(august), "--model",
            str(d / "model"), "--out", str(out), "--formats", "geojson")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert "2024-08-15" in rep["dates"]
    used = sorted({x for ds in rep["phase_dates"].values() for x in ds})
    feats = json.loads((out / "targets.geojson").read_text())["features"]
    assert feats and all(f["properties"]["dates"] == used for f in feats)
    assert "2024-08-15" not in used


def test_detect_with_missing_model_writes_nothing(trained, tmp_path):
    _, scene = trained
    out = tmp_path / "out"
    line = _one_line_error(run("detect", "--images", *map(str, scene.images), "--model",
                               str(tmp_path / "nomodel"), "--out", str(out)))
    assert "model" in line
    assert not out.exists()


def test_corrupt_raster_is_a_user_error(trained, tmp_path):
    d, _ = trained
    bad = tmp_path / "S2_20240420.tif"
    bad.write_bytes(b"II*\x00not really a tiff")
    out = tmp_path / "out"
    line = _one_line_error(run("detect", "--images", str(bad), "--model", str(d / "model"),
                               "--out", str(out)))
    assert "S2_20240420.tif" in line
    assert not out.exists()


def test_model_or_demo_folder_that_is_a_file_is_refused_before_any_work(trained, tmp_path,
                                                                       monkeypatch):
    import run as cli
    from pipeline import survey
    _, scene = trained
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    line = _one_line_error(run("train", "--images", *map(str, scene.images), "--labels",
                               str(scene.labels), "--model", str(taken)))
    assert "taken: exists and is not a folder" in line
    line = _one_line_error(run("demo", "--out", str(taken)))
    assert "taken: exists and is not a folder" in line
    # in-process: refused before the scene is even read
    monkeypatch.setattr(survey, "prepare_scene", lambda *a, **k: pytest.fail("read"))
    assert cli.main(["train", "--images", *map(str, scene.images), "--labels",
                     str(scene.labels), "--model", str(taken)]) == 2
    assert taken.read_text() == "a file, not a folder"


def test_an_out_or_model_that_cannot_be_created_is_refused_before_any_work(trained, tmp_path,
                                                                          monkeypatch):
    """A file on the way to --out or --model was a traceback at the first write (after the
    work, for train); an empty --out (an unset variable) wrote into the current folder."""
    import run as cli
    from outputs.atomic import check_can_create
    from pipeline import survey
    d, scene = trained
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    monkeypatch.setattr(survey, "prepare_scene", lambda *a, **k: pytest.fail("read"))
    images = ["--images", *map(str, scene.images)]
    assert cli.main(["train", *images, "--labels", str(scene.labels),
                     "--model", str(blocker / "model")]) == 2
    assert cli.main(["detect", *images, "--model", str(d / "model"),
                     "--out", str(blocker / "survey")]) == 2
    line = _one_line_error(run("detect", *images, "--model", str(d / "model"), "--out",
                               str(blocker / "survey")))
    assert "blocker is a file, not a folder; choose another --out" in line
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(run("detect", *images, "--model", str(d / "model"), "--out", ""))
    assert "argument --out: an empty path" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    check_can_create(tmp_path / "new" / "deeper", "--out")   # possible: no trace left
    assert not (tmp_path / "new").exists()


def test_train_arguments_that_do_not_fit_together_are_refused_before_reading(tmp_path,
                                                                            capsys):
    import run as cli
    man = tmp_path / "m.yaml"
    man.write_text("- images: nothere.tif\n  labels: l.geojson\n")
    for argv, what in ((["--manifest", str(man), "--dem", "d.tif"], "--dem goes with --images"),
                       (["--manifest", str(man), "--labels", "l.geojson"],
                        "--labels goes with --images"),
                       (["--images", "nothere.tif"], "--images needs --labels")):
        assert cli.main(["train", *argv, "--model", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0], err     # nothing was read before it
    assert not (tmp_path / "m").exists()


def test_a_user_error_while_running_leaves_no_folder_it_created(trained, tmp_path,
                                                                monkeypatch, capsys):
    """A damaged file met while the tiles run (after the inputs were checked and the run
    state written): the --out folder the run created is removed; one the user made stays."""
    import run as cli
    from pipeline import survey
    from pipeline.errors import InputError
    d, scene = trained

    def damaged(*args, **kwargs):
        raise InputError("S2_20240420.tif: the raster data cannot be read")
    monkeypatch.setattr(survey, "run_tiles", damaged)
    argv = ["detect", "--images", *map(str, scene.images), "--model", str(d / "model")]
    assert cli.main([*argv, "--out", str(tmp_path / "new")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    # every folder of the path it made: --out nest/season/2024 left nest/season
    assert cli.main([*argv, "--out", str(tmp_path / "nest" / "season" / "2024")]) == 2
    assert not (tmp_path / "nest").exists()
    (tmp_path / "mine").mkdir()
    assert cli.main([*argv, "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir()
    assert cli.main([*argv, "--out", str(tmp_path / "s"), "--scheduler", "bogus"]) == 2
    assert "not one of threads" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_fault_of_poppyscan_leaves_no_folder_it_created(trained, tmp_path, monkeypatch):
    """An internal error (a bug: its traceback is for the report) left the --out folder it
    had made, holding a hidden run state only: an empty-looking, half-made folder."""
    import run as cli
    from pipeline import survey
    d, scene = trained

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(survey, "run_tiles", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["detect", "--images", *map(str, scene.images), "--model", str(d / "model"),
                  "--out", str(tmp_path / "nest" / "out")])
    assert not (tmp_path / "nest").exists()


def test_training_without_a_bloom_image_is_refused(trained, tmp_path):
    """A calendar whose flowering phase holds none of the scene's dates (another region's,
    or the wrong year's images) is one line, not an error deep in the fit."""
    _, scene = trained
    cfg = tmp_path / "late.yaml"
    cfg.write_text(f"calendar: {ROOT / 'configs' / 'calendars' / 'myanmar-laos.yaml'}\n")
    line = _one_line_error(run("train", "--images", *map(str, scene.images), "--labels",
                               str(scene.labels), "--model", str(tmp_path / "m"),
                               "--config", str(cfg)))
    assert "no image of its scene falls in the flowering phase" in line
    assert not (tmp_path / "m").exists()


def test_labels_without_poppy_are_refused(trained, tmp_path):
    _, scene = trained
    labels = json.loads(scene.labels.read_text())
    labels["features"] = [f for f in labels["features"] if f["properties"]["class"] != "poppy"]
    p = tmp_path / "labels.geojson"
    p.write_text(json.dumps(labels))
    line = _one_line_error(run("train", "--images", *map(str, scene.images), "--labels",
                               str(p), "--model", str(tmp_path / "m")))
    assert "poppy" in line
    assert not (tmp_path / "m").exists()


def test_wrong_config_key_names_file_and_key(trained, tmp_path):
    _, scene = trained
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  kind: xgboost\n")
    line = _one_line_error(run("train", "--images", *map(str, scene.images), "--labels",
                               str(scene.labels), "--model", str(tmp_path / "m"),
                               "--config", str(cfg)))
    assert "bad.yaml" in line and "model.kind" in line and "hgb" in line


def test_aoi_outside_the_scene_is_a_user_error(trained, tmp_path):
    d, scene = trained
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[
            [10, 10], [10.1, 10], [10.1, 10.1], [10, 10.1], [10, 10]]]}}]}))
    out = tmp_path / "out"
    line = _one_line_error(run("detect", "--images", *map(str, scene.images), "--model",
                               str(d / "model"), "--out", str(out), "--aoi", str(aoi)))
    assert "AOI" in line
    assert not out.exists()


def test_a_date_without_a_band_the_model_uses_is_named(trained, tmp_path):
    """One date lacks the red band: the scene keeps only the shared bands, so the model's
    features cannot be computed; the error names the image and the band, not 200 features."""
    import rasterio
    from scenes import S2_NAMES

    from pipeline.geotiff import write_multiband
    d, scene = trained
    src = scene.images[1]
    with rasterio.open(src) as r:
        data, tf, crs = r.read(), r.transform, r.crs
        date = r.tags()["ACQUISITION_DATE"]
    keep = [i for i, n in enumerate(S2_NAMES) if n != "B04"]
    lacking = tmp_path / src.name
    write_multiband(lacking, data[keep], [S2_NAMES[i] for i in keep], tf, crs.to_string(),
                    acquisition_date=date, scales=[1e-4] * 11 + [1], offsets=[0] * 12)
    images = [str(lacking) if p == src else str(p) for p in scene.images]
    out = tmp_path / "out"
    line = _one_line_error(run("detect", "--images", *images, "--model", str(d / "model"),
                               "--out", str(out)))
    assert src.name in line and "'red'" in line
    assert not out.exists()


def test_a_survey_without_flowering_images_is_refused(trained, tmp_path):
    """No image in the flowering phase: poppy is found in bloom, so detect refuses and says
    what to do (no model is trained without the flowering phase)."""
    d, scene = trained
    images = [str(p) for p in scene.images if not any(p.stem.endswith(x)
                                                     for x in ("0412", "0428", "0512"))]
    assert 0 < len(images) < len(scene.images)
    out = tmp_path / "out"
    line = _one_line_error(run("detect", "--images", *images, "--model", str(d / "model"),
                               "--out", str(out)))
    assert "uses the flowering phase" in line and "calendar whose flowering phase" in line
    assert not out.exists()


def test_a_survey_before_the_post_phase_uses_the_model_without_it(trained, tmp_path):
    """A survey before June has no image in the post phase: every pixel is scored by the
    missing-phase model trained without post features, and the run says so."""
    d, scene = trained
    images = [str(p) for p in scene.images if not p.stem.endswith("0605")]
    r = run("detect", "--images", *images, "--model", str(d / "model"), "--out",
            str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "no image in the post phase: every pixel is scored by the model's missing-phase" \
        in r.stderr
    assert (tmp_path / "out" / "targets.geojson").is_file()


def _damage_pixels(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose header is intact but whose red band's compressed pixel data is
    junk: it opens, and fails only when that band is read (inside a dask compute)."""
    import numpy as np
    import rasterio
    with rasterio.open(src) as r:
        off = int(r.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=4))
        size = int(r.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=4))
    data = bytearray(src.read_bytes())
    data[off:off + size] = np.random.default_rng(0).bytes(size)
    dst.write_bytes(bytes(data))
    return dst


def _damaged_images(scene, tmp_path: Path) -> tuple[list[str], Path]:
    src = scene.images[1]
    bad = _damage_pixels(src, tmp_path / src.name)
    return [str(bad) if p == src else str(p) for p in scene.images], bad


def test_damaged_pixel_data_is_a_user_error_in_detect(trained, tmp_path):
    d, scene = trained
    images, bad = _damaged_images(scene, tmp_path)
    out = tmp_path / "out"
    line = _one_line_error(run("detect", "--images", *images, "--model", str(d / "model"),
                               "--out", str(out)))
    assert str(bad) in line and "damaged or incomplete" in line
    assert not out.exists()


def test_a_detect_failing_on_damaged_pixels_leaves_the_earlier_run_resumable(trained,
                                                                             tmp_path):
    """A detect with other inputs into a folder holding a finished run deleted that run's
    tiles at its start, then failed on a damaged image: the earlier run had to be computed
    again. Its tiles are kept until a run with other inputs has delivered."""
    d, scene = trained
    out = tmp_path / "out"
    first = ["detect", "--images", *map(str, scene.images), "--model", str(d / "model"),
             "--out", str(out)]
    assert run(*first).returncode == 0
    before = (out / "targets.geojson").read_bytes()
    images, bad = _damaged_images(scene, tmp_path)
    line = _one_line_error(run("detect", "--images", *images, "--model", str(d / "model"),
                               "--out", str(out)))
    assert str(bad) in line
    assert (out / "targets.geojson").read_bytes() == before
    assert run(*first).returncode == 0
    report = json.loads((out / "report.json").read_text())
    assert report["tiles_resumed"] == report["tiles"] > 0
    assert (out / "targets.geojson").read_bytes() == before
    # the failed run's tiles go once a run has delivered
    assert len(list((out / ".poppyscan" / "tiles").iterdir())) == 1


@pytest.mark.parametrize("scheduler", ["processes", "local:2"])
def test_damaged_pixel_data_is_a_user_error_in_detect_on_processes(trained, tmp_path,
                                                                   scheduler):
    """GDAL's exceptions do not unpickle: the error must cross back from a worker process as
    the InputError, not break the pool; a dask worker does not print its own traceback of
    it first."""
    d, scene = trained
    images, bad = _damaged_images(scene, tmp_path)
    out = tmp_path / "out"
    r = run("detect", "--images", *images, "--model", str(d / "model"), "--out", str(out),
            "--scheduler", scheduler)
    line = _one_line_error(r)
    assert str(bad) in line and "damaged or incomplete" in line
    assert "Compute Failed" not in r.stderr and "raise err" not in r.stderr
    assert not out.exists()


def test_damaged_pixel_data_is_a_user_error_in_inspect_and_train(trained, tmp_path):
    _, scene = trained
    images, bad = _damaged_images(scene, tmp_path)
    line = _one_line_error(run("inspect", "--images", *images))
    assert str(bad) in line and "damaged or incomplete" in line
    line = _one_line_error(run("train", "--images", *images, "--labels", str(scene.labels),
                               "--model", str(tmp_path / "m")))
    assert str(bad) in line and "damaged or incomplete" in line
    assert not (tmp_path / "m").exists()


def test_an_existing_out_folder_is_kept_on_a_user_error(trained, tmp_path):
    """Only a folder the failing run created is removed: the user's own folder stays."""
    d, scene = trained
    images, _ = _damaged_images(scene, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line_error(run("detect", "--images", *images, "--model", str(d / "model"),
                        "--out", str(out)))
    assert (out / "notes.txt").read_text() == "mine"
    # nothing added either: the run state it started there goes with the failed run
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_input_files_that_are_not_there_are_one_line(trained, tmp_path):
    """A typo in train's --dem was a traceback (FileNotFoundError, after the images were
    hashed); a link to nothing, or a loop of links, given as an input or as --out, too."""
    d, scene = trained
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    (tmp_path / "dangling.tif").symlink_to(tmp_path / "gone.tif")
    train = ["train", "--images", *map(str, scene.images), "--labels", str(scene.labels),
             "--model", str(tmp_path / "m")]
    line = _one_line_error(run(*train, "--dem", str(tmp_path / "no_dem.tif")))
    assert "--dem" in line and "no_dem.tif: no such file" in line
    line = _one_line_error(run(*train, "--dem", str(tmp_path / "dangling.tif")))
    assert "a link to a missing file" in line
    assert not (tmp_path / "m").exists()
    detect = ["detect", "--images", *map(str, scene.images), "--model", str(d / "model")]
    line = _one_line_error(run(*detect, "--out", str(tmp_path / "o"), "--aoi",
                               str(tmp_path / "loop_a")))
    assert "--aoi" in line and "no such file" in line
    line = _one_line_error(run(*detect, "--out", str(tmp_path / "loop_a")))
    assert "loop of links" in line
    assert not (tmp_path / "o").exists()


def test_out_may_not_be_the_images_folder(trained, tmp_path):
    """probability.tif and evidence.tif written among the dates would be read as images when
    the run is repeated (as the README says to, to resume): refused before anything."""
    import shutil
    d, scene = trained
    folder = Path(shutil.copytree(scene.images[0].parent, tmp_path / "flight"))
    before = sorted(p.name for p in folder.iterdir())
    for images in ([str(folder)], [str(p) for p in sorted(folder.glob("S2_*.tif"))]):
        line = _one_line_error(run("detect", "--images", *images, "--model",
                                   str(d / "model"), "--out", str(folder)))
        assert "holds the images read; give detect another --out" in line
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_band_no_image_has_is_named(trained, tmp_path):
    """Every date lacks the red band: nothing is dropped (no date has it), and the refusal
    still names the band instead of listing the features it cannot compute."""
    import rasterio
    from scenes import S2_NAMES

    from pipeline.geotiff import write_multiband
    d, scene = trained
    keep = [i for i, n in enumerate(S2_NAMES) if n != "B04"]
    images = []
    for src in scene.images:
        with rasterio.open(src) as r:
            data, tf, crs = r.read(), r.transform, r.crs
            date = r.tags()["ACQUISITION_DATE"]
        images.append(str(write_multiband(
            tmp_path / src.name, data[keep], [S2_NAMES[i] for i in keep], tf, crs.to_string(),
            acquisition_date=date, scales=[1e-4] * 11 + [1], offsets=[0] * 12)))
    out = tmp_path / "out"
    line = _one_line_error(run("detect", "--images", *images, "--model", str(d / "model"),
                               "--out", str(out)))
    assert "no image has band 'red' (B04)" in line
    assert not out.exists()


def test_stdout_closed_early_exits_quietly(trained):
    """`run.py inspect ... | head -1`: the reader goes away before the JSON is printed."""
    _, scene = trained
    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "inspect", "--images",
                          *map(str, scene.images)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=300) == 141
    assert err == ""


def test_a_pattern_the_shell_left_alone_is_expanded(trained):
    """`--images 'scene/S2_*.tif'` (quoted, or a shell that does not expand patterns) reads
    the files it matches; a pattern that matches nothing is one line naming it."""
    _, scene = trained
    folder = scene.images[0].parent
    listed = run("inspect", "--images", *map(str, scene.images))
    pattern = run("inspect", "--images", str(folder / "*.tif"))
    assert listed.returncode == 0 and pattern.returncode == 0, pattern.stderr
    assert json.loads(pattern.stdout)["dates"] == json.loads(listed.stdout)["dates"]
    assert len(json.loads(pattern.stdout)["dates"]) == len(scene.images) > 1
    line = _one_line_error(run("inspect", "--images", str(folder / "nothing_*.tif")))
    assert "nothing_*.tif" in line and "matches no file" in line
    # `scene/*` brings the labels and the truth along: left out, with a warning (it was
    # "labels.geojson: unsupported input"); given alone, a vector file is still refused
    every = run("-v", "inspect", "--images", str(folder / "*"))
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout)["dates"] == json.loads(listed.stdout)["dates"]
    assert "labels.geojson: left out of the images (a .geojson file" in every.stderr
    line = _one_line_error(run("inspect", "--images", str(folder / "labels.geojson")))
    assert "labels.geojson: unsupported input" in line


def test_outputs_may_not_go_into_the_model_nor_a_model_among_the_images(trained, tmp_path):
    """detect --out was accepted as the model's folder (or a folder inside it), train --model
    as the images' folder: outputs mixed into the user's inputs. A folder given where a file
    is expected said 'not found'."""
    import shutil
    d, scene = trained
    model = tmp_path / "model"
    shutil.copytree(d / "model", model)
    before = sorted(p.name for p in model.iterdir())
    detect = ["detect", "--images", *map(str, scene.images), "--model", str(model)]
    for out in (model, model / "out"):
        assert "the model's folder or inside it" in _one_line_error(run(*detect, "--out",
                                                                        str(out)))
    assert sorted(p.name for p in model.iterdir()) == before
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in scene.images:
        shutil.copy(f, imgs / f.name)
    line = _one_line_error(run("train", "--images", str(imgs), "--labels", str(scene.labels),
                               "--model", str(imgs)))
    assert "holds the images read; give train another --model" in line
    assert sorted(p.name for p in imgs.iterdir()) == sorted(f.name for f in scene.images)
    line = _one_line_error(run("train", "--images", str(imgs), "--labels", str(scene.labels),
                               "--model", str(tmp_path / "m"), "--config", str(tmp_path)))
    assert line.endswith(f"--config {tmp_path}: is a folder; give the file itself")


def test_progress_bars_are_drawn_on_stderr(monkeypatch, capsys):
    """Bars were enabled by stderr being a terminal but drawn on stdout (rich's default): a
    result redirected to a file got an empty line per bar, and the terminal saw no bar."""
    import run as cli

    class Tty:
        def __init__(self, real):
            self.real = real

        def isatty(self):
            return True

        def __getattr__(self, name):
            return getattr(self.real, name)
    monkeypatch.setattr(sys, "stderr", Tty(sys.stderr))
    factory = cli._progress(quiet=False)
    tick = factory("features", 3)
    for _ in range(3):
        tick(1)
    out, err = capsys.readouterr()
    assert out == "" and "features" in err


def test_a_full_disk_while_writing_keeps_the_finished_tiles(trained, tmp_path, monkeypatch,
                                                            capsys):
    """Every tile done, then the disk filled up writing the deliverables: the new --out was
    removed whole, tiles included, and the rerun after freeing space recomputed everything."""
    import errno
    import os

    import run as cli
    from pipeline import survey
    d, scene = trained
    out = tmp_path / "out"
    real = survey.writers.write_targets

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "x"))
    monkeypatch.setattr(survey.writers, "write_targets", full)
    argv = ["detect", "--images", *map(str, scene.images), "--model", str(d / "model"),
            "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and "finished tiles are kept" in err[0]
    assert [p.name for p in out.iterdir()] == [".poppyscan"]
    assert not (out / ".poppyscan" / "staging").exists()
    assert list((out / ".poppyscan" / "tiles").glob("*/*.json"))
    monkeypatch.setattr(survey.writers, "write_targets", real)
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["tiles_resumed"] == report["tiles"]


def test_a_detect_refused_for_a_busy_out_leaves_the_other_runs_state(trained, tmp_path,
                                                                    monkeypatch, capsys):
    """Two detects started at once into an existing folder: the one refused must not remove
    the run state the other made (it looked like state of its own making)."""
    import fcntl

    import run as cli
    from pipeline import survey
    d, scene = trained
    out = tmp_path / "out"
    out.mkdir()
    real = survey.lock_folder
    other = []

    def raced(state, o, command):   # the other run makes and locks the state first
        state.mkdir(parents=True, exist_ok=True)
        f = open(state / "lock", "a")  # noqa: SIM115
        fcntl.flock(f, fcntl.LOCK_EX)
        other.append(f)
        return real(state, o, command)
    monkeypatch.setattr(survey, "lock_folder", raced)
    try:
        assert cli.main(["detect", "--images", *map(str, scene.images), "--model",
                         str(d / "model"), "--out", str(out)]) == 2
    finally:
        for f in other:
            f.close()
    assert "another detect is writing into it now" in capsys.readouterr().err
    assert (out / ".poppyscan" / "lock").exists()


def test_a_survey_across_the_180th_meridian_is_refused_in_one_line():
    """Images in UTM 1S around Fiji's 180 degrees: the map's warp failed with a traceback and
    the targets were drawn around the globe."""
    import numpy as np
    import rioxarray  # noqa: F401 - the .rio accessor
    import xarray as xr
    from affine import Affine
    from pyproj import Transformer

    from pipeline.errors import InputError
    from pipeline.survey import _check_not_across_180
    to_utm = Transformer.from_crs(4326, 32701, always_xy=True)

    def scene_at(lon: float) -> xr.DataArray:
        x, y = to_utm.transform(lon, -16.5)
        da = xr.DataArray(np.zeros((64, 64), "float32"), dims=("y", "x"))
        return da.rio.write_crs("EPSG:32701").rio.write_transform(
            Affine(10, 0, x - 320, 0, -10, y + 320))
    with pytest.raises(InputError, match="the images cross the 180th meridian; split them"):
        _check_not_across_180(scene_at(180.0))
    _check_not_across_180(scene_at(-179.9))        # wholly east of it: surveyed
    _check_not_across_180(scene_at(179.9))         # wholly west of it
