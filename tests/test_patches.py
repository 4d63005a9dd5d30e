"""Patches and targets (issue 8): one target per plot at any chunk size, stable ids, minimum
mapping unit, blind areas over cloud gaps. Unit tests of the stitching plus detect runs on a
tiny scene."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pyproj import Transformer
from scenes import make_tiny_scene
from scipy import ndimage
from shapely.geometry import box, shape

from outputs.patches import CandidateFeatures, chunk_pieces, merge_blind, merge_pieces
from pipeline.config import load_config, with_overrides
from pipeline.errors import InputError
from pipeline.survey import detect, train

TF = Affine(10, 0, 500000.0, 0, -10, 3340000.0)          # tests/scenes.py's grid
TO_UTM = Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
#: a small feature set so training and the 16 px tiles stay fast
CFG = with_overrides(load_config(), **{"features.indices": ("NDVI", "NDYI", "GNDVI"),
                                       "model.max_iter": 40, "model.cv_folds": 2})
SIZE = 48
#: (row, col, side): across four 16 px tiles, across four 32 px (and 16 px) tiles, inside one
PLOTS = [(14, 14, 4), (30, 30, 4), (4, 36, 3)]


# --- stitching, unit level ---------------------------------------------------------------------
def _pieces_by_chunks(prob: np.ndarray, ev: np.ndarray, cs: int):
    pieces, blind = [], []
    H, W = prob.shape
    for y0 in range(0, H, cs):
        for x0 in range(0, W, cs):
            sl = (slice(y0, y0 + cs), slice(x0, x0 + cs))
            p, b = chunk_pieces(prob[sl], ev[sl], None, None, None, y0, x0, TF, 0.5)
            pieces += p
            blind += b
    return merge_pieces(pieces), merge_blind(blind)


def _key(patches):
    return sorted((round(p.geometry.area, 6), p.n, round(p.score, 9), p.score_max,
                   p.flowering_obs, tuple(np.round(p.geometry.bounds, 6))) for p in patches)


def test_stitched_patches_are_the_same_at_any_chunk_size() -> None:
    rng = np.random.default_rng(0)
    prob = rng.uniform(0, 0.4, (40, 40)).astype("float32")
    prob[5:15, 5:9] = 0.9                                    # crosses 8 and 16 px borders
    prob[14:17, 7:20] = 0.7                                  # an L joined to it
    prob[30:33, 30:36] = np.linspace(0.6, 0.95, 18).reshape(3, 6)
    prob[20, 20] = 0.99                                      # one pixel
    prob[21, 21] = 0.99                                      # diagonal: a separate patch
    prob[0:2, 38:40] = np.nan                                # no data
    ev = np.full(prob.shape, 2, "float32")
    ev[32, 31:33] = 1
    ev[25:35, 0:6] = 0                                       # a cloud gap: blind
    whole, blind_whole = _pieces_by_chunks(prob, ev, 40)
    assert len(whole) == 4
    big = max(whole, key=lambda p: p.n)
    assert big.n == 10 * 4 + 3 * 13 - 1 * 2 and big.geometry.geom_type == "Polygon"
    assert big.geometry.area == pytest.approx(big.n * 100)   # exact pixel edges
    grad = next(p for p in whole if p.n == 18)
    assert grad.score == pytest.approx(prob[30:33, 30:36].mean(), rel=1e-6)
    assert grad.flowering_obs == 1                           # min evidence over the patch
    for cs in (7, 8, 13, 16, 32):
        got, blind = _pieces_by_chunks(prob, ev, cs)
        assert _key(got) == _key(whole), cs                  # scores to the last digit
        assert len(blind) == 1 and blind[0].area == pytest.approx(10 * 6 * 100)
        assert blind[0].equals(blind_whole[0])


def test_blind_pixels_are_candidates_only_where_they_have_a_probability() -> None:
    """A blind pixel (no clear flowering observation) has a probability only where a model
    trained without the flowering phase scored it (detect leaves the rest NaN); either way
    it stays in the blind areas, and a patch over it has no flowering observation."""
    prob = np.full((10, 10), 0.95, "float32")                # the model says poppy everywhere
    ev = np.ones((10, 10), "float32")
    ev[:, :6] = 0                                            # but saw no flowering there
    prob[:, :3] = np.nan                                     # and scored only cols 3-5 of it
    ev[0, 9] = np.nan                                        # outside the data: not blind
    prob[0, 9] = np.nan
    pieces, blind = chunk_pieces(prob, ev, None, None, None, 0, 0, TF, 0.5)
    [piece] = pieces
    assert piece.n == 7 * 10 - 1 and piece.min_ev == 0
    assert piece.geometry.bounds == (500030.0, 3339900.0, 500100.0, 3340000.0)   # cols 3-9
    [gap] = blind
    assert gap.area == pytest.approx(6 * 10 * 100)
    pieces, _ = chunk_pieces(np.where(ev > 0, prob, np.nan), ev, None, None, None, 0, 0, TF,
                             0.5)
    assert [p.n for p in pieces] == [4 * 10 - 1] and pieces[0].min_ev == 1


def test_slope_is_the_mean_of_the_pixels_that_have_one() -> None:
    """Slope is NaN next to a DEM void where elevation is not: a patch's slope is the mean of
    the pixels with a slope (they counted as 0 degrees), also after a merge across chunks."""
    prob = np.zeros((6, 8), "float32")
    prob[1:5, 1:7] = 0.9                                       # one 4 x 6 patch
    ev = np.full_like(prob, 2.0)
    dem = np.full_like(prob, 100.0)
    slope = np.full_like(prob, 10.0)
    slope[1:5, 1] = np.nan                                     # beside a void: no slope
    whole = merge_pieces(chunk_pieces(prob, ev, dem, slope, None, 0, 0, TF, 0.5)[0])
    assert len(whole) == 1 and whole[0].slope_deg == pytest.approx(10.0)
    assert whole[0].elevation_m == pytest.approx(100.0)
    left = chunk_pieces(prob[:, :4], ev[:, :4], dem[:, :4], slope[:, :4], None, 0, 0, TF, 0.5)
    right = chunk_pieces(prob[:, 4:], ev[:, 4:], dem[:, 4:], slope[:, 4:], None, 0, 4, TF, 0.5)
    split = merge_pieces(left[0] + right[0])
    assert len(split) == 1 and split[0].slope_deg == pytest.approx(10.0)


def test_feature_means_come_from_the_candidate_pixels_of_each_patch() -> None:
    """Tiles keep the features of candidate pixels only (CandidateFeatures); each patch's
    feature sums must be those of its own pixels, as from the dense tile, across chunks."""
    rng = np.random.default_rng(0)
    H = W = 24
    dense = rng.normal(size=(5, H, W)).astype("float32")
    dense[2, 3, 3] = np.nan                                    # a missing feature value
    prob = np.zeros((H, W), "float32")
    prob[2:6, 2:6] = 0.9                                       # inside one 12 px chunk
    prob[10:14, 9:15] = 0.8                                    # across a vertical border
    ev = np.ones((H, W), "float32")
    pieces = []
    for y0 in (0, 12):
        for x0 in (0, 12):
            sl = (slice(y0, y0 + 12), slice(x0, x0 + 12))
            cand = prob[sl] >= 0.5
            index = np.full(cand.shape, -1, "int32")
            index[cand] = np.arange(int(cand.sum()), dtype="int32")
            feats = CandidateFeatures(index, dense[:, sl[0], sl[1]][:, cand].T)
            p, _ = chunk_pieces(prob[sl], ev[sl], None, None, feats, y0, x0, TF, 0.5)
            pieces += p
    patches = sorted(merge_pieces(pieces), key=lambda q: q.n)
    assert [q.n for q in patches] == [16, 24]
    for q, (ys, xs) in zip(patches, [(slice(2, 6), slice(2, 6)), (slice(10, 14), slice(9, 15))]):
        want = np.nanmean(dense[:, ys, xs].reshape(5, -1), axis=1)
        np.testing.assert_allclose(q.feat_mean, want, rtol=1e-5)


# --- detect on a tiny scene --------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    sc = make_tiny_scene(d / "train", seed=3)
    train(sc.images, sc.labels, d / "model", CFG)
    return d / "model"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_scene(tmp_path_factory.mktemp("det"), seed=4, size=SIZE, plots=PLOTS)


def _detect(images, model, out: Path, **changes):
    return detect(images, model, out, with_overrides(CFG, **changes), formats=("geojson",))


def _features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def _utm(geom: dict):
    return shapely.transform(shape(geom), lambda xy: np.column_stack(
        TO_UTM.transform(xy[:, 0], xy[:, 1])))


def _plot_box(r: int, c: int, s: int):
    x0, y0 = TF * (c, r)
    x1, y1 = TF * (c + s, r + s)
    return box(x0, y1, x1, y0)


@pytest.fixture(scope="module")
def runs(model, tiny, tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for cs in (16, 32, 64):
        res = _detect(tiny.images, model, base / f"cs{cs}", **{"run.chunk_size": cs})
        assert res.report["tiles"] == {16: 9, 32: 4, 64: 1}[cs]
        out[cs] = base / f"cs{cs}"
    return out


def test_the_report_names_the_formats_and_files_written(runs) -> None:
    """report.json recorded the config's five formats for a run that wrote GeoJSON alone."""
    report = json.loads((runs[64] / "report.json").read_text())
    assert report["config"]["outputs"]["formats"] == ["geojson"]
    assert report["files"] == sorted(p.name for p in runs[64].iterdir() if p.is_file())
    assert "targets.geojson" in report["files"] and "targets.csv" not in report["files"]
    # the model by content and every path absolute, as the inputs are
    assert set(report["model"]["files"]) >= {"model.skops", "model.json"}
    assert all(v.startswith("sha256:") and len(v) == 71
               for v in report["model"]["files"].values())
    assert Path(report["model"]["dir"]).is_absolute()


def test_a_plot_across_four_chunks_is_one_target_at_any_chunk_size(runs) -> None:
    ref = _features(runs[64] / "targets.geojson")
    assert len(ref) == len(PLOTS)
    for r, c, s in PLOTS:                                    # each plot: one whole target
        plot = _plot_box(r, c, s)
        hits = [f for f in ref if _utm(f["geometry"]).intersects(plot)]
        assert len(hits) == 1
        assert hits[0]["properties"]["area_m2"] == pytest.approx(s * s * 100)
        assert _utm(hits[0]["geometry"]).hausdorff_distance(plot) < 0.01
    for cs in (16, 32):
        got = _features(runs[cs] / "targets.geojson")
        assert [f["id"] for f in got] == [f["id"] for f in ref], cs
        for a, b in zip(got, ref):
            pa, pb = a["properties"], b["properties"]
            for k in ("rank", "area_m2", "score", "score_max", "flowering_obs", "lon", "lat"):
                assert pa[k] == pytest.approx(pb[k], abs=1e-4), (cs, k)
            assert _utm(a["geometry"]).hausdorff_distance(_utm(b["geometry"])) < 0.01


def test_target_ids_are_stable_across_reruns(runs, model, tiny, tmp_path: Path) -> None:
    again = _detect(tiny.images, model, tmp_path / "again", **{"run.chunk_size": 32})
    assert again.report["tiles_resumed"] == 0
    assert (tmp_path / "again" / "targets.geojson").read_bytes() == \
        (runs[32] / "targets.geojson").read_bytes()
    ids = [f["id"] for f in _features(runs[32] / "targets.geojson")]
    assert all(i.startswith("ps-") for i in ids) and len(set(ids)) == len(ids)


def test_minimum_mapping_unit_drops_small_patches(model, tiny, tmp_path: Path) -> None:
    res = _detect(tiny.images, model, tmp_path / "mmu", **{"run.chunk_size": 64,
                                                          "patches.min_mapping_unit_m2": 1000})
    got = _features(tmp_path / "mmu" / "targets.geojson")
    assert sorted(f["properties"]["area_m2"] for f in got) == [1600, 1600]   # 900 m2 dropped
    assert res.report["counts"]["below_mmu"] == 1
    assert res.report["counts"]["patches"] == 3


def _cloud(path: Path, rows: slice) -> None:
    """Mark ``rows`` of one date as high cloud (SCL 9) in its SCL band."""
    with rasterio.open(path, "r+") as dst:
        i = list(dst.descriptions).index("SCL") + 1
        scl = dst.read(i)
        scl[rows] = 9
        dst.write(scl, i)


ONE_FLOWERING = ["2024-03-15", "2024-04-20", "2024-06-05"]


def test_cloud_gap_over_half_the_flowering_phase(model, tmp_path: Path) -> None:
    sc = make_tiny_scene(tmp_path / "scene", seed=5, size=SIZE, dates=ONE_FLOWERING,
                         plots=[(6, 6, 4), (36, 36, 4)])
    _cloud(sc.images[1], slice(0, 24))                       # the top half, on the only date
    res = _detect(sc.images, model, tmp_path / "out", **{"run.chunk_size": 32})
    blind = [_utm(f["geometry"]) for f in _features(tmp_path / "out" / "blind_areas.geojson")]
    gap = box(*(TF * (0, 24)), *(TF * (SIZE, 0)))
    union = shapely.union_all(blind)
    assert union.symmetric_difference(gap).area < 10.0       # m2 (1e-7 deg rounding): the cloud
    c = res.report["counts"]
    assert c["blind_areas"] == len(blind) >= 1
    assert c["blind_area_m2"] == pytest.approx(gap.area, rel=1e-3)
    tg = _features(tmp_path / "out" / "targets.geojson")
    clear_plot = _plot_box(36, 36, 4)
    [found] = [f for f in tg if _utm(f["geometry"]).intersects(clear_plot)]
    assert found["properties"]["flowering_obs"] == 1
    # under the cloud the model trained without the flowering phase judges
    under = [f for f in tg if _utm(f["geometry"]).intersection(gap).area > 1.0]
    # (the plot there, from its March and June images), with no flowering observation, so
    # it ranks below the plot seen in bloom; the blind area is still reported around it
    [hidden] = under
    assert _utm(hidden["geometry"]).intersects(_plot_box(6, 6, 4))
    assert hidden["properties"]["flowering_obs"] == 0
    assert hidden["properties"]["rank"] > found["properties"]["rank"]


def test_ground_clouded_on_every_date_is_blind(model, tmp_path: Path, capsys) -> None:
    """A cloud over the top half on every date leaves those pixels without any phase, so
    without a probability: they were taken for 'outside the data' and left out of the blind
    areas, so a survey that saw nothing there read as one that found nothing (an audit)."""
    sc = make_tiny_scene(tmp_path / "scene", seed=5, size=SIZE, dates=ONE_FLOWERING,
                         plots=[(36, 36, 4)])
    for image in sc.images:
        _cloud(image, slice(0, 24))
    res = _detect(sc.images, model, tmp_path / "out", **{"run.chunk_size": 32})
    blind = [_utm(f["geometry"]) for f in _features(tmp_path / "out" / "blind_areas.geojson")]
    gap = box(*(TF * (0, 24)), *(TF * (SIZE, 0)))
    assert shapely.union_all(blind).symmetric_difference(gap).area < 10.0
    assert res.report["counts"]["blind_area_m2"] == pytest.approx(gap.area, rel=1e-3)
    # every date clouded everywhere: the whole scene is blind, and the CLI says nothing was
    # seen (it said no pixel reached the threshold, with 0 m^2 blind)
    for image in sc.images:
        _cloud(image, slice(0, SIZE))
    res = _detect(sc.images, model, tmp_path / "all", **{"run.chunk_size": 32})
    assert res.report["counts"]["blind_area_m2"] == pytest.approx(SIZE * SIZE * 100, rel=1e-3)
    import run as cli
    cli._print_detect(res)
    out = capsys.readouterr().out
    assert "no targets: nothing was seen" in out


def test_fully_clouded_flowering_phase_reports_blind_areas(model, tmp_path: Path,
                                                           capsys) -> None:
    sc = make_tiny_scene(tmp_path / "scene", seed=6, size=SIZE, dates=ONE_FLOWERING,
                         cloud_date=1, plots=[])                 # no poppy: nothing to find
    res = _detect(sc.images, model, tmp_path / "out", **{"run.chunk_size": 32})
    c = json.loads((tmp_path / "out" / "report.json").read_text())["counts"]
    assert c == res.report["counts"]
    blind = [_utm(f["geometry"]) for f in _features(tmp_path / "out" / "blind_areas.geojson")]
    whole = box(*(TF * (0, SIZE)), *(TF * (SIZE, 0)))
    assert shapely.union_all(blind).symmetric_difference(whole).area < 10.0
    assert c["blind_area_m2"] == pytest.approx(SIZE * SIZE * 100, rel=1e-3)
    assert res.n_targets == c["targets"] == 0
    targets = _features(tmp_path / "out" / "targets.geojson")
    assert targets == []
    # the CLI tells the user that an empty list over a cloud gap is not "no poppy"
    import run as cli
    cli._print_detect(res)
    out = capsys.readouterr().out
    assert "no targets" in out and "Blind areas" in out and "not 'no poppy'" in out


def test_the_matching_rule(runs, tiny, tmp_path: Path) -> None:
    import shapely.affinity
    from shapely.geometry import mapping

    from outputs.evaluate import match_files
    m = match_files(runs[64] / "targets.geojson", tiny.truth, pixel_m=10.0)
    assert (m.plots, m.found, m.targets, m.correct) == (3, 3, 3, 3)
    assert m.recall == m.precision == m.f1 == 1.0
    to_wgs = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)

    def wgs(g):
        return mapping(shapely.transform(g, lambda xy: np.column_stack(
            to_wgs.transform(xy[:, 0], xy[:, 1]))))
    r, c, s = PLOTS[1]
    near = _plot_box(r, c, s)
    near = shapely.affinity.translate(near, xoff=s * 10 + 5)        # 5 m east of the plot
    far = shapely.affinity.translate(_plot_box(0, 0, 2), xoff=2000)   # 2 km away
    feats = [_plot_box(*PLOTS[0]), near, far]
    path = tmp_path / "t.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": wgs(g)} for g in feats]}))
    m = match_files(path, tiny.truth, pixel_m=10.0)
    assert (m.plots, m.found, m.targets, m.correct) == (3, 1, 3, 2)
    # plots below min_plot_m2 need not be found: the 3 x 3 px plot (900 m2) leaves the count
    m = match_files(path, tiny.truth, pixel_m=10.0, min_plot_m2=1000)
    assert (m.plots, m.found, m.targets, m.correct) == (2, 1, 3, 2)


# --- property: stitching never depends on the chunking -----------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells=arrays(np.uint8, st.tuples(st.integers(4, 20), st.integers(4, 20)),
                    elements=st.integers(0, 5)),
       cs=st.integers(2, 12))
def test_property_stitching_is_chunk_independent(cells: np.ndarray, cs: int) -> None:
    # 0-1: below threshold, 2-4: candidate with distinct scores, 5: blind (no flowering obs,
    # no probability: a model without a missing-flowering model, as detect leaves it)
    prob = np.where(cells >= 2, 0.5 + cells / 10, 0.2).astype("float32")
    prob[cells == 5] = np.nan
    ev = np.where(cells == 5, 0, 1 + cells % 2).astype("float32")
    whole, blind_whole = _pieces_by_chunks(prob, ev, max(prob.shape))
    got, blind = _pieces_by_chunks(prob, ev, cs)
    assert _key(got) == _key(whole)
    _, n = ndimage.label((cells >= 2) & (cells < 5))           # 4-connected components
    assert len(whole) == n
    assert sum(p.n for p in got) == int(((cells >= 2) & (cells < 5)).sum())
    a = shapely.union_all(blind) if blind else shapely.Polygon()
    b = shapely.union_all(blind_whole) if blind_whole else shapely.Polygon()
    assert a.symmetric_difference(b).area < 1e-6
    assert a.area == pytest.approx(100 * int((cells == 5).sum()))


def test_patch_cut_by_tiles_on_a_centimetre_grid_stays_one_patch():
    """5 cm drone pixels at an arbitrary origin: vertices shared by two tiles must agree to
    the bit, or the union leaves the patch split in two targets."""
    from affine import Affine
    tf = Affine(0.05, 0.0, 452317.137, 0.0, -0.05, 3341029.071)
    prob = np.zeros((40, 40), "float32")
    prob[5:33, 3:37] = 0.9
    ev = np.ones_like(prob)
    for step in (7, 13, 16):
        pieces = []
        for y0 in range(0, 40, step):
            for x0 in range(0, 40, step):
                sl = np.s_[y0:y0 + step, x0:x0 + step]
                p, _ = chunk_pieces(prob[sl], ev[sl], None, None, None, y0, x0, tf, 0.5)
                pieces += p
        patches = merge_pieces(pieces)
        assert len(patches) == 1, step
        assert patches[0].geometry.geom_type == "Polygon"
        assert abs(patches[0].geometry.area - 28 * 34 * 0.05 ** 2) < 1e-6


def test_tracing_never_hands_rasterio_an_identity_transform(monkeypatch):
    """rasterio warns "not georeferenced" for an identity transform, through a warnings
    filter that is not thread-safe: the warning reached `detect` users from the tile at row 0,
    column 0. The tracer must give it a non-identity transform there too, and still land the
    patch on the right world coordinates."""
    from outputs import patches as mod
    real = mod.rfeatures.shapes
    seen = []

    def spy(*args, **kw):
        seen.append(kw["transform"])
        return real(*args, **kw)

    monkeypatch.setattr(mod.rfeatures, "shapes", spy)
    tf = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 3300000.0)
    prob = np.zeros((8, 8), "float32")
    prob[2:5, 3:5] = 0.9
    pieces, _ = chunk_pieces(prob, np.ones_like(prob), None, None, None, 0, 0, tf, 0.5)
    assert seen and not any(t.is_identity for t in seen)
    assert len(pieces) == 1
    assert pieces[0].geometry.bounds == (500030.0, 3299950.0, 500050.0, 3299980.0)


def _to_geographic(src_path: Path, dst_path: Path) -> None:
    """``src_path`` warped to EPSG:4326 (nearest neighbour), band names, tags and scales kept."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject
    with rasterio.open(src_path) as src:
        tf, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                               *src.bounds)
        prof = src.profile | {"crs": "EPSG:4326", "transform": tf, "width": w, "height": h}
        with rasterio.open(dst_path, "w", **prof) as dst:
            for i in range(1, src.count + 1):
                reproject(rasterio.band(src, i), rasterio.band(dst, i),
                          resampling=Resampling.nearest)
                dst.set_band_description(i, src.descriptions[i - 1])
            dst.scales, dst.offsets = src.scales, src.offsets
            dst.update_tags(**src.tags())


def test_blind_area_is_in_square_metres_on_a_geographic_grid(model, tmp_path: Path) -> None:
    """Images in degrees: the reported blind area is geodesic m^2, not square degrees (it was
    0 m^2 for a scene wholly blind)."""
    sc = make_tiny_scene(tmp_path / "scene", seed=6, size=SIZE, dates=ONE_FLOWERING,
                         cloud_date=1, plots=[])
    geo = tmp_path / "geo"
    geo.mkdir()
    for p in sc.images:
        _to_geographic(p, geo / p.name)
    res = _detect(sorted(geo.glob("*.tif")), model, tmp_path / "out", **{"run.chunk_size": 32})
    # the warped grid is a little larger than the scene; its no-data margin is not blind
    assert res.report["counts"]["blind_area_m2"] == pytest.approx(SIZE * SIZE * 100, rel=0.05)


# --- the output folder ---------------------------------------------------------------------
def test_a_rerun_with_other_formats_leaves_no_earlier_target_files(model, tiny,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    detect(tiny.images, model, out, with_overrides(CFG, **{"outputs.gcj02": True}),
           formats=("geojson", "csv"))
    assert {"targets.geojson", "targets.csv", "targets_gcj02.csv"} <= \
        {p.name for p in out.iterdir()}
    assert not (out / "targets_gcj02.kml").exists()      # a copy only of the formats asked
    (out / "notes.txt").write_text("the analyst's own file")
    res = detect(tiny.images, model, out, CFG, formats=("gpx",))
    names = {p.name for p in out.iterdir()}
    # the report describes every target file in the folder, and nothing else was touched
    assert names & {"targets.geojson", "targets.csv", "targets_gcj02.csv"} == set()
    assert {"targets.gpx", "report.json", "notes.txt"} <= names
    assert {p.name for p in res.files} == names - {"notes.txt", ".poppyscan"}
    # the inputs hashed are the images read, not the other files in their folder
    assert set(res.report["inputs"]) == {str(p) for p in tiny.images}


def test_an_aoi_edited_in_place_is_a_new_run_not_a_resume(model, tiny, tmp_path: Path) -> None:
    to_wgs = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)

    def write_aoi(c0: int, c1: int) -> None:
        (x0, y0), (x1, y1) = TF * (c0, SIZE), TF * (c1, 0)
        ring = [list(to_wgs.transform(x, y)) for x, y in
                ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
        aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {},
             "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    aoi = tmp_path / "aoi.geojson"
    write_aoi(0, SIZE - 8)
    out = tmp_path / "out"
    first = detect(tiny.images, model, out, CFG, aoi=aoi, formats=("geojson",))
    assert str(aoi) in first.report["inputs"]
    write_aoi(0, SIZE // 2)                            # same path, another area
    again = detect(tiny.images, model, out, CFG, aoi=aoi, formats=("geojson",))
    assert again.report["tiles_resumed"] == 0
    assert again.report["inputs"][str(aoi)] != first.report["inputs"][str(aoi)]


def test_a_shapefile_aoi_is_hashed_with_its_sidecars_and_the_model_whole(
        model, tiny, tmp_path: Path) -> None:
    """A Shapefile's .prj or .dbf edited, or the model's threshold in model.json, is another
    run: saved tiles are not resumed (only the .shp and model.skops were hashed)."""
    import shutil

    import pyogrio
    aoi = tmp_path / "aoi.shp"
    ring = box(*(TF * (0, SIZE)), *(TF * (SIZE - 8, 0)))
    pyogrio.raw.write(aoi, np.array([shapely.to_wkb(ring)], dtype=object),
                      [np.array(["a"], dtype=object)], ["name"], crs="EPSG:32650",
                      geometry_type="Polygon")
    m = Path(shutil.copytree(model, tmp_path / "model"))
    out = tmp_path / "out"
    first = detect(tiny.images, m, out, CFG, aoi=aoi, formats=("geojson",))
    assert {str(aoi.with_suffix(x)) for x in (".shp", ".dbf", ".prj")} <= set(
        first.report["inputs"])
    with open(aoi.with_suffix(".dbf"), "ab") as f:     # the attributes changed
        f.write(b" ")
    assert detect(tiny.images, m, out, CFG, aoi=aoi,
                  formats=("geojson",)).report["tiles_resumed"] == 0
    assert detect(tiny.images, m, out, CFG, aoi=aoi,
                  formats=("geojson",)).report["tiles_resumed"] > 0
    doc = json.loads((m / "model.json").read_text())
    doc["threshold"] = min(0.99, doc["threshold"] + 0.01)
    (m / "model.json").write_text(json.dumps(doc))
    assert detect(tiny.images, m, out, CFG, aoi=aoi,
                  formats=("geojson",)).report["tiles_resumed"] == 0


def test_exclude_counts_the_targets_it_removed_not_the_specks(model, tiny, tmp_path: Path,
                                                              caplog, capsys) -> None:
    """A site over the whole scene: --exclude said it removed every patch of the threshold,
    specks below the unit included, which a run without it never lists. It says how many
    targets it removed (as many as that run lists) and counts the patches beside them."""
    import logging

    import pyogrio
    unit = {"patches.min_mapping_unit_m2": 1000}        # the 3 x 3 px plot is a speck
    res_all = _detect(tiny.images, model, tmp_path / "all", **unit)
    assert res_all.n_targets > 0 and res_all.report["counts"]["below_mmu"] > 0
    x0, y1 = TF * (0, 0)
    x1, y0 = TF * (SIZE, SIZE)
    sites = tmp_path / "sites.gpkg"
    pyogrio.raw.write(sites, np.array([shapely.to_wkb(box(x0 - 50, y0 - 50, x1 + 50, y1 + 50))],
                                      dtype=object),
                      [np.array(["flower park"], dtype=object)], ["name"],
                      crs="EPSG:32650", geometry_type="Polygon")
    with caplog.at_level(logging.WARNING):
        res = detect(tiny.images, model, tmp_path / "ex", with_overrides(CFG, **unit),
                     exclude=sites, formats=("geojson",))
    counts = res.report["counts"]
    assert res.n_targets == 0
    assert counts["excluded"] == res_all.n_targets
    assert counts["excluded_patches"] == (res_all.report["counts"]["patches"]
                                          - res_all.report["counts"]["below_threshold"])
    assert counts["excluded_patches"] > counts["excluded"]
    assert f"--exclude removed {res_all.n_targets} candidate target(s)" in caplog.text
    import run as cli
    cli._print_detect(res)
    n = counts["excluded_patches"]
    assert f"no targets: {n} patch(es) found, {n} on excluded sites, 0 below" in \
        capsys.readouterr().out


def test_exclude_removes_targets_on_a_site_not_beside_it(model, tiny, tmp_path: Path) -> None:
    """A known ornamental site removes the patches that share ground with it; a field that
    only shares an edge with it (a plot beside a park) stays."""
    base = _features(_detect(tiny.images, model, tmp_path / "all").out / "targets.geojson")
    (r, c, s), (r2, c2, _) = PLOTS[0], PLOTS[1]
    beside = _plot_box(r, c + s, s)                 # the plot's east neighbour, edge shared
    on = _plot_box(r2 + 1, c2 + 1, 2)               # inside the second plot
    sites = tmp_path / "sites.gpkg"
    import pyogrio
    pyogrio.raw.write(sites, np.array([shapely.to_wkb(g) for g in (beside, on)], dtype=object),
                      [np.array(["park", "flowers"], dtype=object)], ["name"],
                      crs="EPSG:32650", geometry_type="Polygon")
    res = detect(tiny.images, model, tmp_path / "ex", CFG, exclude=sites,
                 formats=("geojson",))
    got = _features(tmp_path / "ex" / "targets.geojson")
    assert res.report["counts"]["excluded"] == res.report["counts"]["excluded_patches"] == 1
    assert len(got) == len(base) - 1
    assert any(_utm(f["geometry"]).intersects(_plot_box(r, c, s)) for f in got)
    assert not any(_utm(f["geometry"]).intersects(on) for f in got)


def test_a_target_lists_the_used_dates_it_was_clear_on():
    """With two adjacent flights given together, every target listed both flights' dates
    (its flowering_obs said 1). A target lists the dates, among those the features used, on
    which some pixel of it was clear, merged across chunk borders and nearby patches."""
    from outputs.ranking import build_targets
    from pipeline.config import PatchConfig, RankingConfig
    prob = np.zeros((4, 12), "float32")
    prob[1:3, 2:6] = 0.9                       # across the chunk border at column 4
    prob[1:3, 9:11] = 0.9                      # in the right chunk only
    ev = np.ones_like(prob)
    clear = np.zeros((4, 4, 12), bool)         # dates: 0 left half, 1 right half, 2 none,
    clear[0, :, :5] = True                     # 3 everywhere (not used by the features)
    clear[1, :, 5:] = True
    clear[3] = True
    pieces = []
    for x0 in (0, 4, 8):
        sl = (slice(None), slice(x0, x0 + 4))
        p, _ = chunk_pieces(prob[sl], ev[sl], None, None, None, 0, x0, TF, 0.5,
                            clear[:, :, x0:x0 + 4])
        pieces += p
    patches = merge_pieces(pieces)
    assert sorted(p.seen for p in patches) == [0b1010, 0b1011]
    dates = ["2024-04-10", "2024-04-20", "2024-04-30", None]
    tl, _ = build_targets(patches, "EPSG:32650", patch_cfg=PatchConfig(min_mapping_unit_m2=0),
                          rank_cfg=RankingConfig(), dates=dates, sensor="p4m")
    assert sorted(t.dates for t in tl.targets) == [("2024-04-10", "2024-04-20"),
                                                   ("2024-04-20",)]
    joined, _ = build_targets(patches, "EPSG:32650", rank_cfg=RankingConfig(), dates=dates,
                              sensor="p4m", patch_cfg=PatchConfig(min_mapping_unit_m2=0,
                                                                  merge_distance_m=50))
    assert [t.dates for t in joined.targets] == [("2024-04-10", "2024-04-20")]


@pytest.mark.parametrize("angle", [0, 30, 90])
def test_enclosed_gaps_are_judged_on_the_grid_not_its_bounding_box(angle) -> None:
    """On a rotated grid a collar along an edge lies inside the footprint's axis-aligned box:
    it was kept as an enclosed gap (blind area) though it reaches the grid's edge."""
    from affine import Affine

    from outputs.patches import enclosed, gap_polygons
    tf = Affine.translation(500000, 4000000) * Affine.rotation(angle) * Affine.scale(10, -10)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 0:3] = True                       # collar on the west edge
    mask[8:11, 9:12] = True                      # a hole the images surround
    gaps = gap_polygons(mask, 0, 0, tf)
    kept = enclosed(gaps, tf, 20, 20)
    assert len(kept) == 1 and kept[0].area == pytest.approx(9 * 100)
    assert kept[0].centroid.distance(shapely.Point(tf * (10.5, 9.5))) < 1e-6


def test_on_a_rotated_grid_a_plot_cut_by_tiles_is_whole_at_any_chunk_size(
        model, tmp_path: Path) -> None:
    """On a rotated grid a tile judged which pieces reach its edge by the CRS box of two of
    its corners: a piece on a tile's border counted as inner, was dropped below the minimum
    mapping unit, and the plot lost it at small chunk sizes."""
    plots = [(14, 10, 4), (14, 26, 4), (30, 1, 4)]      # each cut in two at 16 px
    sc = make_tiny_scene(tmp_path / "rot", seed=4, size=SIZE, plots=plots)
    for img in sc.images:
        with rasterio.open(img, "r+") as dst:
            dst.transform = TF * Affine.rotation(30)
    got = {}
    for cs in (16, 64):    # a unit of 10 px: each half plot (8 px) is below it alone
        _detect(sc.images, model, tmp_path / f"cs{cs}", **{
            "run.chunk_size": cs, "patches.min_mapping_unit_m2": 1000})
        got[cs] = sorted((f["id"], f["properties"]["area_m2"])
                         for f in _features(tmp_path / f"cs{cs}" / "targets.geojson"))
    assert len(got[64]) == len(plots) and all(a >= 1000 for _, a in got[64])
    assert got[16] == got[64]


def test_a_second_detect_into_the_same_out_at_once_is_refused(model, tiny, tmp_path) -> None:
    """Two detects into one --out at the same time: the second wiped the first's tiles and
    the first carried on mixing both runs' tiles. The run state is locked; the second is
    refused in one line and leaves the first's state alone; after the first, it runs."""
    import subprocess
    import sys
    import time
    out = tmp_path / "out"
    (out / ".poppyscan").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(out / '.poppyscan' / 'lock')!r}, 'a')\n"
        "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="another detect is writing into it now"):
            _detect(tiny.images, model, out)
        assert sorted(p.name for p in (out / ".poppyscan").iterdir()) == ["lock"]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    res = _detect(tiny.images, model, out)
    assert res.n_targets == len(PLOTS)
    res = _detect(tiny.images, model, out)             # the same process, again: resumes
    assert res.report["tiles_resumed"] == res.report["tiles"]


@pytest.mark.parametrize("damaged", ["000000_000032.json", "000000_000032.npz", "run.json"])
def test_a_rerun_over_damaged_run_state_recomputes_it(runs, model, tiny, tmp_path,
                                                      damaged) -> None:
    """A tile's files or run.json left empty (a power cut, a full disk: nothing is fsync'ed)
    made the rerun a traceback; the damaged part is computed again, the outputs the same."""
    import shutil
    out = tmp_path / "out"
    shutil.copytree(runs[32], out)
    [tdir] = (out / ".poppyscan" / "tiles").iterdir()
    (tdir / damaged).write_bytes(b"")
    res = _detect(tiny.images, model, out, **{"run.chunk_size": 32})
    assert res.report["tiles_resumed"] == (0 if damaged == "run.json" else 3)
    assert (out / "targets.geojson").read_bytes() == (runs[32] / "targets.geojson").read_bytes()
