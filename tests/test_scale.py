"""Scale: the same targets whichever scheduler runs the tiles, and resume after a crash.

A small scene is cut into many tiles (chunk_size 64) so that tile borders cross plots and
the scheduler really has several tiles in flight.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scenes import make_tiny_scene

from pipeline.config import load_config, with_overrides
from pipeline.errors import PoppyscanError
from pipeline.scheduler import open_runner, parse_spec, run_tiles

ROOT = Path(__file__).resolve().parents[1]
# plots on tile borders (64 px tiles): across a vertical, a horizontal and a corner border;
# small ones inside tiles, two of them 7 px apart on either side of a border, touching neither
PLOTS = [(10, 61, 5), (62, 100, 4), (126, 126, 5), (40, 30, 3), (150, 20, 3), (100, 57, 3),
         (100, 67, 3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pipeline.survey import train
    d = tmp_path_factory.mktemp("scale")
    cfg = with_overrides(load_config(), **{"run.chunk_size": 64})
    tr = make_tiny_scene(d / "train", seed=3)
    train(tr.images, tr.labels, d / "model", cfg)
    scene = make_tiny_scene(d / "scene", seed=4, size=192, plots=PLOTS)
    ref = d / "ref"
    from pipeline.survey import detect
    res = detect(scene.images, d / "model", ref, cfg, formats=["geojson"])
    assert res.report["tiles"] == 9 and res.report["tiles_resumed"] == 0
    assert res.n_targets >= 3     # the plots are found, across tile borders too
    return d, cfg, scene, ref


def _prob(out: Path) -> np.ndarray:
    with rasterio.open(out / "probability.tif") as src:
        return src.read(1)


def assert_same_outputs(a: Path, b: Path) -> None:
    assert (a / "targets.geojson").read_bytes() == (b / "targets.geojson").read_bytes()
    pa, pb = _prob(a), _prob(b)
    assert pa.shape == pb.shape
    assert np.array_equal(pa, pb, equal_nan=True)
    with rasterio.open(a / "evidence.tif") as x, rasterio.open(b / "evidence.tif") as y:
        assert np.array_equal(x.read(1), y.read(1))


def test_distributed_local_cluster_gives_identical_outputs(setup, tmp_path):
    from pipeline.survey import detect
    d, cfg, scene, ref = setup
    cfg2 = with_overrides(cfg, **{"run.scheduler": "local:2", "run.memory_per_worker": "1GB"})
    res = detect(scene.images, d / "model", tmp_path / "dist", cfg2, formats=["geojson"])
    assert res.report["scheduler"] == "local:2"
    assert_same_outputs(ref, tmp_path / "dist")


def test_processes_give_identical_outputs(setup, tmp_path):
    from pipeline.survey import detect
    d, cfg, scene, ref = setup
    cfg2 = with_overrides(cfg, **{"run.scheduler": "processes"})
    detect(scene.images, d / "model", tmp_path / "proc", cfg2, formats=["geojson"])
    assert_same_outputs(ref, tmp_path / "proc")


def test_processes_with_a_dem_and_an_aoi_give_identical_outputs(setup, tmp_path):
    """The DEM's slope and the AOI mask enter the tile graph, which worker processes get by
    pickle: no closure may sit in it (a lambda in the slope and a nested AOI block broke
    --scheduler processes whenever --dem or --aoi was given)."""
    from pyproj import Transformer

    from pipeline.survey import detect
    d, cfg, scene, _ = setup
    with rasterio.open(scene.images[0]) as src:
        prof, tf, crs, (h, w) = src.profile, src.transform, src.crs, src.shape
    dem = tmp_path / "dem.tif"
    prof.update(count=1, dtype="float32", nodata=None)
    with rasterio.open(dem, "w", **prof) as dst:     # a slope rising to the north-east
        dst.write((np.add.outer(np.arange(h)[::-1], np.arange(w)) * 2.0)
                  .astype("float32")[None])
    x0, y1 = tf * (8, 8)
    x1, y0 = tf * (w - 30, h - 20)
    to_wgs = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = [list(to_wgs.transform(x, y)) for x, y in
            ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {},
         "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    outs = {}
    for sched in ("threads", "processes"):
        outs[sched] = tmp_path / sched
        detect(scene.images, d / "model", outs[sched],
               with_overrides(cfg, **{"run.scheduler": sched}), dem=dem, aoi=aoi,
               formats=["geojson"])
    assert_same_outputs(outs["threads"], outs["processes"])
    fc = json.loads((outs["processes"] / "targets.geojson").read_text())
    assert fc["features"] and all(f["properties"]["slope_deg"] is not None
                                  for f in fc["features"])


def test_resume_after_a_crash_redoes_only_missing_tiles(setup, tmp_path, monkeypatch):
    from pipeline import survey
    d, cfg, scene, ref = setup
    out = tmp_path / "out"
    real = survey.process_tile
    calls: list[int] = []

    def crashing(ctx, ys, xs):
        if (ys.start, xs.start) == (128, 128):        # the last tile
            raise RuntimeError("simulated crash")
        return real(ctx, ys, xs)

    monkeypatch.setattr(survey, "process_tile", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        survey.detect(scene.images, d / "model", out, cfg, formats=["geojson"])
    [tdir] = (out / survey.STATE_DIR / "tiles").iterdir()     # this run's fingerprint
    saved = sorted(p.stem for p in done_tiles(tdir))
    assert 0 < len(saved) < 9 and "000128_000128" not in saved
    assert not (out / "targets.geojson").exists()       # nothing delivered by a crashed run
    mtimes = {k: (tdir / f"{k}.npz").stat().st_mtime_ns for k in saved}

    def counting(ctx, ys, xs):
        calls.append(1)
        return real(ctx, ys, xs)

    monkeypatch.setattr(survey, "process_tile", counting)
    res = survey.detect(scene.images, d / "model", out, cfg, formats=["geojson"])
    assert len(calls) == 9 - len(saved)
    assert res.report["tiles_resumed"] == len(saved)
    assert {k: (tdir / f"{k}.npz").stat().st_mtime_ns for k in saved} == mtimes
    assert_same_outputs(ref, out)


def test_other_settings_start_afresh(setup, tmp_path):
    import shutil

    from pipeline.survey import detect
    d, cfg, scene, ref = setup
    out = tmp_path / "out"
    shutil.copytree(ref, out)                      # a finished run with the default settings
    cfg2 = with_overrides(cfg, **{"patches.min_mapping_unit_m2": 300.0})
    res = detect(scene.images, d / "model", out, cfg2, formats=["geojson"])
    assert res.report["tiles_resumed"] == 0      # other settings: the saved tiles are not used
    # and those of the run it replaced are gone once it has delivered
    assert len(list((out / ".poppyscan" / "tiles").iterdir())) == 1
    res = detect(scene.images, d / "model", out, cfg2, formats=["geojson"])
    assert res.report["tiles_resumed"] == 9


def done_tiles(tdir):
    """Tiles whose completion marker exists: ``<key>.json``, not the ``.<key>.json`` being
    written (pathlib's glob matches dot-files: counting those made this test flaky), nor
    the run's own run.json."""
    return [p for p in tdir.glob("*.json") if not p.name.startswith(".")
            and p.name != "run.json"]


def test_killed_cli_run_resumes_to_identical_outputs(setup, tmp_path):
    """A real crash: SIGKILL the CLI once some tiles are saved, rerun the same command."""
    d, cfg, scene, ref = setup
    conf = tmp_path / "conf.yaml"
    default = (ROOT / "configs" / "survey-sentinel2.yaml").read_text()
    assert "chunk_size: 512" in default
    conf.write_text(default.replace("chunk_size: 512", "chunk_size: 64"))
    out = tmp_path / "out"
    argv = [sys.executable, str(ROOT / "run.py"), "-q", "detect", "--images",
            *map(str, scene.images), "--model", str(d / "model"), "--out", str(out),
            "--config", str(conf), "--formats", "geojson"]
    tiles = out / ".poppyscan" / "tiles"        # one folder: this run's fingerprint
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(len(done_tiles(t)) for t in tiles.glob("*")) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL
    [tdir] = tiles.iterdir()
    saved = len(done_tiles(tdir))
    assert 2 <= saved < 9
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["tiles_resumed"] == saved
    assert_same_outputs(ref, out)


def test_scheduler_specs():
    assert parse_spec("threads") == ("threads", None)
    assert parse_spec("local:3") == ("local", 3)
    assert parse_spec("tcp://127.0.0.1:8786") == ("address", "tcp://127.0.0.1:8786")
    with pytest.raises(PoppyscanError, match="not one of"):
        parse_spec("gpu")
    with pytest.raises(PoppyscanError, match="plain tcp only"):     # more in test_scheduler.py
        parse_spec("tls://127.0.0.1:8786")


@pytest.fixture
def http_port():
    """An HTTP server on 127.0.0.1, as dask's dashboard (8787) is one."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        block_on_close = False

    srv = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("where", ["before the run state", "at the tiles"])
def test_detect_given_an_http_server_as_scheduler_stops_with_one_line(
        setup, tmp_path, capsys, monkeypatch, http_port, where):
    """It waited for ever in dask's handshake and left OUT/.poppyscan. Now: exit 2, one line,
    within the connect timeout, no output folder; also when only the runner finds it (after
    the run state was written: run.py removes the folder it created)."""
    import threading

    import run as cli
    from pipeline import scheduler, survey
    d, _, scene, _ = setup
    monkeypatch.setattr(scheduler, "CONNECT_TIMEOUT_S", 2.0, raising=False)
    if where == "at the tiles":
        monkeypatch.setattr(survey, "check_runner", lambda spec: None, raising=False)
    address = f"tcp://127.0.0.1:{http_port}"
    out = tmp_path / "out"
    box = {}
    t = threading.Thread(target=lambda: box.update(rc=cli.main(
        ["-q", "detect", "--images", *map(str, scene.images), "--model", str(d / "model"),
         "--out", str(out), "--formats", "geojson", "--scheduler", address])), daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(60)
    assert not t.is_alive(), "detect still waits for the 'scheduler' after 60 s"
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err.splitlines()
    assert box.get("rc") == 2 and len(err) == 1, err
    assert err[0].startswith(f"poppyscan: error: no dask scheduler answered at {address} "
                             "within 2 s"), err
    assert not out.exists()


def test_run_tiles_hands_each_tile_over_as_it_finishes():
    import dask
    got = []
    with open_runner("threads") as runner:
        tasks = [(k, dask.delayed(lambda v: v * 2)(k)) for k in range(7)]
        run_tiles(runner, tasks, lambda k, v: got.append((k, v)), in_flight=3)
    assert sorted(got) == [(k, 2 * k) for k in range(7)]


def test_progress_reports_every_stage_to_its_total(setup, tmp_path):
    from pipeline.survey import detect
    d, cfg, scene, _ = setup
    seen: dict[str, list[int]] = {}

    def factory(stage: str, total: int):
        seen[stage] = [0, total]

        def tick(n: int) -> None:
            seen[stage][0] += n
        return tick
    detect(scene.images, d / "model", tmp_path / "out", cfg, formats=["geojson"],
           progress=factory)
    assert list(seen) == ["tiles", "assemble", "write"]
    assert seen["tiles"][1] == 9                      # 192 px in 64 px tiles
    assert all(done == total for done, total in seen.values()), seen


# 25 m: the 3 px plots are still settled inside their tiles; 100 m: the two at (100, 57) and
# (100, 67) count together across a tile border neither touches; 400 m: the one at (40, 30)
# joins the plot across the tile border at (10, 61), 37 px away, and passes the unit with it
@pytest.mark.parametrize("group_m", [0.0, 25.0, 100.0, 400.0])
def test_one_tile_and_nine_tiles_give_the_same_targets_and_counts(setup, tmp_path, group_m):
    """Tiles settle the patches that cannot reach another tile (below the peak rule or the
    minimum mapping unit, with the patches within patches.group_distance_m of them) themselves;
    the targets and every count match the run where the whole scene is one tile."""
    from pipeline.survey import detect
    d, cfg, scene, _ = setup
    runs = {}
    for cs in (64, 256):
        c = with_overrides(cfg, **{"run.chunk_size": cs, "patches.min_mapping_unit_m2": 1000,
                                   "patches.group_distance_m": group_m})
        runs[cs] = detect(scene.images, d / "model", tmp_path / str(cs), c,
                          formats=["geojson"])
    assert runs[64].report["tiles"] == 9 and runs[256].report["tiles"] == 1
    assert runs[64].report["counts"] == runs[256].report["counts"]
    assert runs[64].report["counts"]["below_mmu"] > 0      # the rule was exercised
    assert runs[64].n_targets > 0
    assert (tmp_path / "64" / "targets.geojson").read_bytes() == \
        (tmp_path / "256" / "targets.geojson").read_bytes()
    if group_m >= 100:    # grouping kept patches that alone were below the unit
        alone = detect(scene.images, d / "model", tmp_path / "alone",
                       with_overrides(cfg, **{"run.chunk_size": 64,
                                              "patches.min_mapping_unit_m2": 1000}),
                       formats=["geojson"])
        assert runs[64].report["counts"]["below_mmu"] < alone.report["counts"]["below_mmu"]


def test_a_cloud_cut_by_the_read_halo_is_masked_as_in_the_whole_scene(setup, tmp_path,
                                                                      monkeypatch):
    """The masks judge a flagged patch over the whole feature window of a tile (the tile plus
    the spatial halo), so their halo lies beyond it: a 52 px SCL "cloud" starting just outside
    a 64 px tile's feature window is masked in that window as in the whole scene (a read halo
    of max(mask, spatial) instead of their sum saw 47 px of it and rescued it as a flower
    field, so the tile's neighbourhood features differed from the whole scene's)."""
    import shutil

    from pipeline import survey
    d, cfg, scene, _ = setup
    folder = Path(shutil.copytree(scene.images[0].parent, tmp_path / "scene"))
    images = sorted(folder.glob("S2_*.tif"))
    with rasterio.open(images[2], "r+") as ds:                 # a flowering date
        data = ds.read()
        data[12, 67:119, 10] = 8                               # SCL cloud, rows 67-118: 52 px
        data[1:9, 67:119, 10] = 6000                           # bright in the visible and NIR,
        data[2, 67:119, 10] = 2000                             # magenta (not snow: NDSI low),
        data[[0, 9, 10, 11], 67:119, 10] = 1000                # dark in coastal and SWIR: a
        ds.write(data)                                         # flower field, were it small
        x10, y67 = ds.transform * (10.5, 67.5)
    seen = []
    real = survey.masks

    def keep(scene_, cfg_, **kw):
        out = real(scene_, cfg_, **kw)
        if kw.get("window") is not None and y67 in out["y"] and x10 in out["x"]:
            seen.append(out.sel(y=y67, x=x10, band="red").isel(time=2).compute())
        return out

    monkeypatch.setattr(survey, "masks", keep)
    survey.detect(images, d / "model", tmp_path / "out",
                  with_overrides(cfg, **{"run.chunk_size": 64}), formats=["geojson"])
    assert len(seen) >= 2                  # the tile holding row 67 and the one above it
    assert all(np.isnan(v.item()) for v in seen)


def test_targets_closer_than_the_merge_distance_are_one_target(setup, tmp_path):
    """patches.merge_distance_m reaches detect across tile borders: the default run's targets
    are all more than 10 m apart; a distance wider than the scene joins every candidate into
    one target with the same pixels (area), and the report counts the joined ones."""
    import shapely

    from classifiers.labels import read_polygons
    from pipeline.survey import detect
    d, cfg, scene, ref = setup
    assert cfg.patches.merge_distance_m == 10.0
    with rasterio.open(ref / "probability.tif") as src:
        crs = src.crs
    sep, _ = read_polygons(ref / "targets.geojson", crs, what="targets")
    assert len(sep) >= 3
    a, b = shapely.STRtree(sep).query(sep, predicate="dwithin", distance=10.0)
    assert (a == b).all()
    one = detect(scene.images, d / "model", tmp_path / "one",
                 with_overrides(cfg, **{"patches.merge_distance_m": 5000.0}),
                 formats=["geojson"])
    assert one.n_targets == 1
    assert one.report["counts"]["merged_nearby"] == len(sep) - 1 + json.loads(
        (ref / "report.json").read_text())["counts"]["merged_nearby"]
    [g], _ = read_polygons(tmp_path / "one" / "targets.geojson", crs, what="targets")
    assert g.area == pytest.approx(sum(p.area for p in sep), rel=1e-6)


def test_report_gives_the_share_of_the_area_flagged_and_warns_when_it_is_large(
        setup, tmp_path, caplog):
    """counts.candidate_share: pixels at the threshold among those with a probability, summed
    over tiles; a share above a tenth gets a warning that the model does not transfer."""
    import logging

    from pipeline.survey import CANDIDATE_SHARE_WARN, detect
    d, cfg, scene, ref = setup
    rep = json.loads((ref / "report.json").read_text())
    prob = _prob(ref)
    seen = np.isfinite(prob)
    want = (prob[seen] >= rep["model"]["pixel_threshold"]).mean()
    assert rep["tiles"] == 9
    assert 0 < rep["counts"]["candidate_share"] == pytest.approx(want, abs=1e-4)
    assert want < CANDIDATE_SHARE_WARN
    # pixels down to the lowest probability of the scene join patches: most of the area
    # (a fixed 1e-6 flagged 0.3 % once a model's calibration put the background at 2e-13)
    floor = float(np.nanmin(prob[seen]))
    assert floor > 0
    with caplog.at_level(logging.WARNING, logger="poppyscan"):
        low = detect(scene.images, d / "model", tmp_path / "low",
                     with_overrides(cfg, **{"patches.pixel_threshold": floor}),
                     formats=["geojson"])
    assert low.report["counts"]["candidate_share"] > CANDIDATE_SHARE_WARN
    assert any("does not transfer" in r.getMessage() for r in caplog.records)


def test_a_rerun_resumes_whatever_the_paths_or_the_memory_setting(setup, tmp_path,
                                                                  monkeypatch):
    """Finished tiles were thrown away ('other inputs or settings: starting afresh') when the
    DEM was given by another path to the same file, the config was an identical copy
    elsewhere, or only run.memory_per_worker changed (the fix after a worker ran out)."""
    import shutil

    import run as cli
    d, cfg, scene, ref = setup
    dem = tmp_path / "dem.tif"
    with rasterio.open(scene.images[0]) as src:
        prof = dict(src.profile, count=1, dtype="float32", nodata=None)
        with rasterio.open(dem, "w", **prof) as dst:
            dst.write(np.full((1, src.height, src.width), 800, "float32"))
    default = (ROOT / "configs" / "survey-sentinel2.yaml").read_text()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    conf_a, conf_b = tmp_path / "a" / "conf.yaml", tmp_path / "b" / "conf.yaml"
    conf_a.write_text(default.replace("chunk_size: 512", "chunk_size: 64"))
    conf_b.write_text(default.replace("chunk_size: 512", "chunk_size: 64")
                      .replace("memory_per_worker: 3GB", "memory_per_worker: 5GB"))
    assert conf_a.read_text() != conf_b.read_text()
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)

    def detect(dem_arg: str, conf: Path) -> dict:
        assert cli.main(["-q", "detect", "--images", *map(str, scene.images), "--model",
                         str(d / "model"), "--out", str(out), "--config", str(conf),
                         "--dem", dem_arg, "--formats", "geojson"]) == 0
        return json.loads((out / "report.json").read_text())

    assert detect("dem.tif", conf_a)["tiles_resumed"] == 0
    assert detect(str(dem), conf_b)["tiles_resumed"] == 9      # absolute path, 5GB, elsewhere
    shutil.copy(conf_a, tmp_path / "conf.yaml")
    assert detect("./dem.tif", tmp_path / "conf.yaml")["tiles_resumed"] == 9
    # the calendar counts by content: edited in place, nothing of the old phases is resumed
    cal = tmp_path / "cal.yaml"
    cal.write_text((ROOT / "configs" / "calendars" / "east-china.yaml").read_text())
    conf_c = tmp_path / "c.yaml"
    conf_c.write_text(conf_a.read_text().replace("calendar: east-china", f"calendar: {cal}"))
    detect("dem.tif", conf_c)
    assert detect("dem.tif", conf_c)["tiles_resumed"] == 9
    cal.write_text(cal.read_text().replace('flowering: {start: "04-01"',
                                           'flowering: {start: "04-05"'))
    assert detect("dem.tif", conf_c)["tiles_resumed"] == 0


def test_images_given_by_relative_paths_are_read_from_anywhere(setup, tmp_path, monkeypatch):
    """A cluster's workers do not start in the folder the command ran in: relative image
    paths failed there as 'the file is damaged or incomplete; download it again'."""
    from pipeline.ingest import open_scene
    _, _, scene, _ = setup
    monkeypatch.chdir(scene.folder)
    s = open_scene([Path(p.name) for p in scene.images], chunks=64)
    monkeypatch.chdir(tmp_path)                    # where a worker runs
    assert np.isfinite(s.isel(time=0, band=0).values).any()


def test_sigterm_stops_process_workers_too(setup, tmp_path):
    """SIGTERM (a job's time limit) killed the main process only: the pool's workers lived
    on (about 330 MB each) and held the run's stdout open."""
    psutil = pytest.importorskip("psutil")
    d, cfg, scene, ref = setup
    conf = tmp_path / "conf.yaml"
    default = (ROOT / "configs" / "survey-sentinel2.yaml").read_text()
    conf.write_text(default.replace("chunk_size: 512", "chunk_size: 64"))
    out = tmp_path / "out"
    argv = [sys.executable, str(ROOT / "run.py"), "-q", "detect", "--images",
            *map(str, scene.images), "--model", str(d / "model"), "--out", str(out),
            "--config", str(conf), "--formats", "geojson", "--scheduler", "processes"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    children: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        children = [c for c in parent.children(recursive=True)
                    if "resource_tracker" not in " ".join(c.cmdline())]
        if len(children) >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before its workers started")
    everyone = parent.children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    _, alive = psutil.wait_procs(everyone, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
