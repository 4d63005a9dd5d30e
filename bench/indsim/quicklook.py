#!/usr/bin/env python
"""Quick-look PNG: true colour per date (top), SCL per date (middle), false colour NIR-R-G (bottom),
with truth poppy plots outlined in cyan on the true colour tiles.
usage: quicklook.py SCENE_DIR OUT.png"""
import glob
import json
import os
import sys

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from pyproj import Transformer

SCL_COL = {0: (0, 0, 0), 2: (60, 60, 60), 3: (100, 50, 0), 4: (0, 160, 0), 5: (200, 180, 120), 6: (0, 0, 255),
           7: (128, 128, 128), 8: (190, 190, 190), 9: (255, 255, 255), 10: (100, 200, 255), 11: (255, 0, 255)}


def main(scene, out, zoom=2):
    files = sorted(glob.glob(os.path.join(scene, "L2A_*.tif")))
    truth = json.load(open(os.path.join(scene, "truth.geojson")))
    tiles = []
    for f in files:
        with rasterio.open(f) as src:
            a = src.read().astype(np.float32)
            crs, tr = src.crs, src.transform
        nod = a[1] == 0
        r = a[:12] * 1e-4 - 0.1

        def st(x, lo, hi):
            return np.clip((x - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
        tc = np.dstack([st(r[3], 0, .25), st(r[2], 0, .25), st(r[1], 0, .25)])
        fc = np.dstack([st(r[7], 0, .5), st(r[3], 0, .25), st(r[2], 0, .25)])
        tc[nod] = 0
        fc[nod] = 0
        scl = np.zeros(tc.shape, np.uint8)
        for k, c in SCL_COL.items():
            scl[a[12] == k] = c
        ims = [Image.fromarray(x).resize((x.shape[1] * zoom, x.shape[0] * zoom), Image.NEAREST) for x in (tc, scl, fc)]
        # truth outlines on true colour
        tw = Transformer.from_crs(4326, crs, always_xy=True)
        d = ImageDraw.Draw(ims[0])
        inv = ~tr
        for ft in truth["features"]:
            for ring in ([ft["geometry"]["coordinates"][0]] if ft["geometry"]["type"] == "Polygon"
                         else [p[0] for p in ft["geometry"]["coordinates"]]):
                xy = np.array(ring)
                X, Y = tw.transform(xy[:, 0], xy[:, 1])
                pts = [tuple(np.array(inv * (x, y)) * zoom) for x, y in zip(X, Y)]
                d.line(pts + [pts[0]], fill=(0, 255, 255), width=1)
        dd = ImageDraw.Draw(ims[1])
        dd.text((4, 4), os.path.basename(f)[4:12], fill=(255, 0, 0))
        tiles.append(ims)
    w, h = tiles[0][0].size
    canvas = Image.new("RGB", (w * len(tiles) + 4 * len(tiles), h * 3 + 8), (40, 40, 40))
    for i, ims in enumerate(tiles):
        for j, im in enumerate(ims):
            canvas.paste(im, (i * (w + 4), j * (h + 4)))
    canvas.save(out)
    print(out, canvas.size)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
