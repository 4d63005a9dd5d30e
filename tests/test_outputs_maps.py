"""quicklook.png (Pillow) and the offline map.html (Leaflet), including a headless-browser check."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from outputs_helpers import CRS, PIXEL, SIZE, X0, Y0, make_targets, scene_rgb, scene_transform
from PIL import Image

from outputs.maps import (
    BLIND_RGB,
    MARKER_CLASS,
    NAN_GREY,
    TARGET_RGB,
    map_html,
    stretch_rgb,
    write_map_html,
    write_quicklook,
)
from outputs.targets import TargetList
from pipeline.errors import InputError

#: a headless Chromium on PATH. .ci/run installs it and sets POPPYSCAN_REQUIRE_BROWSER=1, so
#: CI fails without one; elsewhere (a fresh machine with only Python) the browser tests skip
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                       "google-chrome", "google-chrome-stable"))
                 if p), None)


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("POPPYSCAN_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium on PATH: apt-get install -y chromium")
        pytest.skip("no Chromium on PATH (apt-get install -y chromium to run the browser "
                    "checks of map.html; .ci/run does)")
    return CHROMIUM


class _Elements(HTMLParser):
    """Collects (tag, attrs) of every element; script text is data, not elements."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.data_json: str | None = None
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.elements.append((tag, a))
        self._in_data = tag == "script" and a.get("id") == "poppyscan-data"

    def handle_data(self, data):
        if self._in_data:
            self.data_json = (self.data_json or "") + data

    def handle_endtag(self, tag):
        self._in_data = False

    def count_class(self, cls: str) -> int:
        return sum(cls in (a.get("class") or "").split() for _, a in self.elements)


def _parse(text: str) -> _Elements:
    p = _Elements()
    p.feed(text)
    return p


# ---------------------------------------------------------------- stretch + quicklook
def test_stretch_percentiles_and_nan_grey():
    band = np.arange(100, dtype=np.float32).reshape(10, 10)
    rgb = np.stack([band, band * 2, band + 5])
    rgb[:, 0, 0] = np.nan
    rgb[1, 0, 1] = np.nan                        # one band missing is enough to be masked
    img, valid = stretch_rgb(rgb)
    assert img.shape == (10, 10, 3) and img.dtype == np.uint8
    assert not valid[0, 0] and not valid[0, 1] and valid.sum() == 98
    assert (img[0, 0] == NAN_GREY).all() and (img[0, 1] == NAN_GREY).all()
    assert (img[0, 2] == 0).all() and (img[9, 9] == 255).all()     # below p2 / above p98 clip
    assert 100 < img[5, 0, 0] < 155                                  # middle stays middle
    all_nan, v = stretch_rgb(np.full((3, 4, 5), np.nan))
    assert not v.any() and (all_nan == NAN_GREY).all()
    with pytest.raises(InputError, match=r"\(3, h, w\)"):
        stretch_rgb(np.zeros((4, 5)))


def _px(x: float, y: float, scale: float) -> tuple[int, int]:
    t = scene_transform()
    c, r = ~t @ (x, y)
    return int(c * scale), int(r * scale)


def test_quicklook_draws_targets_and_hatched_blind_areas(tmp_path):
    tl = make_targets()
    path = write_quicklook(tmp_path / "quicklook.png", scene_rgb(), scene_transform(), CRS, tl)
    assert [p.name for p in tmp_path.iterdir()] == ["quicklook.png"]
    img = np.asarray(Image.open(path).convert("RGB"))
    scale = 1000 // SIZE                                   # small patches enlarged crisply
    assert img.shape == (SIZE * scale, SIZE * scale, 3) and max(img.shape) <= 1000
    yellow = np.all(img == TARGET_RGB, axis=-1)
    # every target's outline is drawn where its edge is
    for t in tl.targets:
        minx, miny, maxx, maxy = t.geometry.bounds
        c, r = _px(minx, (miny + maxy) / 2, scale)     # middle of the west edge
        assert yellow[r - 2:r + 3, c - 2:c + 3].any(), t.target_id
    # blind area: hatched (some pixels BLIND_RGB, some not) inside; outline on its edge
    b = tl.blind_areas[0]
    c0, r0 = _px(b.bounds[0], b.bounds[3], scale)
    c1, r1 = _px(b.bounds[2], b.bounds[1], scale)
    inside = np.all(img[r0 + 3:r1 - 3, c0 + 3:c1 - 3] == BLIND_RGB, axis=-1)
    assert 0.1 < inside.mean() < 0.4
    # without targets, no yellow outlines or labels (the legend's one yellow line aside)
    empty = write_quicklook(tmp_path / "q0.png", scene_rgb(), scene_transform(), CRS,
                            TargetList((), CRS))
    y0 = np.all(np.asarray(Image.open(empty).convert("RGB")) == TARGET_RGB, axis=-1)
    assert y0[60:].sum() == 0 and yellow[60:].sum() > 500


def test_quicklook_numbers_a_target_at_the_image_edge_inside_the_image(tmp_path):
    """A target against the right edge gets its number on its left, not cut off."""
    from dataclasses import replace

    from shapely.geometry import box
    t = make_targets(1).targets[0]
    edge = box(X0 + (SIZE - 4) * PIXEL, Y0 - 600, X0 + SIZE * PIXEL, Y0 - 560)
    tl = TargetList((replace(t, rank=1, geometry=edge),), CRS)
    path = write_quicklook(tmp_path / "q.png", scene_rgb(), scene_transform(), CRS, tl)
    img = np.asarray(Image.open(path).convert("RGB"))
    scale = 1000 // SIZE
    yellow = np.all(img == TARGET_RGB, axis=-1)
    c0, r0 = _px(edge.bounds[0], edge.bounds[3], scale)
    _, r1 = _px(edge.bounds[2], edge.bounds[1], scale)
    # the number's yellow strokes, left of the target near its rows
    assert yellow[max(0, r0 - 40):r1, max(0, c0 - 60):c0 - 3].sum() >= 8


def test_quicklook_legend_moves_off_a_target_in_the_top_left_corner(tmp_path):
    from dataclasses import replace

    from shapely.geometry import box
    t = make_targets(1).targets[0]
    corner = box(X0 + PIXEL, Y0 - 5 * PIXEL, X0 + 5 * PIXEL, Y0 - PIXEL)
    tl = TargetList((replace(t, rank=1, geometry=corner),), CRS)
    img = np.asarray(Image.open(write_quicklook(tmp_path / "q.png", scene_rgb(),
                                                scene_transform(), CRS, tl)).convert("RGB"))
    scale = 1000 // SIZE
    yellow = np.all(img == TARGET_RGB, axis=-1)
    c, r = _px(X0 + PIXEL, Y0 - 3 * PIXEL, scale)      # middle of the target's west edge
    assert yellow[r - 2:r + 3, c - 2:c + 3].any()        # its outline is not under the legend
    # the legend (black box with the yellow head line) is in the top-right corner instead
    w = img.shape[1]
    assert np.all(img[2, w - 10] == 0) and yellow[:40, w // 2:].sum() > 20


def test_quicklook_large_scene_is_shrunk_to_1000px(tmp_path):
    rgb = np.random.default_rng(1).uniform(0, 0.3, (3, 1500, 600)).astype(np.float32)
    path = write_quicklook(tmp_path / "q.png", rgb, scene_transform(), CRS, make_targets())
    assert Image.open(path).size == (400, 1000)


# ---------------------------------------------------------------- map.html
@pytest.fixture(scope="module")
def map_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("map")
    return write_map_html(out / "map.html", scene_rgb(), scene_transform(), CRS, make_targets())


def test_map_html_is_self_contained(map_file):
    text = map_file.read_text(encoding="utf-8")
    page = _parse(text)
    tags = [t for t, _ in page.elements]
    assert "link" not in tags and "img" not in tags and "iframe" not in tags
    assert all(a.get("src") is None for t, a in page.elements if t == "script")
    assert "Leaflet 1.9.4" in text and "BSD-2-Clause" in text
    assert "L.tileLayer" not in text                       # no network tiles by default
    assert [p.name for p in map_file.parent.iterdir()] == ["map.html"]
    data = json.loads(page.data_json)
    assert len(data["targets"]["features"]) == 3 and len(data["blind"]["features"]) == 1
    png = Image.open(io.BytesIO(base64.b64decode(data["image"])))
    assert png.format == "PNG" and png.mode == "RGBA" and max(png.size) <= 1600
    (s, w), (n, e) = data["image_bounds"]
    assert 30.18 < s < n < 30.22 and 120.09 < w < e < 120.12   # WGS84 lat/lon of the scene
    for f in data["targets"]["features"]:                 # targets lie on the image
        p = f["properties"]
        assert s < p["lat"] < n and w < p["lon"] < e


def test_map_html_escapes_script_breakouts():
    tl = make_targets(1)
    t = tl.targets[0]
    from dataclasses import replace
    evil = TargetList((replace(t, reason="</script><script>alert(1)</script>"),), CRS)
    text = map_html(None, None, None, evil)
    page = _parse(text)
    assert json.loads(page.data_json)["targets"]["features"][0]["properties"]["reason"] \
        == "</script><script>alert(1)</script>"
    assert "<script>alert(1)" not in text


def _render(html_path: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}",
           *extra, html_path.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


@pytest.mark.browser
def test_map_renders_every_target_in_headless_chromium(map_file, tmp_path, chromium):
    dom = _parse(_render(map_file, tmp_path, "--dump-dom").stdout)
    assert dom.count_class(MARKER_CLASS) == 3               # drawn by Leaflet after JS ran
    assert dom.count_class("poppyscan-target-polygon") == 3
    assert dom.count_class("poppyscan-rank-label") == 3
    assert dom.count_class("poppyscan-blind-area") == 1
    assert dom.count_class("poppyscan-image") == 1
    assert dom.count_class("poppyscan-legend") == 1
    body = [a for t, a in dom.elements if t == "body"][0]
    assert body.get("data-poppyscan-markers") == "3"


@pytest.mark.browser
def test_map_with_no_targets_still_renders(tmp_path, chromium):
    p = write_map_html(tmp_path / "map.html", scene_rgb(), scene_transform(), CRS,
                       TargetList((), CRS))
    dom = _parse(_render(p, tmp_path, "--dump-dom").stdout)
    assert dom.count_class(MARKER_CLASS) == 0
    assert dom.count_class("poppyscan-legend") == 1 and dom.count_class("poppyscan-image") == 1


def test_map_image_overlay_is_georeferenced(map_file):
    """A scene pixel's colour appears in the Web-Mercator overlay at that pixel's lat/lon."""
    from pyproj import Transformer
    data = json.loads(_parse(map_file.read_text(encoding="utf-8")).data_json)
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image"]))))
    (s, w), (n, e) = data["image_bounds"]
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (mx0, mx1), (my1, my0) = to_merc.transform([w, e], [n, s])
    utm_to_merc = Transformer.from_crs(CRS, "EPSG:3857", always_xy=True)
    stretched, valid = stretch_rgb(scene_rgb())
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(2, SIZE - 2, 40), rng.integers(2, SIZE - 2, 40)
    hits = 0
    for r, c in zip(rows, cols):
        x, y = scene_transform() @ (c + 0.5, r + 0.5)          # pixel centre, scene CRS
        mx, my = utm_to_merc.transform(x, y)
        pc = int((mx - mx0) / (mx1 - mx0) * png.shape[1])
        pr = int((my1 - my) / (my1 - my0) * png.shape[0])
        hits += bool(np.array_equal(png[pr, pc, :3], stretched[r, c]))
        assert png[pr, pc, 3] == (255 if valid[r, c] else 200)
    assert hits >= 36        # nearest-neighbour warp: a few centres fall on a rotated seam


@pytest.mark.browser
def test_map_screenshot_shows_one_red_marker_per_target(map_file, tmp_path, chromium):
    """Pixels, not just DOM: the rendered page shows three separate red target dots."""
    from scipy import ndimage
    shot = tmp_path / "shot.png"
    _render(map_file, tmp_path, f"--screenshot={shot}", "--window-size=900,700")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (np.abs(img - (255, 45, 45)).sum(axis=-1) < 40)   # marker fill #ff2d2d
    labels, n = ndimage.label(red)
    sizes = ndimage.sum(red, labels, range(1, n + 1))
    assert (sizes > 40).sum() == 3 + 1          # radius-7 dots (not noise) + the legend's swatch


def test_a_rotated_scene_lies_whole_in_the_map_overlay() -> None:
    """The overlay's extent came from two opposite corners: a rotated scene's other corners
    fell outside it (cut and sheared); all four lie inside now."""
    from affine import Affine
    from pyproj import Transformer

    from outputs.maps import _web_mercator_png
    rgb = scene_rgb()
    tf = scene_transform() * Affine.rotation(25)
    _, ((s, w), (n, e)) = _web_mercator_png(rgb, tf, CRS)
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    h, wd = rgb.shape[1:]
    for c in ((0, 0), (wd, 0), (0, h), (wd, h)):
        lon, lat = to_ll.transform(*(tf * c))
        assert w - 1e-6 <= lon <= e + 1e-6 and s - 1e-6 <= lat <= n + 1e-6


def _probe(map_path: Path, tmp: Path, js: str, *extra: str) -> dict:
    """Run ``js`` in the rendered page (after Leaflet has drawn it); it returns a JSON-able
    value, read back from the DOM."""
    probed = tmp / "probed.html"
    script = ("<script>setTimeout(function () { var r = (function () {" + js + "})();"
              " document.body.setAttribute('data-probe', JSON.stringify(r)); }, 200);</script>")
    probed.write_text(map_path.read_text(encoding="utf-8").replace(
        "</body>", script + "</body>"), encoding="utf-8")
    dom = _parse(_render(probed, tmp, "--virtual-time-budget=5000", "--dump-dom",
                         *extra).stdout)
    body = [a for t, a in dom.elements if t == "body"][0]
    return json.loads(body["data-probe"])


_OPEN_POPUPS = """
  var out = [];
  document.querySelectorAll('.%s').forEach(function (m) {
    m.dispatchEvent(new MouseEvent('click', {bubbles: true}));
    var c = document.querySelectorAll('.leaflet-popup-content');
    out.push(c.length ? c[c.length - 1].textContent : null);
  });
  return out;
"""


@pytest.mark.browser
def test_map_popups_give_the_coordinates_as_written(map_file, tmp_path, chromium):
    """The popups rounded every number to six significant digits: 119.8377506 showed as
    119.838, up to 48 m off, and the popup is what a team types into a phone. Markers are
    drawn last rank first, so where they overlap rank 1 lies on top and takes the click."""
    popups = _probe(map_file, tmp_path, _OPEN_POPUPS % MARKER_CLASS)
    data = json.loads(_parse(map_file.read_text(encoding="utf-8")).data_json)
    props = {f["properties"]["rank"]: f["properties"] for f in data["targets"]["features"]}
    assert [p.split("target_id")[0] for p in popups] == ["Target 3", "Target 2", "Target 1"]
    for text in popups:
        p = props[int(text.split("target_id")[0].removeprefix("Target "))]
        assert f"lat{p['lat']}" in text and f"lon{p['lon']}" in text
        assert len(str(p["lon"]).split(".")[1]) >= 6          # 7 decimals (a trailing 0 drops)


def _many_targets(n: int) -> TargetList:
    """``n`` small square targets spread over the scene, rank = list order."""
    from pyproj import Transformer
    from shapely.geometry import box

    from outputs.targets import Target
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    side = int(np.ceil(np.sqrt(n)))
    step = SIZE * PIXEL / side
    targets = []
    for i in range(n):
        x, y = X0 + (i % side + 0.3) * step, Y0 - (i // side + 0.3) * step
        g = box(x, y - 20, x + 20, y)
        lon, lat = to_ll.transform(g.centroid.x, g.centroid.y)
        targets.append(Target(target_id=f"ps-{i:010d}", rank=i + 1, geometry=g, score=0.9,
                              score_max=0.95, area_m2=400.0, lon=lon, lat=lat))
    return TargetList(tuple(targets), CRS)


@pytest.mark.browser
def test_map_numbers_the_first_ranks_of_a_long_list(tmp_path, chromium):
    """Above 60 targets the map showed no rank number at all (the legend still said "number
    = rank"): the first 60 ranks are numbered and the legend says so."""
    p = write_map_html(tmp_path / "map.html", scene_rgb(), scene_transform(), CRS,
                       _many_targets(64))
    got = _probe(p, tmp_path, """
      return {labels: Array.from(document.querySelectorAll('.poppyscan-rank-label'))
                .map(function (e) { return +e.textContent; }),
              legend: document.querySelector('.poppyscan-legend').textContent};""")
    assert sorted(got["labels"]) == list(range(1, 61))
    assert "first 60 numbered" in got["legend"]


@pytest.mark.browser
def test_map_opens_with_every_target_clear_of_the_legend(tmp_path, chromium):
    """fitBounds kept 20 px of padding: the legend (about 370 x 130 px) hid the targets in
    the bottom-right of the survey when the map opened."""
    p = write_map_html(tmp_path / "map.html", scene_rgb(), scene_transform(), CRS,
                       _many_targets(36))
    got = _probe(p, tmp_path, """
      function box(e) { var r = e.getBoundingClientRect();
                        return [r.left, r.top, r.right, r.bottom]; }
      var covers = [box(document.querySelector('.poppyscan-legend')),
                    box(document.querySelector('.leaflet-control-layers'))];
      var hidden = 0, n = 0, off = 0;
      document.querySelectorAll('.%s').forEach(function (m) {
        var b = box(m); n += 1;
        if (b[0] < 0 || b[1] < 0 || b[2] > innerWidth || b[3] > innerHeight) off += 1;
        covers.forEach(function (c) {
          if (b[0] < c[2] && c[0] < b[2] && b[1] < c[3] && c[1] < b[3]) hidden += 1; });
      });
      return {n: n, hidden: hidden, off: off};""" % MARKER_CLASS, "--window-size=900,700")
    assert got == {"n": 36, "hidden": 0, "off": 0}
