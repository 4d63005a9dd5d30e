"""Flowering-window features (issue 6): per-phase composites, contrasts, evidence; missing
phases are NaN (never a silent zero); lazy, chunked on y/x, float32."""
from __future__ import annotations

import warnings

import dask.array as darr
import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr
from affine import Affine
from dask_helpers import CountComputes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indices.window import _block_features, window_features
from pipeline.config import FeatureConfig, load_calendar
from pipeline.errors import InputError

BANDS = ["blue", "green", "red", "nir"]
CFG = FeatureConfig(bands=("blue", "green", "red", "nir", "swir16"), indices=("NDVI",))
CAL = load_calendar("east-china")   # pre 03-01..03-31, flowering 04-01..05-31, post 05-21..06-30
TF = Affine(10, 0, 500000.0, 0, -10, 3340000.0)


def make_scene(data: np.ndarray, dates: list[str], bands=BANDS, chunks: int = 4,
               tf: Affine = TF) -> xr.DataArray:
    ny, nx = data.shape[2:]
    y = tf.f + tf.e * (np.arange(ny) + 0.5)
    x = tf.c + tf.a * (np.arange(nx) + 0.5)
    da = xr.DataArray(darr.from_array(data.astype("float32"), chunks=(-1, -1, chunks, chunks)),
                      dims=("time", "band", "y", "x"),
                      coords={"time": np.array(dates, dtype="datetime64[ns]"), "band": bands,
                              "y": y, "x": x}, attrs={"sensor": "sentinel2"})
    return da.rio.write_crs("EPSG:32650").rio.write_transform(tf)


def random_refl(n_dates: int, ny: int = 8, nx: int = 8, seed: int = 0,
                n_bands: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.02, 0.5, (n_dates, n_bands, ny, nx))


def ndvi(refl: np.ndarray) -> np.ndarray:
    red, nir = refl[:, BANDS.index("red")], refl[:, BANDS.index("nir")]
    return (nir - red) / (nir + red)




DATES = ["2024-03-10", "2024-03-25",                       # pre
         "2024-04-10", "2024-04-25", "2024-05-10",         # flowering
         "2024-06-05",                                     # post
         "2024-08-01"]                                     # outside the calendar


def test_composites_equal_a_hand_computation() -> None:
    refl = random_refl(len(DATES))
    refl[3, :, 2:5, 2:5] = np.nan                  # a cloud on one flowering date
    refl[6] = 0.9                                  # outside the calendar: must be ignored
    f = window_features(make_scene(refl, DATES), CAL, CFG)
    feats = f.data.compute()
    ev = f.evidence.compute()
    assert f.phase_dates == {"pre": DATES[0:2], "flowering": DATES[2:5], "post": DATES[5:6]}
    nd = ndvi(refl)
    phases = {"pre": [0, 1], "flowering": [2, 3, 4], "post": [5]}
    med = {}
    for ph, ix in phases.items():
        med[ph] = np.nanmedian(refl[ix], axis=0)
        for k, b in enumerate(BANDS):
            np.testing.assert_allclose(feats.sel(feature=f"{ph}.median.{b}"), med[ph][k],
                                       rtol=1e-6)
        np.testing.assert_allclose(feats.sel(feature=f"{ph}.median.NDVI"),
                                   np.nanmedian(nd[ix], axis=0), atol=1e-6)
        np.testing.assert_allclose(feats.sel(feature=f"{ph}.max.NDVI"),
                                   np.nanmax(nd[ix], axis=0), atol=1e-6)
        np.testing.assert_allclose(feats.sel(feature=f"{ph}.min.NDVI"),
                                   np.nanmin(nd[ix], axis=0), atol=1e-6)
    # under the cloud the flowering median is the mean of the two clear dates
    np.testing.assert_allclose(feats.sel(feature="flowering.median.red")[3, 3],
                               (refl[2, 2, 3, 3] + refl[4, 2, 3, 3]) / 2, rtol=1e-6)
    # contrasts: flowering - pre and post - flowering, for indices and visible bands
    for a, b in (("flowering", "pre"), ("post", "flowering")):
        for k, band in enumerate(BANDS[:3]):
            np.testing.assert_allclose(feats.sel(feature=f"{a}-{b}.median.{band}"),
                                       med[a][k] - med[b][k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            feats.sel(feature=f"{a}-{b}.median.NDVI"),
            np.nanmedian(nd[phases[a]], axis=0) - np.nanmedian(nd[phases[b]], axis=0),
            atol=2e-6)
    assert "flowering-pre.median.nir" not in f.names          # only visible bands contrasted
    assert not any("swir16" in n for n in f.names)            # bands the scene lacks: skipped
    # evidence: clear observations per phase
    np.testing.assert_array_equal(ev.sel(phase="pre"), 2)
    want = np.full((8, 8), 3.0)
    want[2:5, 2:5] = 2
    np.testing.assert_array_equal(ev.sel(phase="flowering"), want)
    np.testing.assert_array_equal(ev.sel(phase="post"), 1)
    assert np.isfinite(feats.values).all()


def test_fully_clouded_date_is_ignored_not_zero() -> None:
    refl = random_refl(len(DATES), seed=1)
    clear = window_features(make_scene(np.delete(refl, 3, axis=0),
                                       DATES[:3] + DATES[4:]), CAL, CFG).data.compute()
    refl[3] = np.nan                               # the whole 04-25 scene under cloud
    f = window_features(make_scene(refl, DATES), CAL, CFG)
    feats = f.data.compute()
    assert np.isfinite(feats.values).all()
    np.testing.assert_allclose(feats.values, clear.values, rtol=1e-6)
    np.testing.assert_array_equal(f.evidence.sel(phase="flowering").compute(), 2)


def test_every_flowering_date_clouded_gives_nan_features_and_evidence_0() -> None:
    refl = random_refl(len(DATES), seed=2)
    refl[2:5] = np.nan
    f = window_features(make_scene(refl, DATES), CAL, CFG)
    feats = f.data.compute()
    fl = [n for n in f.names if n.startswith(("flowering", "post-flowering"))]
    assert fl and np.isnan(feats.sel(feature=fl).values).all()
    other = [n for n in f.names if n not in fl]
    assert np.isfinite(feats.sel(feature=other).values).all()
    np.testing.assert_array_equal(f.evidence.sel(phase="flowering").compute(), 0)


def test_one_date_in_a_phase_and_a_phase_with_none(caplog) -> None:
    dates = ["2024-03-20", "2024-04-20"]             # one pre, one flowering, no post
    refl = random_refl(2, seed=3)
    with caplog.at_level("WARNING", logger="indices.window"):
        f = window_features(make_scene(refl, dates), CAL, CFG)
    # the user is told which phase lacks a date, its window and the consequence
    post_ph = CAL.phases["post"]
    warned = [r.getMessage() for r in caplog.records if "post phase" in r.getMessage()]
    assert len(warned) == 1 and f"{post_ph.start} to {post_ph.end}" in warned[0]
    assert "features are missing" in warned[0]
    assert not any("flowering phase" in r.getMessage() for r in caplog.records)
    feats = f.data.compute()
    ev = f.evidence.compute()
    # the feature list does not depend on which dates exist
    full = window_features(make_scene(random_refl(len(DATES)), DATES), CAL, CFG)
    assert f.names == full.names
    assert f.phase_dates == {"pre": ["2024-03-20"], "flowering": ["2024-04-20"], "post": []}
    nd = ndvi(refl)
    for stat in ("median", "max", "min"):            # one date: every statistic is that date
        np.testing.assert_allclose(feats.sel(feature=f"flowering.{stat}.NDVI"), nd[1],
                                   atol=1e-6)
    np.testing.assert_allclose(feats.sel(feature="flowering-pre.median.red"),
                               refl[1, 2] - refl[0, 2], rtol=1e-5, atol=1e-7)
    post = [n for n in f.names if n.startswith("post")]
    assert post and np.isnan(feats.sel(feature=post).values).all()   # missing, never 0
    np.testing.assert_array_equal(ev.sel(phase="post"), 0)
    np.testing.assert_array_equal(ev.sel(phase="flowering"), 1)
    np.testing.assert_array_equal(ev.sel(phase="pre"), 1)


def test_a_date_in_two_overlapping_phases_serves_both() -> None:
    """Flowering to 31 May and post from 21 May: a late-May image enters the flowering
    composites (a late bloom) and the post ones (drying), and counts as evidence in both."""
    from pipeline.config import Calendar
    cal = Calendar(name="overlap", phases={"pre": {"start": "03-01", "end": "03-31"},
                                           "flowering": {"start": "04-01", "end": "05-31"},
                                           "post": {"start": "05-21", "end": "06-30"}})
    dates = ["2024-03-20", "2024-04-20", "2024-05-25", "2024-06-10"]
    refl = random_refl(4, seed=5)
    f = window_features(make_scene(refl, dates), cal, CFG)
    assert f.phase_dates == {"pre": ["2024-03-20"], "flowering": ["2024-04-20", "2024-05-25"],
                             "post": ["2024-05-25", "2024-06-10"]}
    feats, ev = f.data.compute(), f.evidence.compute()
    nd = ndvi(refl)
    np.testing.assert_allclose(feats.sel(feature="flowering.max.NDVI"), nd[[1, 2]].max(0),
                               atol=1e-6)
    np.testing.assert_allclose(feats.sel(feature="post.min.NDVI"), nd[[2, 3]].min(0),
                               atol=1e-6)
    np.testing.assert_array_equal(ev.sel(phase="flowering"), 2)
    np.testing.assert_array_equal(ev.sel(phase="post"), 2)


def test_single_drone_flight_has_only_a_flowering_phase() -> None:
    bands = ["blue", "green", "red", "rededge2", "nir"]
    rng = np.random.default_rng(4)
    refl = rng.uniform(0.02, 0.5, (1, 5, 12, 12))
    refl[0, :, :2, :2] = np.nan                      # the orthomosaic's no-data collar
    tf = Affine(0.05, 0, 500000.0, 0, -0.05, 3300000.0)
    scene = make_scene(refl, ["2025-04-20"], bands=bands, tf=tf)
    scene.attrs["sensor"] = "p4m"
    cfg = FeatureConfig(indices=("NDVI", "GNDVI", "NDRE"))   # NDRE needs rededge1: skipped
    f = window_features(scene, CAL, cfg)
    feats = f.data.compute()
    assert f.phase_dates == {"pre": [], "flowering": ["2025-04-20"], "post": []}
    fl = [n for n in f.names if n.startswith("flowering.")]
    assert {"flowering.median.red", "flowering.median.GNDVI", "flowering.max.NDVI"} <= set(fl)
    assert not any("NDRE" in n for n in f.names)
    got = feats.sel(feature=fl).values
    assert np.isfinite(got[:, 2:, 2:]).all() and np.isnan(got[:, :2, :2]).all()
    np.testing.assert_allclose(feats.sel(feature="flowering.median.rededge2"), refl[0, 3],
                               rtol=1e-6)
    rest = [n for n in f.names if n not in fl]
    assert rest and np.isnan(feats.sel(feature=rest).values).all()
    ev = f.evidence.compute()
    np.testing.assert_array_equal(ev.sel(phase=["pre", "post"]), 0)
    want = np.ones((12, 12))
    want[:2, :2] = 0
    np.testing.assert_array_equal(ev.sel(phase="flowering"), want)


def test_lazy_chunked_float32_and_chunk_independent() -> None:
    refl = random_refl(len(DATES), ny=16, nx=12, seed=5)
    refl[3, :, 5:9, 3:7] = np.nan
    with CountComputes() as cc:
        f = window_features(make_scene(refl, DATES, chunks=8), CAL, CFG)
    assert cc.runs == 0
    for da in (f.data, f.evidence):
        assert isinstance(da.data, darr.Array) and da.dtype == np.float32
        assert da.chunks[1] == (8, 8) and da.chunks[2] == (8, 4)
        assert len(da.chunks[0]) == 1
        assert da.rio.crs.to_epsg() == 32650 and da.rio.transform() == TF
    whole = window_features(make_scene(refl, DATES, chunks=16), CAL, CFG)
    np.testing.assert_array_equal(f.data.values, whole.data.values)
    np.testing.assert_array_equal(f.evidence.values, whole.evidence.values)


def test_a_nan_pixel_on_every_date_is_nan_everywhere() -> None:
    refl = random_refl(len(DATES), seed=6)
    refl[:, :, 0, 0] = np.nan                        # outside the AOI / swath
    f = window_features(make_scene(refl, DATES), CAL, CFG)
    assert np.isnan(f.data.values[:, 0, 0]).all()
    assert (f.evidence.values[:, 0, 0] == 0).all()
    assert np.isfinite(f.data.values[:, 1:, 1:]).all()


def test_an_index_undefined_at_a_clear_pixel_leaves_the_date_observed() -> None:
    """VARI has no value where blue = green + red (an RGB uint8 triple can be exactly that;
    MTCI and S2REP have the same on some Sentinel-2 pixels). The pixel is clear: its date is
    evidence (it counted as unobserved, so detect took the pixel for blind and scored it with
    a missing-phase model, while training had sampled it as seen), and only VARI's features
    are NaN there."""
    cfg = FeatureConfig(bands=("blue", "green", "red", "nir"), indices=("NDVI", "VARI"))
    refl = random_refl(len(DATES), seed=7)
    b, g, r = (BANDS.index(x) for x in ("blue", "green", "red"))
    refl[:, [b, g, r], 1, 1] = (0.375, 0.25, 0.125)      # VARI 0/0 on every date (exact)
    refl[3, [b, g, r], 2, 2] = (0.375, 0.25, 0.125)      # on one flowering date only
    f = window_features(make_scene(refl, DATES), CAL, cfg)
    feats, ev = f.data.compute(), f.evidence.compute()
    np.testing.assert_array_equal(ev.sel(phase="pre"), 2)
    np.testing.assert_array_equal(ev.sel(phase="flowering"), 3)
    np.testing.assert_array_equal(ev.sel(phase="post"), 1)
    vari = [n for n in f.names if n.endswith(".VARI")]
    rest = [n for n in f.names if n not in vari]
    assert vari and np.isnan(feats.sel(feature=vari).values[:, 1, 1]).all()
    assert np.isfinite(feats.sel(feature=rest).values).all()
    # one undefined date: the VARI composites are those of the other flowering dates
    red, green, blue = (refl[[2, 4], k, 2, 2] for k in (r, g, b))
    v = (green - red) / (green + red - blue)
    np.testing.assert_allclose(feats.sel(feature="flowering.median.VARI")[2, 2], np.median(v),
                               rtol=1e-5)
    np.testing.assert_allclose(feats.sel(feature="flowering.max.VARI")[2, 2], v.max(),
                               rtol=1e-5)
    assert np.isfinite(feats.sel(feature=vari).values[:, 2, 2]).all()


def test_feature_names_follow_the_documented_pattern() -> None:
    f = window_features(make_scene(random_refl(len(DATES)), DATES), CAL, CFG)
    for n in f.names:
        head, stat, var = n.split(".")
        assert head in ("pre", "flowering", "post", "flowering-pre", "post-flowering")
        assert stat in ("median", "max", "min")
        assert var in BANDS + ["NDVI"]
    assert "pre-flowering.median.NDVI" not in f.names          # only the two contrasts
    assert len(set(f.names)) == len(f.names)


# --- property: the kernel equals a per-pixel reference ------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_dates=st.integers(1, 7),
       phase_of=st.lists(st.sampled_from([0, 1, 2, None]), min_size=7, max_size=7),
       cloud=st.floats(0, 1))
def test_property_kernel_equals_a_per_pixel_reference(seed, n_dates, phase_of, cloud) -> None:
    rng = np.random.default_rng(seed)
    n_var, ny, nx = 3, 3, 4
    block = rng.uniform(-1, 1, (n_dates, n_var, ny, nx)).astype("float32")
    clouded = rng.uniform(0, 1, (n_dates, ny, nx)) < cloud
    block[np.broadcast_to(clouded[:, None], block.shape)] = np.nan
    phase_idx = tuple(tuple(i for i in range(n_dates) if phase_of[i] == p) for p in range(3))
    # median of var 0 and 2 per phase, max/min of var 1, contrasts 1-0 and 2-1 of var 2
    codes = ((0, 0, 0, -1), (0, 2, 1, -1), (0, 0, 2, -1), (1, 1, 0, -1), (2, 1, 1, -1),
             (1, 1, 2, -1), (3, 2, 1, 0), (3, 2, 2, 1))
    out = _block_features(block, phase_idx, codes, len(codes), 3)
    for y in range(ny):
        for x in range(nx):
            want = _reference(block[:, :, y, x], phase_idx)
            np.testing.assert_allclose(out[:, y, x], want, rtol=1e-6, atol=1e-6)


def _reference(pixel: np.ndarray, phase_idx) -> np.ndarray:
    """The property test's features for one pixel's (time, var) values, plainly."""
    def clear(p):
        return [pixel[t] for t in phase_idx[p] if np.isfinite(pixel[t]).all()]

    def stat(fn, p, v):
        vals = [o[v] for o in clear(p)]
        return fn(vals) if vals else np.nan
    want = [stat(np.median, 0, 0), stat(np.median, 1, 2), stat(np.median, 2, 0),
            stat(max, 0, 1), stat(min, 1, 1), stat(max, 2, 1),
            stat(np.median, 1, 2) - stat(np.median, 0, 2),
            stat(np.median, 2, 2) - stat(np.median, 1, 2)]
    return np.array(want + [len(clear(p)) for p in range(3)], "float32")


def test_nanmedian0_equals_numpy_for_any_count_of_clear_dates():
    from indices.window import nanmedian0
    rng = np.random.default_rng(4)
    for t in (2, 3, 4, 7):
        a = rng.normal(size=(t, 3, 40, 30)).astype("float32")
        a[rng.random(a.shape) < 0.4] = np.nan       # every count of clear dates, 0 included
        a[rng.random(a.shape) < 0.01] = np.inf       # a ratio index over a zero denominator
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmedian(a, axis=0)
        got = nanmedian0(a)
        assert got.dtype == a.dtype
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.allclose(got, want, equal_nan=True, atol=1e-6)


# --- a calendar that moves with elevation -------------------------------------------------------
def _shifted(cal, days: int):
    """``cal`` with every phase ``days`` later (the calendar a pixel that high should get)."""
    import datetime as dt

    from pipeline.config import Calendar

    def later(md: str) -> str:
        return (dt.date.fromisoformat(f"2001-{md}") + dt.timedelta(days=days)).strftime("%m-%d")
    return Calendar(name=cal.name, phases={p: {"start": later(ph.start), "end": later(ph.end)}
                                           for p, ph in cal.phases.items()})


@pytest.mark.parametrize("cfg", [CFG, CFG.model_copy(update={
    "spatial_vars": ("NDVI",), "spatial_radii_px": (1,), "spatial_stats": ("dev",)})],
    ids=["pixel", "spatial"])
def test_a_calendar_that_moves_with_elevation_gives_each_pixel_its_own_phases(cfg) -> None:
    """3 days later per 100 m above 600 m: pixels at 1600 m (30 days later) get the features
    of a calendar 30 days later, pixels at 600 m those of the calendar itself, in one pass
    (with spatial features: away from the boundary, where windows see both halves)."""
    from pipeline.config import Calendar
    cal = Calendar(name="hills", phases={"pre": {"start": "03-01", "end": "03-31"},
                                         "flowering": {"start": "04-01", "end": "05-05"},
                                         "post": {"start": "05-06", "end": "06-20"}},
                   elevation_shift_days_per_100m=3, reference_elevation_m=600)
    dates = ["2024-03-15", "2024-04-10", "2024-04-28", "2024-05-20", "2024-06-10",
             "2024-07-10"]
    refl = random_refl(len(dates), ny=8, nx=8, seed=9)
    refl[2, :, 1:3, 5:7] = np.nan                       # a cloud over the boundary
    scene = make_scene(refl, dates)
    elev = np.full((8, 8), 600.0, "float32")
    elev[:, 4:] = 1600.0
    elev[0, 0] = np.nan                                 # no elevation: the reference calendar
    shift = cal.shift_days(xr.DataArray(elev, dims=("y", "x")).chunk(4))
    f = window_features(scene, cal, cfg, shift=shift)
    got, ev = f.data.compute().values, f.evidence.compute().values
    flat = Calendar(name="hills", phases=cal.phases)
    low = window_features(scene, flat, cfg)
    high = window_features(scene, _shifted(flat, 30), cfg)
    assert low.names == high.names == f.names
    r = 1 if cfg.spatial_radii_px else 0
    np.testing.assert_array_equal(got[:, :, :4 - r], low.data.values[:, :, :4 - r])
    np.testing.assert_array_equal(got[:, :, 4 + r:], high.data.values[:, :, 4 + r:])
    np.testing.assert_array_equal(ev[:, :, :4], low.evidence.values[:, :, :4])
    np.testing.assert_array_equal(ev[:, :, 4:], high.evidence.values[:, :, 4:])
    # the high pixels' flowering is 1 May - 4 June: 28 April is not in it, 20 May is
    assert f.phase_dates["flowering"] == ["2024-04-10", "2024-04-28", "2024-05-20"]
    assert ev[1, 4, 5] == 1 and ev[1, 4, 2] == 2
    # and the property that makes this matter: the two halves really differ
    assert not np.allclose(low.data.values[:, :, 4:], high.data.values[:, :, 4:],
                           equal_nan=True)


def test_a_plan_that_moves_with_elevation_refuses_features_without_shifts() -> None:
    from indices.window import block_features, make_plan
    from pipeline.config import Calendar
    cal = Calendar(name="hills", phases=CAL.phases, elevation_shift_days_per_100m=3)
    scene = make_scene(random_refl(len(DATES)), DATES)
    plan = make_plan(scene, cal, CFG, shifts=(0, 10))
    assert plan.phase_windows
    with pytest.raises(ValueError, match="shift"):
        block_features(scene.compute(), plan)


def test_a_shifted_calendar_is_said_in_words_with_its_dates() -> None:
    from indices.window import phase_window, shift_words
    cal = load_calendar("east-china")
    ph = cal.phases["flowering"]
    assert phase_window(cal, "flowering") == f"{ph.start} to {ph.end}"
    assert shift_words(-17, -17) == "17 days earlier" and shift_words(3, 10) == "3 to 10 days later"
    assert shift_words(-5, 3) == "from 5 days earlier to 3 days later"
    assert shift_words(1, 1) == "1 day later" and shift_words(-9, -2) == "2 to 9 days earlier"
    import datetime as dt
    start = (dt.date.fromisoformat(f"2001-{ph.start}") - dt.timedelta(days=17)).strftime("%m-%d")
    assert phase_window(cal, "flowering", (-17, -17)).startswith(f"{start} to ")
    assert phase_window(cal, "flowering", (-17, -17)).endswith("(elevation: 17 days earlier)")


def test_images_from_two_seasons_are_refused() -> None:
    """The phases are month-day windows, so last year's April image among this year's March
    and June images served as this season's bloom, silently (an audit); June 2023 among
    March and April 2024 (295 days, under the warning's 300) was the post phase of 2024,
    before its pre phase (a second audit)."""
    from indices.window import make_plan
    for mixed, said in ((["2023-04-16", "2024-03-10", "2024-06-05"],
                         "2023: 2023-04-16; 2024: 2024-03-10, 2024-06-05"),
                        (["2023-06-20", "2024-03-15", "2024-04-10"],
                         "2023: 2023-06-20; 2024: 2024-03-15, 2024-04-10")):
        with pytest.raises(InputError, match=f"2 seasons of calendar east-china .{said}."):
            make_plan(make_scene(random_refl(3), mixed), CAL, CFG)
    make_plan(make_scene(random_refl(len(DATES)), DATES), CAL, CFG)      # one season


def test_a_season_across_the_new_year_is_one_season() -> None:
    """Myanmar/Laos: the season starts in autumn and ends in spring."""
    from indices.window import make_plan, phase_membership, seasons_of
    from pipeline.config import load_calendar
    cal = load_calendar("myanmar-laos")
    starts = {p: ph.start for p, ph in cal.phases.items()}
    y0 = 2023 if starts["pre"] > starts["post"] else 2024
    dates = [f"{y0}-{starts['pre']}", f"2024-{starts['post']}"]
    times = np.array(dates, dtype="datetime64[ns]")
    member = phase_membership(times, cal, list(cal.phases))
    assert list(seasons_of(times, cal, member)) == [y0]
    make_plan(make_scene(random_refl(2), dates), cal, CFG)


def test_composites_take_the_observations_the_evidence_counts() -> None:
    """A date whose coastal band is missing at a pixel (a 60 m band at a swath edge) is not
    an observation there: the evidence did not count it, but the medians used its red (an
    audit: evidence 1, flowering.median.red 0.09 from both dates instead of 0.04)."""
    refl = np.full((2, 5, 4, 4), 0.04)
    refl[1, :4] = 0.14                              # the second date: other values
    refl[1, 4, 0, 0] = np.nan                       # its coastal band missing at (0, 0)
    dates = ["2024-04-10", "2024-04-25"]
    f = window_features(make_scene(refl, dates, bands=["blue", "green", "red", "nir",
                                                       "coastal"]), CAL, CFG)
    ev = f.evidence.sel(phase="flowering").values
    red = f.data.sel(feature="flowering.median.red").values
    assert ev[0, 0] == 1 and red[0, 0] == pytest.approx(0.04)     # the one observation
    assert ev[1, 1] == 2 and red[1, 1] == pytest.approx(0.09)     # both


def test_an_in_memory_scene_and_an_elevation_calendar_without_shifts() -> None:
    """window_features on an in-memory scene crashed ('numpy.ndarray' has no 'chunks');
    a calendar that moves with elevation, given no shift, took the reference elevation's
    phases for every pixel silently."""
    from pipeline.config import load_calendar
    refl = random_refl(len(DATES))
    lazy = make_scene(refl, DATES)
    eager = window_features(lazy.compute(), CAL, CFG)
    np.testing.assert_array_equal(eager.data.values, window_features(lazy, CAL, CFG).data.values)
    moving = load_calendar("afghanistan-east")
    assert moving.shifts_with_elevation
    with pytest.raises(InputError, match="afghanistan-east moves with elevation: give each"):
        window_features(lazy, moving, CFG)
