"""Validation that cannot leak: folds grouped by spatial block, never by pixel.

With several training scenes that each hold poppy and background polygons, the folds hold
out whole scenes instead: the threshold is then chosen on scenes the fold's model did not see,
as detect meets them. Otherwise (one scene):
every polygon belongs to the square block (``cv_block_m`` metres, on a grid in degrees too)
that holds its centroid; all pixels of a polygon, and all polygons of a block, fall in the
same fold. Metrics are computed on the out-of-fold probabilities: per-class precision,
recall and F1 and the confusion matrix (pixels), polygon-level recall and precision (a
labelled polygon is flagged when any of its sampled pixels reaches the threshold: the same
peak rule detect applies to patches), the flagged share per background class, and the
threshold that reaches the configured target recall of the poppy polygons of at least
``min_plot_px`` pixels (sub-pixel plots are not required to be found).
No kappa (Pontius & Millones 2011).
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.stats.mstats import hdquantiles
from sklearn.base import clone
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedGroupKFold

from classifiers.labels import Labels
from classifiers.model import apply_platt, fit_balanced, fit_platt, logit
from classifiers.sampling import Table
from pipeline.errors import InputError

log = logging.getLogger(__name__)


def spatial_groups(table: Table, labels: Labels, block_m: float,
                   scene_of_polygon: np.ndarray | None = None,
                   unit_m: np.ndarray | None = None,
                   grid_origin: np.ndarray | None = None,
                   offset: float = 0.0) -> np.ndarray:
    """Per pixel of ``table``, the square block of ``block_m`` metres that holds its
    polygon's centroid (and the polygon's scene). ``unit_m`` (n_polygons, 2): metres per CRS
    unit along x and y of each polygon's scene (``Grid.metres_per_unit``); None: the labels'
    CRS unit is the metre. ``grid_origin`` (n_polygons, 2): the corner of each polygon's
    scene grid, in its CRS, where the blocks start: the same scene on another grid origin
    (moved 250 m, or in another UTM zone) gets the same folds, so the same model and
    threshold (blocks from the CRS's own origin reshuffled the folds: threshold 0.82 or 0.87,
    54 or 15 targets, for the same pixels and labels)."""
    cent = np.array([[g.centroid.x, g.centroid.y] for g in labels.geometries])
    if grid_origin is not None:
        cent = (cent - grid_origin) * [1.0, -1.0]       # from the top-left corner, south-east
    if unit_m is not None:
        cent = cent * unit_m
    blk = np.floor(cent / block_m + offset).astype("int64")   # offset: blocks moved by a share
    keys = blk[:, 0] * 1_000_003 + blk[:, 1]
    if scene_of_polygon is not None:
        keys = keys * 101 + scene_of_polygon
    return keys[table.polygon]


def _splits(table: Table, groups: np.ndarray, n_folds: int, seed: int):
    """Folds over ``groups``, or None when some fold's training part would lack a class (a
    test fold may hold one class only: its scores still count out of fold)."""
    k = min(n_folds, len(np.unique(groups[table.y == 1])), len(np.unique(groups[table.y == 0])))
    if k < 2:
        return None
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = list(cv.split(table.X, table.y, groups))
    for train, test in splits:
        if len(np.unique(table.y[train])) < 2:
            return None
    return splits


def repeat_seed(seed: int, r: int) -> int:
    """The fold shuffle (and balancing draw) of repeat ``r`` under training seed ``seed``.
    Training seeds 0-4 with up to 1000 repeats never share a shuffle, so a spread measured over
    training seeds is the spread of independent validations (``seed + r`` made seeds 0 and 1
    share two of their three shuffles); seed 0 keeps the shuffles 0, 1, 2, ... it always had."""
    return seed * 1000 + r


def out_of_fold(estimator, table: Table, groups: np.ndarray | list[np.ndarray], n_folds: int,
                seed: int, repeats: int = 1, group_name: str = "spatial blocks",
                polygon_origin: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Out-of-fold scores, averaged over ``repeats`` differently shuffled group folds (each
    pixel is scored ``repeats`` times, always by models that did not see its group): the
    threshold then depends less on which blocks happened to share a fold.

    ``polygon_origin`` (per polygon: the polygon it copies, else itself) keeps an augmented
    copy in its original's fold when the folds fall back to grouping by polygon (spatial
    blocks already hold both: same place), so no fold model has seen a copy of what it
    scores."""
    total = np.zeros(len(table.y))
    count = np.zeros(len(table.y))
    by_polygon = table.polygon.astype("int64") if polygon_origin is None else \
        polygon_origin[table.polygon].astype("int64")
    per_repeat = groups if isinstance(groups, list) else [groups]
    for r in range(repeats):
        splits = _splits(table, per_repeat[r % len(per_repeat)], n_folds, repeat_seed(seed, r))
        how = group_name
        if splits is None:
            if r == 0:
                log.warning("labelled polygons are too few or too clustered for folds by %s: "
                            "folds fall back to grouping by polygon", group_name)
            splits = _splits(table, by_polygon, n_folds, repeat_seed(seed, r))
            how = "polygons"
        if splits is None:
            raise InputError("too few labelled polygons for honest validation: give at least "
                             "2 poppy and 2 background polygons")
        for train, test in splits:
            est = fit_balanced(clone(estimator), table.X[train], table.y[train],
                               repeat_seed(seed, r))
            total[test] += est.predict_proba(table.X[test])[:, 1]
            count[test] += 1
    with np.errstate(invalid="ignore"):
        oof = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if repeats > 1:
        how += f", {repeats} repeats"
    return oof, how


def polygon_scores(prob: np.ndarray, table: Table) -> dict[int, float]:
    """Each polygon's highest finite score (the peak rule detect applies to patches)."""
    ok = np.isfinite(prob)
    pids, inv = np.unique(table.polygon[ok], return_inverse=True)
    peak = np.full(len(pids), -np.inf)
    np.maximum.at(peak, inv, prob[ok])
    return {int(p): float(v) for p, v in zip(pids, peak)}


def harrell_davis(x: np.ndarray, q: float) -> float:
    """The Harrell-Davis estimate of the ``q`` quantile of ``x``: a Beta-weighted mean of all
    order statistics (Harrell & Davis 1982, Biometrika 69:635), where the sample quantile is
    one of them. From 25-30 plots, the 5 % quantile is the lowest or second-lowest peak, so
    one hard plot set the threshold and it moved by 0.1 between training seeds. SciPy's
    ``hdquantiles``; one value is its own estimate (SciPy masks it)."""
    xs = np.asarray(x, dtype="float64")
    if xs.size == 1:
        return float(xs[0])
    return float(hdquantiles(xs, prob=[q])[0])


def threshold_for_recall(poly_max: dict[int, float], labels: Labels,
                         target_recall: float, counted: set[int] | None = None) -> float:
    """The threshold that flags ``target_recall`` of the poppy polygons by their peaks (at
    least 0.01; the upper limit is the caller's ``max_threshold``).

    The ``1 - target_recall`` quantile of the peaks, estimated on the logit scale with
    :func:`harrell_davis` rather than read off one order statistic, and never above the
    highest threshold that still flags ``target_recall`` of them: the training plots reach the
    target out of fold, and the threshold no longer rests on the one or two hardest plots.
    Peaks far below the rest are raised to Tukey's outer fence first, so one hopeless plot
    cannot drag the threshold towards 0.

    ``counted``: the poppy polygons that count (default all); the others are ignored."""
    pos = np.sort([s for pid, s in poly_max.items() if labels.is_target[pid]
                   and (counted is None or pid in counted) and np.isfinite(s)])[::-1]
    if pos.size == 0:
        return 0.5
    k = int(np.ceil(target_recall * pos.size)) - 1
    order = float(pos[min(k, pos.size - 1)])
    lg = logit(pos)
    # a hopeless plot (peak ~0: mislabelled, or never seen in bloom) weighs half of the
    # estimate: peaks "far out" below the rest (Tukey's fence, Q1 - 3 IQR) count at the fence
    q1, q3 = np.percentile(lg, [25, 75])
    lg = np.maximum(lg, q1 - 3.0 * (q3 - q1))
    smooth = 1.0 / (1.0 + np.exp(-harrell_davis(lg, 1.0 - target_recall)))
    return float(max(min(smooth, order), 0.01))


def outlying_plots(poly_max: dict[int, float], labels: Labels,
                   counted: set[int] | None = None) -> list[dict]:
    """The counted poppy polygons whose peak lies below Tukey's outer fence (Q1 - 3 IQR of the
    peaks' logits) and below 0.5 (out of fold, more likely background than poppy: with most
    peaks tied near 1 the fence is Q1 itself, and 0.95 among 0.999s is no mislabelled plot),
    lowest first, with their centroids: what :func:`threshold_for_recall` must still flag.
    From 8 polygons on (fewer give no quartiles to judge by)."""
    pos = [(pid, s) for pid, s in poly_max.items() if labels.is_target[pid]
           and (counted is None or pid in counted) and np.isfinite(s)]
    if len(pos) < 8:
        return []
    lg = logit(np.array([s for _, s in pos]))
    q1, q3 = np.percentile(lg, [25, 75])
    fence = min(q1 - 3.0 * (q3 - q1), 0.0)
    out = []
    for (pid, peak), v in sorted(zip(pos, lg), key=lambda t: t[0][1]):
        if v < fence:
            c = labels.geometries[pid].centroid
            out.append({"polygon": int(pid), "peak": round(float(peak), 4),
                        "x": round(float(c.x), 3), "y": round(float(c.y), 3)})
    return out


def big_polygons(labels: Labels, pixel_m: float | np.ndarray, min_px: float) -> set[int]:
    """Indices of polygons of at least ``min_px`` pixels of ``pixel_m`` side (one value, or
    one per polygon: its scene's)."""
    px = np.broadcast_to(np.asarray(pixel_m, dtype="float64") ** 2, (len(labels.geometries),))
    return {i for i, g in enumerate(labels.geometries) if g.area / px[i] >= min_px - 1e-9}


def validate(estimator, table: Table, labels: Labels, *, n_folds: int, block_m: float,
             target_recall: float, seed: int, min_plot_px: float = 0.0, repeats: int = 1,
             scene_of_polygon: np.ndarray | None = None,
             hold_out_scenes: bool = True, max_threshold: float = 0.99,
             min_threshold: float = 0.01, threshold: float | None = None,
             polygon_origin: np.ndarray | None = None,
             unit_m: np.ndarray | None = None,
             pixel_m: np.ndarray | None = None,
             grid_origin: np.ndarray | None = None) -> dict:
    """Out-of-fold metrics and the threshold that flags ``target_recall`` of the poppy
    polygons of at least ``min_plot_px`` pixels (smaller plots are not required to be found:
    counting sub-pixel gardens would pull the threshold down to where noise passes), at most
    ``max_threshold`` and at least ``min_threshold``; or, given, ``threshold`` (the figures
    are then those at it, and the recall rule's own value is still reported).

    Augmented copies (``polygon_origin``: per polygon, the polygon it copies, else itself)
    stay in their original's fold and are scored like it, out of fold: the calibration and
    the threshold see the scene as other flights' gains and blur would show it (scoring the
    originals alone moved the calibration so that a drone model at its threshold flagged
    more: precision 0.62 -> 0.57 on the independent simulator, docs/drone.md). The polygon
    figures count each copy as a polygon; the report says how many are copies.

    ``unit_m``, ``grid_origin``: metres per CRS unit and grid corner of each polygon's scene,
    for blocks of ``block_m`` metres from the scene's corner (:func:`spatial_groups`; each
    repeat of the folds on blocks moved by 1/``repeats`` of a block); ``pixel_m``: each
    polygon's scene's pixel side (``Table.pixel_m``), so that several scenes of other pixel
    sizes or CRSs count their plots of ``min_plot_px`` each in its own pixels (default: the
    table's one value)."""
    # each repeat of the folds on blocks moved by 1/repeats of a block along x and y: the
    # out-of-fold scores average over block placements as over fold shuffles
    groups = [spatial_groups(table, labels, block_m, scene_of_polygon, unit_m, grid_origin,
                             offset=r / max(repeats, 1)) for r in range(max(repeats, 1))]
    name = "spatial blocks"
    if hold_out_scenes and scene_of_polygon is not None and \
            len(np.unique(scene_of_polygon[labels.is_target])) >= 2 and \
            len(np.unique(scene_of_polygon[~labels.is_target])) >= 2:
        # Several scenes: hold out whole scenes, so the threshold is chosen on scenes the
        # fold's model did not see (other season, terrain, calibration), as detect meets them.
        # Blocks of the training scenes gave thresholds too high for other scenes
        # (docs/classifier.md, "Scene shift"). The folds are fixed, so one repeat.
        groups = [scene_of_polygon[table.polygon].astype("int64")]
        name, repeats = "scenes (each scene held out whole)", 1
    raw, grouped_by = out_of_fold(estimator, table, groups, n_folds, seed, repeats, name,
                                  polygon_origin)
    ok = np.isfinite(raw)
    a, b = fit_platt(raw[ok], table.y[ok])
    prob = np.full_like(raw, np.nan)
    prob[ok] = apply_platt(raw[ok], a, b)
    poly_max = polygon_scores(prob, table)
    counted = big_polygons(labels, table.pixel_m if pixel_m is None else pixel_m, min_plot_px)
    if min_plot_px > 0 and not any(labels.is_target[i] for i in counted if i in poly_max):
        # only small plots: the rule counts them all rather than fall back to a fixed value
        say = log.warning if threshold is None else log.debug   # once, not per sub-model
        say("no labelled poppy plot of at least %g px has clear pixels: the threshold is set "
            "to find %g of all %d poppy polygons, sub-pixel ones included", min_plot_px,
            target_recall, sum(bool(labels.is_target[i]) for i in poly_max))
        counted, min_plot_px = set(range(len(labels.geometries))), 0.0
    thr_recall = threshold_for_recall(poly_max, labels, target_recall, counted)
    outliers = outlying_plots(poly_max, labels, counted)
    if outliers and threshold is None:
        median = float(np.median([v for pid, v in poly_max.items()
                                  if labels.is_target[pid] and pid in counted]))
        log.warning("out of fold %d labelled poppy polygon(s) score far below the others "
                    "(peak %s against a median of %.2f; centroid %s in the labels' CRS): "
                    "mislabelled, or never clear in bloom? The threshold must flag them too, "
                    "which lowers it for every pixel; check those labels",
                    len(outliers), ", ".join(f"{o['peak']:.2f}" for o in outliers[:3]), median,
                    ", ".join(f"({o['x']:.1f}, {o['y']:.1f})" for o in outliers[:3]))
    thr = min(max(thr_recall, min_threshold), max_threshold) if threshold is None else threshold
    pred = (prob[ok] >= thr).astype(int)
    truth = table.y[ok]
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=[0, 1], zero_division=0)
    cm = confusion_matrix(truth, pred, labels=[0, 1])
    flagged = {pid for pid, v in poly_max.items() if v >= thr}
    pos_polys = {pid for pid in poly_max if labels.is_target[pid]}
    poly_recall = len(flagged & pos_polys) / max(len(pos_polys), 1)
    poly_precision = len(flagged & pos_polys) / max(len(flagged), 1)
    big_pos = pos_polys & counted
    big_recall = len(flagged & big_pos) / max(len(big_pos), 1)
    per_class: dict[str, dict] = {}
    for cls in sorted(set(labels.classes)):
        pids = [pid for pid in poly_max if labels.classes[pid] == cls]
        if not pids:
            continue
        n_flag = sum(1 for pid in pids if pid in flagged)
        per_class[cls] = {"polygons": len(pids), "flagged": n_flag,
                          "flagged_share": round(n_flag / len(pids), 4)}
    return {
        "folds": f"StratifiedGroupKFold grouped by {grouped_by} (never by pixel)",
        "block_m": block_m,
        "threshold": thr,
        "target_recall": target_recall,
        # the recall rule's threshold before the limits (model.threshold_min / _max)
        "threshold_recall_rule": thr_recall,
        "calibration": {"method": "platt", "a": a, "b": b},
        "pixel": {
            "classes": ["other", "poppy"],
            "precision": [round(float(x), 4) for x in p],
            "recall": [round(float(x), 4) for x in r],
            "f1": [round(float(x), 4) for x in f],
            "support": [int(x) for x in s],
            "confusion_matrix": cm.tolist(),
        },
        "min_plot_px": min_plot_px,
        "polygon": {"recall": round(poly_recall, 4), "precision": round(poly_precision, 4),
                    "poppy_polygons": len(pos_polys), "flagged": len(flagged),
                    "recall_min_plot": round(big_recall, 4),
                    "poppy_polygons_min_plot": len(big_pos)},
        "per_class_flagged": per_class,
        # poppy polygons whose out-of-fold peak lies far below the others' (Tukey's outer
        # fence on the logit scale): likely mislabelled, or not seen in bloom
        "outlying_poppy_polygons": outliers,
    }


def text_table(report: dict) -> str:
    px = report["pixel"]
    lines = [f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for i, c in enumerate(px["classes"]):
        lines.append(f"{c:<10}{px['precision'][i]:>10.3f}{px['recall'][i]:>10.3f}"
                     f"{px['f1'][i]:>10.3f}{px['support'][i]:>10d}")
    cm = px["confusion_matrix"]
    lines.append(f"confusion (rows truth other/poppy, cols predicted): {cm}")
    pg = report["polygon"]
    copies = report.get("samples", {}).get("augmented_copies", 0)
    lines.append(f"polygons: recall {pg['recall']:.3f}, precision {pg['precision']:.3f} "
                 f"({pg['poppy_polygons']} poppy polygons"
                 + (f", each labelled one with its {copies} augmented copies)" if copies
                    else ")"))
    if "recall_min_plot" in pg:
        lines.append(f"poppy polygons >= {report['min_plot_px']:g} px: recall "
                     f"{pg['recall_min_plot']:.3f} ({pg['poppy_polygons_min_plot']} polygons)")
    lines.append(f"threshold for recall >= {report['target_recall']} (polygons >= "
                 f"{report.get('min_plot_px', 0):g} px): {report['threshold']:.3f}")
    rule = report.get("threshold_recall_rule", report["threshold"])
    if rule > report["threshold"]:
        lines.append(f"  (the recall rule gave {rule:.3f}; capped by model.threshold_max)")
    elif rule < report["threshold"]:
        lines.append(f"  (the recall rule gave {rule:.3f}; raised to model.threshold_min)")
    fl = report["per_class_flagged"]
    if fl:
        lines.append("flagged share of labelled polygons per class: " + ", ".join(
            f"{k} {v['flagged_share']:.2f}" for k, v in fl.items()))
    for m in report.get("missing_phase_models", []):
        lines.append(f"model without {' and '.join(m['missing'])} (pixels without a clear "
                     f"image there): {m['n_features']} features, polygons >= "
                     f"{report.get('min_plot_px', 0):g} px recall "
                     f"{m['polygon_recall_min_plot']:.3f} out of fold at the threshold")
    return "\n".join(lines)
