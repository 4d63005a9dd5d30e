"""Regenerate the pictures of docs/simulator.md (Pillow only).

    /work/main/.venv/bin/python docs/img/make_simulator_figures.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from pyproj import Transformer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.simulate import (
    _EM,
    CLASSES,
    ENDMEMBERS,
    WAVELENGTH_NM,
    _fractions,
    quicklook,
    simulate,
)

IMG = Path(__file__).resolve().parent
SCL_COLOURS = {0: (0, 0, 0), 3: (90, 60, 30), 4: (40, 160, 40), 5: (190, 160, 110),
               6: (30, 60, 200), 8: (200, 200, 200), 9: (255, 255, 255), 10: (120, 220, 255),
               11: (255, 0, 255)}


def label(im: Image.Image, text: str) -> Image.Image:
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 8 + 6 * len(text), 14), fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return im


def s2_figures(tmp: Path) -> None:
    r = simulate(tmp / "s2", size=256, seed=0)
    fc, tc = [], []
    for p, day in zip(r.images, r.dates):
        quicklook(p, IMG / f"sim_s2_{day}_false.png")
        fc.append(label(Image.open(IMG / f"sim_s2_{day}_false.png").convert("RGB"), day))
        quicklook(p, tmp / "tc.png", bands=("B04", "B03", "B02"), stretch=(0.0, 0.25))
        tc.append(label(Image.open(tmp / "tc.png").convert("RGB"), day))
    w = 256
    strip = Image.new("RGB", (w * len(fc), 2 * w))
    for i, (a, b) in enumerate(zip(fc, tc)):
        strip.paste(a, (i * w, 0))
        strip.paste(b, (i * w, w))
    strip.save(IMG / "sim_s2_dates.png")
    # SCL of every date
    scl_strip = Image.new("RGB", (w * len(r.images), w))
    for i, (p, day) in enumerate(zip(r.images, r.dates)):
        with rasterio.open(p) as src:
            scl = src.read(13)
        rgb = np.zeros((*scl.shape, 3), np.uint8)
        for k, c in SCL_COLOURS.items():
            rgb[scl == k] = c
        scl_strip.paste(label(Image.fromarray(rgb), day), (i * w, 0))
    scl_strip.save(IMG / "sim_s2_scl.png")
    # truth outlines over a zoomed flowering date
    def cloudy(i: int) -> float:
        with rasterio.open(r.images[i]) as src:
            return float(np.isin(src.read(13), [0, 8, 9, 10]).mean())

    flo = min((i for i, d in enumerate(r.dates) if "04-01" <= d[5:] <= "05-20"), key=cloudy)
    quicklook(r.images[flo], tmp / "z.png", bands=("B04", "B03", "B02"), stretch=(0.0, 0.25))
    z = 3
    im = Image.open(tmp / "z.png").convert("RGB").resize((256 * z, 256 * z), Image.NEAREST)
    im = im.crop((0, 0, 128 * z, 128 * z))
    with rasterio.open(r.images[flo]) as src:
        inv = ~src.transform
        crs = src.crs.to_string()
    to = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    d = ImageDraw.Draw(im)
    colours = {"garden": (255, 0, 255), "ravine": (0, 255, 255), "strip": (255, 255, 0),
               "field": (255, 80, 0)}
    for f in json.loads(r.truth.read_text())["features"]:
        ring = f["geometry"]["coordinates"][0]
        pts = [inv * to.transform(x, y) for x, y in ring]
        d.polygon([(x * z, y * z) for x, y in pts], outline=colours[f["properties"]["kind"]])
    label(im, f"{r.dates[flo]} truth: garden magenta, ravine cyan, strip yellow, field orange")
    im.save(IMG / "sim_s2_truth_zoom.png")


def drone_figures(tmp: Path) -> None:
    r = simulate(tmp / "d", sensor="drone", size=512, seed=1, prevalence=0.03)
    quicklook(r.images[0], IMG / "sim_drone_p4m_false.png", bands=("nir", "red", "green"),
              stretch=(0.0, 0.6))
    r = simulate(tmp / "rgb", sensor="drone-rgb", size=512, seed=1, prevalence=0.03)
    quicklook(r.images[0], IMG / "sim_drone_rgb.png", bands=("red", "green", "blue"),
              stretch=(0.0, 0.35))


def chart(series: dict[str, tuple[list[float], list[float], tuple[int, int, int]]],
          xr: tuple[float, float], yr: tuple[float, float], title: str, path: Path,
          xlabel: str, vlines: tuple[float, ...] = ()) -> None:
    w, h, m = 720, 400, 50
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)

    def px(x: float, y: float) -> tuple[float, float]:
        return (m + (x - xr[0]) / (xr[1] - xr[0]) * (w - 2 * m - 120),
                h - m - (y - yr[0]) / (yr[1] - yr[0]) * (h - 2 * m))

    d.rectangle((*px(xr[0], yr[1]), *px(xr[1], yr[0])), outline=(0, 0, 0))
    for v in vlines:
        d.line((*px(v, yr[0]), *px(v, yr[1])), fill=(200, 200, 200))
    for k in range(6):
        yv = yr[0] + k * (yr[1] - yr[0]) / 5
        d.text((5, px(xr[0], yv)[1] - 5), f"{yv:.2f}", fill=(0, 0, 0))
    for k in range(6):
        xv = xr[0] + k * (xr[1] - xr[0]) / 5
        d.text((px(xv, yr[0])[0] - 10, h - m + 5), f"{xv:.0f}", fill=(0, 0, 0))
    d.text((w // 2 - 100, h - 18), xlabel, fill=(0, 0, 0))
    d.text((m, 10), title, fill=(0, 0, 0))
    for i, (name, (xs, ys, col)) in enumerate(series.items()):
        d.line([px(x, y) for x, y in zip(xs, ys)], fill=col, width=2)
        d.text((w - m - 110, m + 14 * i), name, fill=col)
    im.save(path)


class _FakeUnits:
    """One unit per class, no jitter, for the phenology chart."""

    def __init__(self, classes: list[str], colour: int = 0) -> None:
        n = len(classes)
        self.keys = np.arange(n, dtype=np.int64)
        self.cls = np.array([CLASSES.index(c) for c in classes], np.int16)
        self.colour = np.full(n, colour, np.int8)
        self.shift = np.zeros(n, np.float32)
        self.cover = np.ones(n, np.float32)
        self.fl_amp = np.ones(n, np.float32)
        self.soil = np.zeros(n, np.int8)
        self.gain = np.ones(n, np.float32)
        self.plant = np.full(n, 75.0, np.float32)


def spectra_figures() -> None:
    wl = [float(v) for v in WAVELENGTH_NM]
    pick = {"leaf_glaucous": (60, 120, 200), "leaf": (0, 150, 0), "petal_white": (150, 150, 150),
            "petal_red": (220, 0, 0), "petal_yellow": (220, 180, 0), "dry": (150, 100, 40),
            "soil": (90, 60, 30), "forest": (0, 80, 0), "concrete": (0, 0, 0)}
    chart({k: (wl, list(ENDMEMBERS[k]), c) for k, c in pick.items()}, (400, 2250), (0, 0.7),
          "Endmember spectra at the Sentinel-2 band centres (reflectance)",
          IMG / "sim_endmembers.png", "wavelength (nm)")
    classes = ["poppy", "ornamental_poppy", "wheat", "rapeseed", "garlic", "broad_bean",
               "radish", "milk_vetch", "potato"]
    cols = [(200, 0, 200), (255, 120, 0), (0, 150, 0), (220, 180, 0), (60, 120, 200),
            (100, 100, 100), (0, 200, 200), (255, 105, 180), (120, 60, 0)]
    u = _FakeUnits(classes)
    days = list(range(61, 183, 2))
    ndvi = {c: [] for c in classes}
    vis = {c: [] for c in classes}
    for doy in days:
        refl = _fractions(u, doy, 0) @ _EM  # type: ignore[arg-type]
        nd = (refl[:, 7] - refl[:, 3]) / (refl[:, 7] + refl[:, 3])
        vb = refl[:, 1:4].mean(axis=1)
        for i, c in enumerate(classes):
            ndvi[c].append(float(nd[i]))
            vis[c].append(float(vb[i]))
    xs = [float(v) for v in days]
    marks = (92.0, 142.0)  # 1 Apr, 21 May (leap year)
    chart({c: (xs, ndvi[c], col) for c, col in zip(classes, cols)}, (61, 182), (0.0, 0.9),
          "NDVI by day of year (white flowers, no jitter); lines at 1 Apr and 21 May",
          IMG / "sim_phenology_ndvi.png", "day of year", marks)
    chart({c: (xs, vis[c], col) for c, col in zip(classes, cols)}, (61, 182), (0.0, 0.25),
          "Visible brightness (B02+B03+B04)/3 by day of year", IMG / "sim_phenology_vis.png",
          "day of year", marks)
    # Jia et al. check: poppy at pre-flowering and white flowering
    u1 = _FakeUnits(["poppy"])
    for doy in (85, 116, 150):
        refl = (_fractions(u1, doy, 0) @ _EM)[0]  # type: ignore[arg-type]
        print(f"poppy doy {doy}: 560 nm {refl[2]:.3f} 665 nm {refl[3]:.3f} 842 nm {refl[7]:.3f}")


def shrink() -> None:
    """Palette PNGs for the big pictures, to keep the repository small."""
    for png in IMG.glob("sim_*.png"):
        if png.stat().st_size > 200_000:
            Image.open(png).convert("RGB").quantize(256).save(png, optimize=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as t:
        s2_figures(Path(t))
        drone_figures(Path(t))
    spectra_figures()
    shrink()
