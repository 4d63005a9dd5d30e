"""Quick-look PNG: true colour | NIR false colour, truth (yellow) and labels (cyan; poppy labels magenta)."""
import json, sys
import numpy as np, rasterio
from PIL import Image, ImageDraw
from pyproj import Transformer

def stretch(a, lo, hi):
    return (np.clip((a - lo) / (hi - lo), 0, 1) ** (1 / 1.6) * 255).astype(np.uint8)

def main(d, out, crop=None):
    import glob
    f = glob.glob(f"{d}/flight_*.tif")[0]
    with rasterio.open(f) as src:
        x = src.read(masked=False).astype(np.float32)
        sc = src.scales
        if src.dtypes[0] == "uint16":
            x = np.where(x == 0, np.nan, x * sc[0])
        crs, tr = src.crs, src.transform
    b, g, r, re, n = x
    tc = np.dstack([stretch(r, 0, 0.35), stretch(g, 0, 0.35), stretch(b, 0, 0.35)])
    fc = np.dstack([stretch(n, 0, 0.6), stretch(r, 0, 0.35), stretch(g, 0, 0.35)])
    nanm = np.isnan(b)
    tc[nanm] = 0; fc[nanm] = 0
    ims = [Image.fromarray(tc), Image.fromarray(fc)]
    T = Transformer.from_crs(4326, crs, always_xy=True)
    inv = ~tr
    def draw(fn, colf):
        for ft in json.load(open(fn))["features"]:
            ring = np.array(ft["geometry"]["coordinates"][0])
            E, N = T.transform(ring[:, 0], ring[:, 1])
            cols, rows = inv * (E, N)
            pts = list(zip(cols, rows))
            for im in ims:
                ImageDraw.Draw(im).line(pts + [pts[0]], fill=colf(ft["properties"]), width=1)
    draw(f"{d}/labels.geojson", lambda p: (255, 0, 255) if p["class"] == "poppy" else (0, 255, 255))
    draw(f"{d}/truth.geojson", lambda p: (255, 255, 0))
    w, h = ims[0].size
    canvas = Image.new("RGB", (2 * w + 8, h))
    canvas.paste(ims[0], (0, 0)); canvas.paste(ims[1], (w + 8, 0))
    if crop:
        r0, c0, s = crop
        canvas = Image.new("RGB", (2 * s + 8, s))
        canvas.paste(ims[0].crop((c0, r0, c0 + s, r0 + s)), (0, 0))
        canvas.paste(ims[1].crop((c0, r0, c0 + s, r0 + s)), (s + 8, 0))
        canvas = canvas.resize((canvas.width * 2, canvas.height * 2), Image.NEAREST)
    canvas.save(out)

if __name__ == "__main__":
    crop = tuple(int(v) for v in sys.argv[3].split(",")) if len(sys.argv) > 3 else None
    main(sys.argv[1], sys.argv[2], crop)
