"""Cached simulated scenes as numpy arrays, for fast model comparisons (bench only).

A scene is simulated once (``pipeline.simulate``), read through the real pipeline (ingest,
masks, window features) and kept in ``CACHE/<seed>_<prevalence>_<size>.npz`` with its training
table (labelled polygons sampled like ``run.py train`` does) and a raster of the truth plots,
so a comparison of models or thresholds does not pay for simulation and feature extraction
again. The scoring mirrors the shared matching rule (outputs/evaluate.py) on the pixel grid:
a plot is found when a kept patch covers a pixel it touches, a patch is correct when it comes
within one pixel of a plot. Final figures come from the real pipeline (tests/test_accuracy.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio import features as rfeatures
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from shapely.geometry import box

CACHE = Path(os.environ.get("POPPYSCAN_BENCH_CACHE", "/tmp/poppyscan-bench"))


@dataclass
class CachedScene:
    seed: int
    names: list[str]
    F: np.ndarray          # (feature, y, x) float32
    X: np.ndarray          # training table
    y: np.ndarray
    polygon: np.ndarray
    xy: np.ndarray
    label_geoms: list
    label_classes: list[str]
    plot_ids: np.ndarray   # (y, x) int32, 0 = no plot, else plot index + 1 (all touched)
    plot_px: np.ndarray    # (n_plots,) plot area in pixels


def load_scene(seed: int, prevalence: float = 0.01, size: int = 256) -> CachedScene:
    from classifiers.labels import read_labels, read_polygons
    from classifiers.sampling import UNLABELLED, join, sample, sample_background
    from indices.window import window_features
    from pipeline.config import load_calendar, load_config
    from pipeline.simulate import simulate
    from pipeline.survey import mask_and_correct, prepare_scene

    cfg = load_config()
    d = CACHE / f"s{seed}_p{prevalence}_{size}"
    npz = d / "cache.npz"
    sim = simulate(d / "scene", size=size, seed=seed, prevalence=prevalence) \
        if not (d / "scene" / "truth.geojson").is_file() else None
    sdir = d / "scene"
    images = sorted(sdir.glob("S2_*.tif")) if sim is None else sim.images
    scene, dem = prepare_scene(images, cfg, dem=sdir / "dem.tif")
    labels = read_labels(sdir / "labels.geojson", scene.rio.crs)
    # the cache depends on the features, the calendar and how the training table is sampled,
    # not on the model's own settings (comparing models must not rebuild it)
    sampling = ("erode_m", "max_pixels_per_polygon", "background_sample_px",
                "background_buffer_m")
    stamp = (repr(cfg.features.model_dump()) + repr(cfg.model.model_dump(include=set(sampling)))
             + repr(load_calendar(cfg.calendar).model_dump()))
    if npz.is_file() and str(np.load(npz, allow_pickle=True).get("config", "")) != stamp:
        npz.unlink()  # features, calendar or sampling changed since it was cached
    if npz.is_file():
        z = np.load(npz, allow_pickle=True)
        cells = [box(*b) for b in z["bg_cells"]]
        return CachedScene(seed, list(z["names"]), z["F"], z["X"], z["y"], z["polygon"],
                           z["xy"], list(labels.geometries) + cells,
                           list(labels.classes) + [UNLABELLED] * len(cells),
                           z["plot_ids"], z["plot_px"])
    masked = mask_and_correct(scene, dem, cfg)
    feats = window_features(masked, load_calendar(cfg.calendar), cfg.features)
    F = feats.data.values.astype("float32")
    table = sample(feats, labels, erode_m=cfg.model.erode_m,
                   max_pixels=cfg.model.max_pixels_per_polygon, seed=0)
    if cfg.model.background_sample_px:  # as run.py train does
        table, joined = join((table, labels), sample_background(
            feats, labels, n_pixels=cfg.model.background_sample_px,
            buffer_m=cfg.model.background_buffer_m, seed=0))
        bg_cells = np.array([g.bounds for g in joined.geometries[len(labels.geometries):]])
    else:
        bg_cells = np.zeros((0, 4))
    plots, _ = read_polygons(sdir / "truth.geojson", scene.rio.crs)
    ids = plot_id_raster(plots, F.shape[1:], scene.rio.transform())
    plot_px = np.array([g.area / 100.0 for g in plots])
    np.savez(npz, names=np.array(feats.names), F=F, X=table.X, y=table.y,
             polygon=table.polygon, xy=table.xy, plot_ids=ids, plot_px=plot_px,
             bg_cells=bg_cells, config=np.array(stamp))
    return load_scene(seed, prevalence, size)


def plot_id_raster(plots: list, shape: tuple[int, int], transform) -> np.ndarray:
    """(y, x) int32: 0 = no plot, else the index + 1 of the first plot touching the pixel."""
    ids = np.zeros(shape, "int32")
    for i, g in enumerate(plots):
        r = rfeatures.rasterize([(g, 1)], out_shape=shape, transform=transform,
                                all_touched=True, fill=0, dtype="uint8")
        ids[(r > 0) & (ids == 0)] = i + 1
    return ids


def merge_labels(lab: np.ndarray, kept: np.ndarray, gap_px: float) -> np.ndarray:
    """Labels of the kept patches with patches at most ``gap_px`` pixels apart (edge to edge,
    as ``patches.merge_distance_m`` measures polygons) joined; 0 elsewhere."""
    out = np.where(kept[lab], lab, 0)
    if gap_px <= 0:
        return out
    yy, xx = np.nonzero(out)
    if len(yy) < 2:
        return out
    pts = np.c_[yy, xx].astype(float)
    i, j = cKDTree(pts).query_pairs((gap_px + 1) * np.sqrt(2) + 1e-9, output_type="ndarray").T
    # the gap between two pixels' squares: per axis, the offset less one pixel
    gy = np.maximum(np.abs(yy[i] - yy[j]) - 1, 0)
    gx = np.maximum(np.abs(xx[i] - xx[j]) - 1, 0)
    near = gy * gy + gx * gx <= gap_px * gap_px + 1e-9
    lab_of = out[yy, xx]
    a, b = lab_of[i[near]], lab_of[j[near]]
    n = int(lab.max()) + 1
    _, comp = connected_components(coo_matrix((np.ones(len(a), bool), (a, b)), shape=(n, n)),
                                   directed=False)
    return np.where(out > 0, comp[out] + 1, 0)


def score_map(prob: np.ndarray, thr: float, sc: CachedScene, *, mmu_px: int = 1,
              min_plot_px: float = 4.0, keep: str = "any", keep_thr: float | None = None,
              merge_px: float = 0.0) -> dict:
    """Plot recall (plots >= min_plot_px) and target precision of patches on ``prob``;
    ``merge_px``: kept patches at most that many pixels apart count as one target."""
    mask = np.isfinite(prob) & (prob >= thr)
    lab, n = ndimage.label(mask)
    if n == 0:
        big = sc.plot_px >= min_plot_px
        return {"targets": 0, "correct": 0, "recall": 0.0, "precision": float("nan"),
                "plots": int(big.sum())}
    idx = np.arange(1, n + 1)
    size = ndimage.sum(mask, lab, idx)
    pmax = ndimage.maximum(np.where(mask, prob, 0), lab, idx)
    kept = size >= mmu_px
    if keep_thr is not None:
        kept &= pmax >= keep_thr
    keep_lab = np.zeros(n + 1, bool)
    keep_lab[1:] = kept
    kmask = keep_lab[lab]
    tlab = merge_labels(lab, keep_lab, merge_px)
    near = ndimage.binary_dilation(sc.plot_ids > 0, structure=np.ones((3, 3), bool))
    n_t = len(np.unique(tlab[tlab > 0]))
    n_c = len(np.unique(tlab[(tlab > 0) & near]))
    found = np.unique(sc.plot_ids[kmask])
    found = found[found > 0] - 1
    big = sc.plot_px >= min_plot_px
    rec = float(np.isin(np.flatnonzero(big), found).mean()) if big.any() else float("nan")
    return {"targets": n_t, "correct": n_c, "recall": rec,
            "precision": n_c / n_t if n_t else float("nan"), "plots": int(big.sum())}
