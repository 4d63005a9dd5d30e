"""One benchmark measurement, run in its own process so its peak memory is its own.

    python bench/measure.py KIND --scene DIR --model DIR --out DIR [--scheduler S]

KIND is one of:
  io       the I/O floor: read and decode every input pixel once (rasterio, block by block,
           two threads), nothing else;
  predict  the predict floor: the model's predict_proba (+ calibration) on feature matrices
           already in memory, tile by tile, two OpenMP threads; features are computed first,
           untimed;
  detect   poppyscan's detect end to end (the engine; per-stage timings from report.json);
  naive    a naive in-memory script: plain rasterio reads of every file into one array, masks,
           the same features and model (two OpenMP threads) on the whole scene at once,
           probability.tif written in one piece.

Prints one JSON line: {"kind", "seconds", "peak_rss_mb", ...}.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM) and of its largest child (local:N workers).

    Not RUSAGE_SELF: Linux keeps ru_maxrss across fork and exec, so a measurement started by a
    bench process that had simulated a scene reported that process's peak (1.6 GB for an I/O
    floor). VmHWM belongs to this process's own address space."""
    own = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024.0, 1)


def images_of(scene: Path) -> list[Path]:
    return sorted(Path(scene).glob("S2_*.tif"))


def run_io(scene: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import rasterio

    def read_file(path: Path) -> int:
        n = 0
        with rasterio.open(path) as src:
            for _, win in src.block_windows(1):
                a = src.read(window=win)
                n += int(a.size)
                np.asarray(a)
        return n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        values = sum(pool.map(read_file, images_of(scene)))
    return {"seconds": time.perf_counter() - t0, "values": values}


def _tiles(H: int, W: int, cs: int):
    return [(slice(y, min(y + cs, H)), slice(x, min(x + cs, W)))
            for y in range(0, H, cs) for x in range(0, W, cs)]


def run_predict(scene: Path, model: Path, sample: int) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from classifiers import artifact
    from classifiers.model import apply_platt
    from classifiers.predict import scorer
    from indices.window import block_features, make_plan
    from pipeline.config import load_calendar, load_config
    from pipeline.survey import masks, prepare_scene

    cfg = load_config()
    art = artifact.load(model)
    sc, _ = prepare_scene(images_of(scene), cfg, dem=None)
    plan = make_plan(masks(sc.isel(y=slice(0, 1), x=slice(0, 1)), cfg),
                     load_calendar(cfg.calendar), cfg.features)
    H, W = sc.sizes["y"], sc.sizes["x"]
    tiles = _tiles(H, W, cfg.run.chunk_size)
    step = max(1, len(tiles) // sample) if sample else 1
    chosen = tiles[::step]
    n = len(plan.names)
    seconds, rows, binned = 0.0, 0, 0.0
    for ys, xs in chosen:
        m = masks(sc[:, :, ys, xs].compute(scheduler="sync").chunk({"y": -1, "x": -1}), cfg)
        feats = block_features(m.compute(scheduler="sync"), plan)[:n]
        X = np.ascontiguousarray(feats.reshape(n, -1).T)
        X = X[~np.all(np.isnan(X), axis=1)]
        with threadpool_limits(2, user_api="openmp"):
            t0 = time.perf_counter()
            raw = art.estimator.predict_proba(X)[:, 1]
            apply_platt(raw, art.meta["calibration"]["a"], art.meta["calibration"]["b"])
            seconds += time.perf_counter() - t0
        # detect's own exact predictor (classifiers/predict.py), one thread as in a tile
        fast = scorer(art.estimator)
        with threadpool_limits(1, user_api="openmp"):
            t0 = time.perf_counter()
            fast(np.ascontiguousarray(X.T))
            binned += time.perf_counter() - t0
        rows += len(X)
        del X, feats
    per_px = seconds / max(rows, 1)
    # scale a sample of tiles to the whole scene by pixel count (predict is linear in rows)
    scale = (H * W) / sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in chosen)
    return {"seconds": seconds * scale, "measured_seconds": seconds, "rows": rows,
            "binned_seconds_1thread": binned * scale,
            "tiles_measured": len(chosen), "tiles": len(tiles), "us_per_row": per_px * 1e6,
            "features": n}


def run_detect(scene: Path, model: Path, out: Path, scheduler: str) -> dict:
    from pipeline.config import load_config, with_overrides
    from pipeline.survey import detect
    cfg = with_overrides(load_config(), **{"run.scheduler": scheduler})
    t0 = time.perf_counter()
    res = detect(images_of(scene), model, out, cfg, formats=["geojson"])
    return {"seconds": time.perf_counter() - t0, "stages": res.report["timings_s"],
            "targets": res.n_targets, "tiles": res.report["tiles"],
            "tiles_resumed": res.report["tiles_resumed"]}


def run_naive(scene: Path, model: Path, out: Path) -> dict:
    """Everything in memory at once: the way a one-off script would do it."""
    import numpy as np
    import rasterio
    import xarray as xr
    from threadpoolctl import threadpool_limits

    from classifiers import artifact
    from classifiers.model import apply_platt
    from indices.window import block_features, make_plan
    from pipeline.config import load_calendar, load_config
    from pipeline.readers.multiband import CATEGORICAL_BANDS, band_names
    from pipeline.survey import masks, prepare_scene

    t0 = time.perf_counter()
    cfg = load_config()
    art = artifact.load(model)
    lazy, _ = prepare_scene(images_of(scene), cfg, dem=None)   # coordinates only
    order = [str(b) for b in lazy["band"].values]
    arrays = []
    for path in images_of(scene):
        with rasterio.open(path) as src:
            raw = src.read()
            names = band_names(path, src.descriptions, None)
            data = raw.astype("float32")
            if src.nodata is not None:
                data[raw == src.nodata] = np.nan
            for i, name in enumerate(names):
                if name not in CATEGORICAL_BANDS:
                    data[i] = data[i] * np.float32(src.scales[i]) + np.float32(src.offsets[i])
            arrays.append(data[[names.index(b) for b in order]])
            del raw, data
    cube = np.stack(arrays)
    del arrays
    full = xr.DataArray(cube, dims=lazy.dims, coords=lazy.coords, attrs=lazy.attrs)
    full = full.rio.write_crs(lazy.rio.crs).rio.write_transform(lazy.rio.transform())
    m = masks(full.chunk({"y": -1, "x": -1}), cfg).compute(scheduler="sync")
    del full, cube
    plan = make_plan(m.isel(y=slice(0, 1), x=slice(0, 1)), load_calendar(cfg.calendar),
                     cfg.features)
    n = len(plan.names)
    allf = block_features(m, plan)
    feats = allf[:n]
    # no clear flowering observation: no probability (blind), as detect does, unless a model
    # trained without the flowering phase scores those pixels
    scores_blind = any("flowering" in r.missing for r in art.reduced)
    blind = allf[n + plan.phases.index("flowering")] == 0 \
        if "flowering" in plan.phases and not scores_blind else np.zeros(feats.shape[1:], bool)
    del m
    H, W = feats.shape[1:]
    X = feats.reshape(n, -1).T
    valid = ~np.all(np.isnan(X), axis=1)
    prob = np.full(H * W, np.nan, dtype="float32")
    # each pixel without a clear image in some phases: that phase set's missing-phase model
    gone = {p: (allf[n + i] == 0).ravel() for i, p in enumerate(plan.phases)}
    which = np.zeros(H * W, dtype="int8")
    for k, r in enumerate(art.reduced, start=1):
        which[valid & np.logical_and.reduce(
            [g if p in r.missing else ~g for p, g in gone.items()])] = k
    with threadpool_limits(2, user_api="openmp"):      # n_jobs=2
        main = valid & (which == 0)
        raw_p = art.estimator.predict_proba(X[main])[:, 1]
        prob[main] = apply_platt(raw_p, art.meta["calibration"]["a"],
                                 art.meta["calibration"]["b"])
        for k, r in enumerate(art.reduced, start=1):
            sel = which == k
            if sel.any():
                raw_p = r.estimator.predict_proba(X[sel][:, list(r.columns)])[:, 1]
                prob[sel] = apply_platt(raw_p, r.a, r.b)
    prob[blind.ravel()] = np.nan
    out.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out / "probability.tif", "w", driver="GTiff", height=H, width=W,
                       count=1, dtype="float32", crs=lazy.rio.crs,
                       transform=lazy.rio.transform(), nodata=np.nan,
                       compress="deflate") as dst:
        dst.write(prob.reshape(H, W), 1)
    return {"seconds": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("io", "predict", "detect", "naive"))
    p.add_argument("--scene", type=Path, required=True)
    p.add_argument("--model", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--scheduler", default="threads")
    p.add_argument("--predict-sample", type=int, default=0,
                   help="time predict on about this many tiles (0: all)")
    p.add_argument("--limit-gb", type=float, default=0.0,
                   help="cap this process's address space (RLIMIT_AS), GB")
    a = p.parse_args()
    if a.limit_gb:
        lim = int(a.limit_gb * 1024 ** 3)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    import logging
    logging.basicConfig(level=logging.ERROR)
    try:
        if a.kind == "io":
            res = run_io(a.scene)
        elif a.kind == "predict":
            res = run_predict(a.scene, a.model, a.predict_sample)
        elif a.kind == "detect":
            res = run_detect(a.scene, a.model, a.out, a.scheduler)
        else:
            res = run_naive(a.scene, a.model, a.out)
    except MemoryError:
        res = {"seconds": None, "error": "MemoryError"}
    res.update(kind=a.kind, peak_rss_mb=peak_rss_mb())
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
