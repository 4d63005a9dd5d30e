"""A tiny, deliberately simple scene factory for unit tests of the pipeline stages.

Not the simulator (pipeline/simulate.py is the realistic test instrument): this writes a few
dates of a small grid with square fields and poppy plots whose flowering brightening is
obvious, so stage tests are fast and their expectations are clear.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from pyproj import Transformer
from shapely.geometry import box, mapping

from pipeline.geotiff import write_multiband

S2_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
            "B12", "SCL"]
CRS = "EPSG:32650"
DATES = ["2024-03-15", "2024-04-12", "2024-04-28", "2024-05-12", "2024-06-05"]
#             B01  B02  B03  B04  B05  B06  B07  B08  B8A  B09  B11  B12
GREEN = np.array([.03, .04, .08, .04, .12, .30, .38, .42, .44, .40, .22, .11])
SOIL = np.array([.10, .12, .15, .19, .22, .24, .26, .28, .29, .28, .33, .27])
FLOWER = np.array([.12, .16, .19, .17, .22, .33, .40, .44, .45, .42, .24, .13])


@dataclass(frozen=True)
class TinyScene:
    images: list[Path]
    labels: Path
    truth: Path
    folder: Path
    transform: Affine


def _geojson(path: Path, feats: list[dict]) -> None:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def make_tiny_scene(folder: Path, *, seed: int = 0, size: int = 64, dates=DATES,
                    cloud_date: int | None = None, x0: float = 500000.0,
                    plots: list[tuple[int, int, int]] | None = None) -> TinyScene:
    """``plots``: (row, col, side in px) of poppy plots; default three plots."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tf = Affine(10, 0, x0, 0, -10, 3340000.0)
    plots = plots if plots is not None else [(8, 8, 3), (30, 40, 2), (50, 20, 4)]
    kind = np.zeros((size, size), int)            # 0 wheat, 1 soil, 2 poppy
    kind[:, size // 2:] = 1
    kind[size // 2:, :] = np.where(np.arange(size) < size // 4, 1, kind[size // 2:, :])
    for r, c, s in plots:
        kind[r:r + s, c:c + s] = 2
    images = []
    for k, d in enumerate(dates):
        month = int(d[5:7])
        flowering = d[5:] >= "04-01" and d[5:] <= "05-20"
        post = d[5:] > "05-20"
        refl = np.empty((12, size, size))
        refl[:] = np.where(kind == 1, SOIL[:, None, None], GREEN[:, None, None])
        poppy = FLOWER if flowering else (SOIL if post else GREEN * 0.9)
        refl[:, kind == 2] = poppy[:, None]
        refl *= 1 + rng.normal(0, 0.03, (1, size, size))
        dn = np.clip(refl * 10000, 1, 65535).astype("uint16")
        scl = np.where(kind == 1, 5, 4).astype("uint16")
        if cloud_date == k:
            scl[:] = 9
        data = np.concatenate([dn, scl[None]], axis=0)
        p = folder / f"S2_{d.replace('-', '')}.tif"
        write_multiband(p, data, S2_NAMES, tf, CRS, acquisition_date=d,
                        scales=[1e-4] * 12 + [1], offsets=[0] * 13, nodata=0,
                        tags={"SENSOR": "sentinel2"})
        images.append(p)
        del month
    to_wgs = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)

    def poly(r0, c0, r1, c1):
        x_a, y_a = tf * (c0, r0)
        x_b, y_b = tf * (c1, r1)
        xs, ys = to_wgs.transform([x_a, x_b], [y_a, y_b])
        return mapping(box(min(xs), min(ys), max(xs), max(ys)))

    truth = [{"type": "Feature", "properties": {"plot_id": i, "area_m2": s * s * 100.0},
              "geometry": poly(r, c, r + s, c + s)} for i, (r, c, s) in enumerate(plots)]
    labels = [{"type": "Feature", "properties": {"class": "poppy"}, "geometry": f["geometry"]}
              for f in truth]
    h = size // 2
    labels += [
        {"type": "Feature", "properties": {"class": "wheat"}, "geometry": poly(0, 14, 6, 30)},
        {"type": "Feature", "properties": {"class": "wheat"}, "geometry": poly(12, 2, 26, 28)},
        {"type": "Feature", "properties": {"class": "bare_soil"},
         "geometry": poly(2, h + 2, h - 2, size - 2)},
        {"type": "Feature", "properties": {"class": "bare_soil"},
         "geometry": poly(h + 2, 2, size - 2, size // 4 - 2)},
    ]
    _geojson(folder / "labels.geojson", labels)
    _geojson(folder / "truth.geojson", truth)
    return TinyScene(images, folder / "labels.geojson", folder / "truth.geojson", folder, tf)
