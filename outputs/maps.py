"""Pictures of a result: ``quicklook.png`` (Pillow) and a self-contained ``map.html`` (Leaflet).

Both show the flowering-window false colour the lead passes as ``rgb`` (3, h, w) float
reflectance (NaN where masked), stretched 2-98 percentiles per band with masked pixels grey,
the targets (outline + rank number) and the blind areas (hatched in the PNG, grey in the map).

``map.html`` inlines Leaflet 1.9.4 (``outputs/vendor/leaflet``), the image (a base64 PNG
warped to Web Mercator, the CRS Leaflet draws in, so it lines up with the vector layers) and
the GeoJSON, so it opens from disk, offline, in any browser. No tile layer is loaded.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from PIL import Image, ImageDraw, ImageFont
from pyproj import CRS, Transformer
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from outputs.atomic import atomic_path, write_text_atomic
from outputs.geojson import (
    blind_areas_feature_collection,
    parse_crs,
    polygonal,
    targets_feature_collection,
)
from outputs.targets import TargetList
from pipeline.errors import InputError

log = logging.getLogger(__name__)

VENDOR = Path(__file__).parent / "vendor" / "leaflet"
QUICKLOOK_MAX_SIDE = 1000
MAP_MAX_SIDE = 1600
#: rank numbers shown on map.html's markers (the first ranks; every marker has its popup)
MAP_MAX_LABELS = 60
NAN_GREY = 128
PERCENTILE_SAMPLE = 1_000_000
TARGET_RGB = (255, 235, 0)
BLIND_RGB = (200, 200, 200)
MARKER_CLASS = "poppyscan-target-marker"


# --------------------------------------------------------------------------- image
def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise InputError(f"map image must be an array of shape (3, h, w), got {arr.shape}; "
                         "pass the red, green, blue bands of the flowering-window composite")
    return arr


def _as_affine(transform: Any) -> Affine:
    return transform if isinstance(transform, Affine) else Affine(*transform[:6])


def decimate(rgb: np.ndarray, transform: Any, max_side: int) -> tuple[np.ndarray, Affine]:
    """Every k-th pixel (k whole) so the image keeps at least 2 x ``max_side`` on its longer
    side, with the matching transform: the stretch and warp then cost the same for a full
    Sentinel-2 tile as for a small scene, and the final resize still has pixels to average."""
    arr = _check_rgb(rgb)
    transform = _as_affine(transform)
    k = max(1, max(arr.shape[1:]) // (2 * max_side))
    if k == 1:
        return arr, transform
    return arr[:, ::k, ::k], transform @ Affine.scale(k)


def stretch_rgb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, h, w) float -> ((h, w, 3) uint8, (h, w) valid mask); 2-98 % stretch per band.

    A pixel with NaN in any band is invalid and painted grey.
    """
    arr = _check_rgb(rgb)
    valid = np.all(np.isfinite(arr), axis=0)
    out = np.full((*arr.shape[1:], 3), NAN_GREY, dtype=np.uint8)
    if not valid.any():
        return out, valid
    # Percentiles from a regular sample of at most ~1 Mpx: same stretch, a fraction of the cost.
    step = max(1, math.ceil(math.sqrt(valid.size / PERCENTILE_SAMPLE)))
    sample_valid = valid[::step, ::step]
    if not sample_valid.any():
        sample_valid, step = valid, 1
    for b in range(3):
        band = arr[b]
        lo, hi = np.percentile(band[::step, ::step][sample_valid], [2, 98])
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        v = band - lo
        v *= scale
        np.clip(v, 0, 255, out=v)
        out[..., b] = np.where(valid, v, NAN_GREY).astype(np.uint8)
    return out, valid


def _geoms_to(geoms: list[BaseGeometry], src: CRS, dst: CRS) -> list[BaseGeometry]:
    if src.equals(dst, ignore_axis_order=True):
        return geoms
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return [shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            for g in geoms]


def _to_pixels(g: BaseGeometry, transform: Affine, scale: float) -> BaseGeometry:
    inv = ~transform

    def f(xy: np.ndarray) -> np.ndarray:
        c, r = inv @ (xy[:, 0], xy[:, 1])
        return np.column_stack([np.asarray(c) * scale, np.asarray(r) * scale])
    return shapely.transform(g, f)


def _polys(g: BaseGeometry | None) -> list[Polygon]:
    if g is None or g.is_empty:
        return []
    return list(g.geoms) if isinstance(g, MultiPolygon) else [g]  # type: ignore[list-item]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):       # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


#: rank numbers drawn on the quicklook (all targets are outlined; more numbers are unreadable)
QUICKLOOK_MAX_LABELS = 50


def quicklook_image(rgb: np.ndarray, transform: Any, crs: Any, targets: TargetList) -> Image.Image:
    """The quicklook as a Pillow image (see :func:`write_quicklook`)."""
    rgb, transform = decimate(rgb, transform, QUICKLOOK_MAX_SIDE)
    img8, _ = stretch_rgb(rgb)
    h, w = img8.shape[:2]
    side = max(h, w)
    # Small patches are enlarged by a whole factor (crisp pixels), big scenes shrunk.
    scale = float(max(1, QUICKLOOK_MAX_SIDE // side)) if side <= QUICKLOOK_MAX_SIDE \
        else QUICKLOOK_MAX_SIDE / side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(img8, "RGB").resize(
        size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    raster_crs = parse_crs(crs) if isinstance(crs, str) else CRS.from_user_input(crs)
    target_crs = parse_crs(targets.crs)

    # Blind areas: diagonal hatch inside, light outline.
    blind = [_to_pixels(g, transform, scale) for g in
             _geoms_to([p for p in (polygonal(b) for b in targets.blind_areas) if p is not None],
                       target_crs, raster_crs)]
    if blind:
        mask = Image.new("L", size, 0)
        md = ImageDraw.Draw(mask)
        for g in blind:
            for p in _polys(g):
                md.polygon(list(p.exterior.coords), fill=255)
                for r in p.interiors:
                    md.polygon(list(r.coords), fill=0)
        yy, xx = np.mgrid[0:size[1], 0:size[0]]
        hatch = ((xx + yy) % 10 < 2).astype(np.uint8) * 255
        alpha = Image.fromarray(np.minimum(np.asarray(mask), hatch), "L")
        img.paste(Image.new("RGB", size, BLIND_RGB), (0, 0), alpha)
    draw = ImageDraw.Draw(img)
    for g in blind:
        for p in _polys(g):
            draw.line(list(p.exterior.coords), fill=BLIND_RGB, width=1)

    # Targets: black halo + yellow outline, rank number at a point inside the polygon.
    width = 2 if max(size) >= 500 else 1
    font = _font(max(12, min(22, max(size) // 50)))
    ordered = sorted(targets.targets, key=lambda t: t.rank)
    geoms = _geoms_to([polygonal(t.geometry) for t in ordered], target_crs, raster_crs)
    labels = []
    drawn = []                                  # pixel bounds of every outline and number
    for t, g in zip(ordered, geoms):
        if g is None:
            continue
        pg = _to_pixels(g, transform, scale)
        for p in _polys(pg):
            for ring in (p.exterior, *p.interiors):
                pts = list(ring.coords)
                draw.line(pts, fill=(0, 0, 0), width=width + 2)
                draw.line(pts, fill=TARGET_RGB, width=width)
        # the label beside the largest part: parts merged across a gap can span the image
        drawn.append(pg.bounds)
        main = max(_polys(pg), key=lambda q: q.area, default=pg)
        y = main.representative_point().y
        minx, miny, maxx, _ = main.bounds
        if t.rank <= QUICKLOOK_MAX_LABELS:
            labels.append((str(t.rank), minx, maxx, miny - 3 if miny > 12 else y))
    img_w = draw.im.size[0]
    for text, minx, maxx, y in labels:
        _, t_, r, _ = draw.textbbox((0, 0), text, font=font, stroke_width=2, anchor="lb")
        # right of the target, or left of it where the image ends; never above the top
        x = maxx + 3 if maxx + 3 + r <= img_w else max(0.0, minx - 3 - r)
        draw.text((x, max(y, -t_)), text, fill=TARGET_RGB, font=font, stroke_width=2,
                  stroke_fill=(0, 0, 0), anchor="lb")
        drawn.append((x, max(y, -t_) + t_, x + r, max(y, -t_)))

    # Legend in the corner where it hides the fewest targets (top-left when none).
    head = f"{len(ordered)} target{'' if len(ordered) == 1 else 's'} (rank" + (
        f", first {QUICKLOOK_MAX_LABELS} numbered)" if len(ordered) > QUICKLOOK_MAX_LABELS
        else ")")
    lines = [head, "hatched: blind area", "grey: masked or outside the AOI"]
    lf = _font(max(11, min(16, max(size) // 70)))
    pad = 4
    boxes = [draw.textbbox((0, 0), s, font=lf) for s in lines]
    lh = max(b[3] - b[1] for b in boxes) + 3
    lw = max(b[2] - b[0] for b in boxes)
    bw, bh = lw + 2 * pad, lh * len(lines) + 2 * pad
    x0, y0 = _legend_corner(size, (bw, bh), drawn)
    draw.rectangle([x0, y0, x0 + bw, y0 + bh], fill=(0, 0, 0))
    colours = [TARGET_RGB, BLIND_RGB, (NAN_GREY + 60,) * 3]
    for i, (s, c) in enumerate(zip(lines, colours)):
        draw.text((x0 + pad, y0 + pad + i * lh), s, fill=c, font=lf)
    return img


def _legend_corner(size: tuple[int, int], box_size: tuple[int, int],
                   drawn: list[tuple[float, float, float, float]]) -> tuple[int, int]:
    """Top-left pixel of the legend box: the image corner (top-left, top-right, bottom-left,
    bottom-right, in that order of preference) whose box overlaps the fewest drawn targets."""
    (w, h), (bw, bh) = size, box_size
    corners = [(0, 0), (max(0, w - bw - 1), 0), (0, max(0, h - bh - 1)),
               (max(0, w - bw - 1), max(0, h - bh - 1))]

    def hidden(corner: tuple[int, int]) -> int:
        x0, y0 = corner
        return sum(1 for minx, miny, maxx, maxy in drawn
                   if minx <= x0 + bw and maxx >= x0 and miny <= y0 + bh and maxy >= y0)

    return min(corners, key=hidden)


def write_quicklook(path: Path, rgb: np.ndarray, transform: Any, crs: Any,
                    targets: TargetList) -> Path:
    """Write ``quicklook.png``: stretched false colour, targets outlined with rank numbers,
    blind areas hatched; at most ~1000 px on its longer side. Returns the path."""
    img = quicklook_image(rgb, transform, crs, targets)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------- map.html
def _web_mercator_png(rgb: np.ndarray, transform: Any, crs: Any
                      ) -> tuple[str, list[list[float]]]:
    """The stretched image warped to EPSG:3857 as base64 PNG, and its [[S, W], [N, E]]."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    rgb, transform = decimate(rgb, transform, MAP_MAX_SIDE)
    img8, valid = stretch_rgb(rgb)
    h, w = valid.shape
    src = np.concatenate([np.moveaxis(img8, -1, 0), np.full((1, h, w), 255, np.uint8)])
    src[3][~valid] = 200                                  # masked pixels: slightly see-through
    src_crs = parse_crs(crs) if isinstance(crs, str) else CRS.from_user_input(crs)
    # all four corners: a rotated image's two opposite corners do not span it (the overlay
    # was cut and sheared)
    xs, ys = zip(*(transform @ c for c in ((0, 0), (w, 0), (0, h), (w, h))))
    dst_t, dw, dh = calculate_default_transform(
        src_crs.to_wkt(), "EPSG:3857", w, h, left=min(xs), bottom=min(ys), right=max(xs),
        top=max(ys))
    f = max(1.0, max(dw, dh) / MAP_MAX_SIDE)
    if f > 1:
        dw, dh = max(1, int(dw / f)), max(1, int(dh / f))
        dst_t = dst_t @ Affine.scale(f)
    dst = np.zeros((4, dh, dw), np.uint8)
    reproject(src, dst, src_transform=transform, src_crs=src_crs.to_wkt(), dst_transform=dst_t,
              dst_crs="EPSG:3857", resampling=Resampling.nearest, src_nodata=None, dst_nodata=0)
    buf = io.BytesIO()
    Image.fromarray(np.moveaxis(dst, 0, -1), "RGBA").save(buf, format="PNG")
    x0, y0 = dst_t @ (0, 0)
    x1, y1 = dst_t @ (dw, dh)
    tr = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    w_lon, n_lat = tr.transform(x0, y0)
    e_lon, s_lat = tr.transform(x1, y1)
    bounds = [[round(s_lat, 7), round(w_lon, 7)], [round(n_lat, 7), round(e_lon, 7)]]
    return base64.b64encode(buf.getvalue()).decode("ascii"), bounds


def _script_json(obj: Any) -> str:
    """JSON safe to embed in a <script> element (no '</script>' or '<!--' breakouts)."""
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


_MAP_JS = r"""
(function () {
  var data = JSON.parse(document.getElementById('poppyscan-data').textContent);
  function esc(v) {
    return String(v === null || v === undefined ? '' : v).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]; });
  }
  function table(p) {
    var rows = Object.keys(p).map(function (k) {
      // as written (the writers round): lat/lon are the 7 decimals a team types into a
      // phone (six significant digits put them up to 48 m off)
      var v = Array.isArray(p[k]) ? p[k].join(', ') : p[k];
      return '<tr><th>' + esc(k) + '</th><td>' + esc(v) + '</td></tr>'; });
    return '<table class="poppyscan-popup">' + rows.join('') + '</table>';
  }
  var map = L.map('map', {zoomSnap: 0.25});
  var overlays = {};
  var bounds = null;
  if (data.image) {
    overlays['Flowering-window false colour'] =
      L.imageOverlay('data:image/png;base64,' + data.image, data.image_bounds,
                     {className: 'poppyscan-image'}).addTo(map);
    bounds = L.latLngBounds(data.image_bounds);
  }
  var blind = L.geoJSON(data.blind, {style: {color: '#bbbbbb', weight: 1.5, dashArray: '4 4',
    fillColor: '#999999', fillOpacity: 0.35, className: 'poppyscan-blind-area'}});
  blind.addTo(map); overlays['Blind areas'] = blind;
  var polys = L.geoJSON(data.targets, {style: {color: '#ffeb00', weight: 2, fillOpacity: 0.1,
    className: 'poppyscan-target-polygon'},
    onEachFeature: function (f, layer) { layer.bindPopup(table(f.properties)); }});
  polys.addTo(map); overlays['Target outlines'] = polys;
  var markers = L.layerGroup();
  var labelled = data.max_labels;
  // the last rank first, so that where markers overlap the higher priority lies on top
  // and takes the click; the first max_labels ranks carry their number (all of them
  // unreadable in a crowd)
  data.targets.features.slice().reverse().forEach(function (f) {
    var p = f.properties;
    var m = L.circleMarker([p.lat, p.lon], {radius: 7, color: '#000000', weight: 2,
      fillColor: '#ff2d2d', fillOpacity: 0.9, className: '__MARKER__'});
    m.bindPopup('<b>Target ' + esc(p.rank) + '</b>' + table(p));
    if (p.rank <= labelled) {
      m.bindTooltip(String(p.rank), {permanent: true, direction: 'right',
                                     className: 'poppyscan-rank-label'});
    }
    m.addTo(markers);
  });
  markers.addTo(map); overlays['Targets (rank)'] = markers;
  var many = data.targets.features.length > labelled;
  L.control.layers(null, overlays, {collapsed: false}).addTo(map);
  L.control.scale({imperial: false}).addTo(map);
  var legend = L.control({position: 'bottomright'});
  legend.onAdd = function () {
    var d = L.DomUtil.create('div', 'poppyscan-legend');
    d.innerHTML = '<b>' + esc(data.title) + '</b><br>' +
      '<span class="sw" style="background:#ff2d2d;border-radius:50%"></span>target (number = rank' +
      (many ? ', first ' + labelled + ' numbered' : '') + ')<br>' +
      '<span class="sw" style="border:2px solid #ffeb00"></span>target outline<br>' +
      '<span class="sw" style="background:#999999;opacity:.6"></span>blind area (no clear view)<br>' +
      '<span class="sw" style="background:#808080"></span>masked pixels<br>' +
      '<small>' + esc(data.subtitle) + '</small>';
    return d;
  };
  legend.addTo(map);
  if (data.targets.features.length) {
    var tb = polys.getBounds();
    bounds = bounds ? bounds.extend(tb) : tb;
  }
  if (bounds && bounds.isValid()) {
    // the view opens with the whole survey clear of the legend and the layer switch
    // (at most 40 % of a small screen each way, or the survey would not fit)
    var size = map.getSize();
    var right = Math.min(legend.getContainer().offsetWidth, 0.4 * size.x);
    var bottom = Math.min(legend.getContainer().offsetHeight, 0.4 * size.y);
    map.fitBounds(bounds, {paddingTopLeft: [20, 20],
                           paddingBottomRight: [right + 20, bottom + 20]});
  } else { map.setView([0, 0], 2); }
  document.body.setAttribute('data-poppyscan-markers', String(data.targets.features.length));
})();
"""

_PAGE_CSS = """
html, body { height: 100%; margin: 0; }
#map { height: 100%; width: 100%; background: #222; }
.poppyscan-legend { background: rgba(255,255,255,.92); padding: 6px 9px; font: 13px/1.5 sans-serif;
  border-radius: 4px; box-shadow: 0 1px 4px rgba(0,0,0,.4); }
.poppyscan-legend .sw { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
  vertical-align: -2px; box-sizing: border-box; }
.poppyscan-popup th { text-align: left; padding-right: 8px; font-weight: 600; }
.poppyscan-popup td, .poppyscan-popup th { font: 12px sans-serif; vertical-align: top; }
.leaflet-tooltip.poppyscan-rank-label { background: rgba(0,0,0,.75); color: #ffeb00; border: 0;
  font: bold 12px sans-serif; padding: 1px 4px; box-shadow: none; }
.leaflet-tooltip.poppyscan-rank-label::before { display: none; }
"""


def map_html(rgb: np.ndarray | None, transform: Any, crs: Any, targets: TargetList, *,
             title: str = "poppyscan targets") -> str:
    """The self-contained Leaflet page as text (see :func:`write_map_html`)."""
    image, bounds = (None, None)
    if rgb is not None:
        image, bounds = _web_mercator_png(rgb, transform, crs)
    n = len(targets.targets)
    data = {
        "title": title,
        "subtitle": f"{n} targets, WGS84; image: flowering-window false colour (2-98 % stretch)",
        "image": image, "image_bounds": bounds, "max_labels": MAP_MAX_LABELS,
        "targets": targets_feature_collection(targets),
        "blind": blind_areas_feature_collection(targets),
    }
    leaflet_css = (VENDOR / "leaflet.css").read_text(encoding="utf-8")
    leaflet_js = (VENDOR / "leaflet.js").read_text(encoding="utf-8")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        "<!-- Leaflet 1.9.4, BSD-2-Clause, (c) 2010-2023 Volodymyr Agafonkin, "
        "(c) 2010-2011 CloudMade; inlined so the page works offline -->",
        f"<style>\n{leaflet_css}\n</style>",
        f"<style>{_PAGE_CSS}</style>",
        "</head><body>",
        '<div id="map"></div>',
        f'<script type="application/json" id="poppyscan-data">{_script_json(data)}</script>',
        f"<script>\n{leaflet_js}\n</script>",
        f"<script>{_MAP_JS.replace('__MARKER__', MARKER_CLASS)}</script>",
        "</body></html>",
        "",
    ])


def write_map_html(path: Path, rgb: np.ndarray, transform: Any, crs: Any,
                   targets: TargetList) -> Path:
    """Write a self-contained ``map.html`` (Leaflet, image and data inlined; no network)."""
    return write_text_atomic(path, map_html(rgb, transform, crs, targets))
