"""Fast ranking harness on the independent simulator: features cached once, models in-process.

`bench/cross_sim.py` runs the real CLI (train with cross-validation, calibration, threshold;
detect in tiles) and takes minutes per training scene. Questions about the *ranking* (which
features, which model, which training scenes) need none of that: this script computes each
scene's window features and training table once (the pipeline's own functions and default
config; cached under --cache), fits the default estimator in-process on one or several
training scenes and prints, per survey scene, the best plot recall at target precision
>= 0.7 over probability quantiles (plots >= 4 px, 2 px unit, 10 m merge: the figure
cross_sim prints as "best recall at precision >= 0.7"; the main model on every pixel, without
the missing-phase models detect adds). About 15 s for two training scenes
and ten surveys; figures differ from cross_sim's by run-to-run noise of about +-0.02 (no
calibration, whole-scene features instead of tiles), so compare settings within this script.

    python bench/indsim_ranking.py                    # train 101 and 105, each alone
    python bench/indsim_ranking.py --train 101 105 --together
    python bench/indsim_ranking.py --drop 'dev_r4|\\.min\\.|\\.max\\.'

Like every simulated figure, the results are not evidence about real fields.
"""
from __future__ import annotations

import argparse
import pickle
import re
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cross_sim import _Truth, scene
from bench.scenes_cache import score_map
from classifiers.labels import read_labels
from classifiers.model import fit_balanced, make_estimator
from classifiers.sampling import join, sample, sample_background
from indices.window import Features, window_features
from pipeline.config import load_calendar, load_config
from pipeline.survey import calendar_shift, mask_and_correct, prepare_scene

#: probability quantiles scanned for the best recall at precision >= 0.7 (flagged shares
#: from 15 % down to 0.05 %)
QUANTILES = np.concatenate([np.linspace(0.85, 0.99, 57), np.linspace(0.9905, 0.9995, 19)])


def cached(root: Path, cache: Path, seed: int) -> dict:
    """Features (feature, y, x) and the training table of scene ``seed`` (default config)."""
    f = cache / f"s{seed}.pkl"
    if f.is_file():
        return pickle.loads(f.read_bytes())
    cfg = load_config()
    d = scene(root, seed, drone=False)
    sc, dem = prepare_scene(sorted(d.glob("L2A_*.tif")), cfg, dem=d / "dem.tif")
    calendar = load_calendar(cfg.calendar)
    labels = read_labels(d / "labels.geojson", sc.rio.crs, require_both=True,
                         background_drawn=True)
    feats = window_features(mask_and_correct(sc, dem, cfg), calendar, cfg.features,
                            calendar_shift(calendar, dem))
    feats = Features(feats.data.persist(), feats.evidence, feats.phase_dates)
    m = cfg.model
    table = join((sample(feats, labels, erode_m=m.erode_m, max_pixels=m.max_pixels_per_polygon,
                         seed=m.seed, require_both=False), labels),
                 sample_background(feats, labels, n_pixels=m.background_sample_px,
                                   buffer_m=m.background_buffer_m, seed=m.seed))[0]
    out = {"F": feats.data.values.astype("float32"), "names": list(map(str, feats.names)),
           "transform": feats.data.rio.transform(), "crs": feats.data.rio.crs,
           "X": table.X, "y": table.y, "truth": d / "truth.geojson"}
    cache.mkdir(parents=True, exist_ok=True)
    f.write_bytes(pickle.dumps(out, protocol=4))
    return out


def best_recall(prob: np.ndarray, sc: dict) -> float:
    truth = _Truth(prob, sc["transform"], sc["crs"], sc["truth"])
    best = 0.0
    for t in np.quantile(prob[np.isfinite(prob)], QUANTILES):
        c = score_map(prob, t, truth, mmu_px=2, min_plot_px=4, merge_px=1)
        if c["precision"] >= 0.7:
            best = max(best, c["recall"])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, nargs="+", default=[101, 105])
    ap.add_argument("--together", action="store_true",
                    help="one model on all --train scenes (else one model per scene)")
    ap.add_argument("--survey", type=int, nargs="+", default=[101, 102, 103, 104, 105, 106])
    ap.add_argument("--drop", help="regular expression: leave out the features it matches")
    ap.add_argument("--scenes", type=Path, default=Path("/tmp/poppyscan-indsim"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/poppyscan-indsim-ranking"))
    a = ap.parse_args()
    model_cfg = load_config().model
    groups = [a.train] if a.together else [[t] for t in a.train]
    means = []
    for group in groups:
        scenes = [cached(a.scenes, a.cache, t) for t in group]
        names = scenes[0]["names"]
        cols = [i for i, n in enumerate(names) if not (a.drop and re.search(a.drop, n))]
        X = np.vstack([s["X"][:, cols] for s in scenes])
        y = np.concatenate([s["y"] for s in scenes])
        est = make_estimator(model_cfg)
        with threadpool_limits(1, user_api="openmp"):
            fit_balanced(est, X, y, model_cfg.seed)
        found = []
        for s in (s for s in a.survey if s not in group):
            sc = cached(a.scenes, a.cache, s)
            F = sc["F"][cols]
            prob = est.predict_proba(F.reshape(len(cols), -1).T)[:, 1]
            prob = prob.reshape(F.shape[1:]).astype("float32")
            prob[np.isnan(F).all(0)] = np.nan
            found.append((s, best_recall(prob, sc)))
        mean = float(np.mean([r for _, r in found]))
        means.append(mean)
        print(f"train {'+'.join(map(str, group))} ({len(cols)} features): "
              + " ".join(f"{s}: {r:.2f}" for s, r in found) + f"; mean {mean:.3f}", flush=True)
    if len(means) > 1:
        print(f"mean over training runs: {np.mean(means):.3f}")


if __name__ == "__main__":
    main()
