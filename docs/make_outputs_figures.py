"""Regenerate docs/map.png and docs/quicklook.png (needs /usr/bin/chromium).

Real imagery: the BigEarthNet T33UUP patch of 2017-06-13 (tests/data/bigearthnet, CDLA-
Permissive-1.0, Sumbul et al. 2019) as NIR/red/green false colour. The three "targets" and the
blind area are drawn by hand for illustration; they are NOT detections.

    /work/main/.venv/bin/python docs/make_outputs_figures.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from outputs.maps import write_map_html, write_quicklook
from outputs.targets import Target, TargetList

PATCH = ROOT / "tests/data/bigearthnet/S2A_MSIL2A_20170613T101031_87_48"


def main() -> None:
    bands = []
    for b in ("B08", "B04", "B03"):
        with rasterio.open(next(PATCH.glob(f"*_{b}.tif"))) as src:
            bands.append(src.read(1).astype(np.float32) / 10000)
            transform, crs = src.transform, src.crs.to_string()
    rgb = np.stack(bands)
    rgb[:, 100:108, 0:50] = np.nan                      # a masked strip, to show grey
    x0, y0 = transform.c, transform.f
    geoms = [box(x0 + 300, y0 - 420, x0 + 380, y0 - 350),
             Polygon([(x0 + 700, y0 - 200), (x0 + 820, y0 - 180), (x0 + 800, y0 - 300),
                      (x0 + 690, y0 - 290)]),
             MultiPolygon([box(x0 + 500, y0 - 800, x0 + 560, y0 - 760),
                           box(x0 + 580, y0 - 810, x0 + 620, y0 - 780)])]
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    targets = []
    for i, (g, score) in enumerate(zip(geoms, (0.91, 0.84, 0.62)), start=1):
        lon, lat = to_ll.transform(g.centroid.x, g.centroid.y)
        targets.append(Target(f"demo{i:02d}", i, g, score, min(1, score + 0.05), g.area, lon,
                              lat, 3, ("2017-05-24", "2017-06-03", "2017-06-13"), "sentinel2",
                              "illustration only, not a detection"))
    tl = TargetList(tuple(targets), crs, (box(x0 + 0, y0 - 1080, x0 + 500, y0 - 1000),))
    docs = ROOT / "docs"
    write_quicklook(docs / "quicklook.png", rgb, transform, crs, tl)
    with tempfile.TemporaryDirectory() as tmp:
        html = write_map_html(Path(tmp) / "map.html", rgb, transform, crs, tl)
        subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--screenshot={docs / 'map.png'}",
                        "--window-size=1200,800", html.as_uri()],
                       check=True, capture_output=True, timeout=120)


if __name__ == "__main__":
    main()
