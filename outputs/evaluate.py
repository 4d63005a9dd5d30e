"""The matching rule shared by the demo, the tests and the acceptance checks.

A truth plot is found when a target polygon intersects it. A target is correct when it lies
within one pixel (10 m for Sentinel-2, 0.5 m for drone) of a truth plot. Recall counts plots;
precision counts targets. Both files are GeoJSON in WGS84; distances are measured in the UTM
zone of the truth plots' centroid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS

from classifiers.labels import read_polygons
from pipeline.grid import utm_epsg


@dataclass(frozen=True)
class Match:
    plots: int
    found: int
    targets: int
    correct: int

    @property
    def recall(self) -> float:
        return self.found / self.plots if self.plots else float("nan")

    @property
    def precision(self) -> float:
        return self.correct / self.targets if self.targets else float("nan")

    @property
    def f1(self) -> float:
        r, p = self.recall, self.precision
        return 2 * r * p / (r + p) if r + p > 0 else 0.0


def match(targets: list, plots: list, pixel_m: float) -> Match:
    """``targets`` and ``plots``: shapely polygons in one projected CRS (metres)."""
    if not plots:
        return Match(0, 0, len(targets), 0)
    tree = shapely.STRtree(plots)
    found = np.zeros(len(plots), bool)
    correct = 0
    for t in targets:
        hit = tree.query(t, predicate="intersects")
        found[hit] = True
        near = tree.query(t, predicate="dwithin", distance=pixel_m)
        correct += bool(len(near))
    return Match(len(plots), int(found.sum()), len(targets), correct)


def read_pair(targets_path: Path, truth_path: Path) -> tuple[list, list]:
    """(targets, truth plots) as polygons in the UTM zone of the plots' centroid; no targets
    when the file is missing or empty."""
    truth_wgs, _ = read_polygons(truth_path, "EPSG:4326", what="truth file")
    c = shapely.union_all(truth_wgs).centroid
    crs = CRS.from_epsg(utm_epsg(c.x, c.y))
    plots, _ = read_polygons(truth_path, crs, what="truth file")
    tgts: list = []
    if Path(targets_path).is_file() and json.loads(Path(targets_path).read_text())["features"]:
        tgts, _ = read_polygons(targets_path, crs, what="targets file")
    return tgts, plots


def match_files(targets_path: Path, truth_path: Path, pixel_m: float,
                min_plot_m2: float = 0.0) -> Match:
    tgts, plots = read_pair(targets_path, truth_path)
    if min_plot_m2 > 0:
        # small plots are not required to be found, but a target on one is still correct
        big = [p for p in plots if p.area >= min_plot_m2]
        m_all = match(tgts, plots, pixel_m)
        m_big = match(tgts, big, pixel_m)
        return Match(m_big.plots, m_big.found, m_all.targets, m_all.correct)
    return match(tgts, plots, pixel_m)


