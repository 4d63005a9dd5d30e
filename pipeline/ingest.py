"""Ingest: files -> one lazy Scene (time, band, y, x) on one grid.

``open_scene`` expands the paths, asks each reader in ``pipeline.readers`` whether it can read
a path, aligns every acquisition onto one survey grid (the first one's CRS and pixels, over the
ground all of them cover), keeps the bands all dates share, refuses products of another place,
mosaics products of the same day (adjacent tiles of one
pass) into one date, sorts by time and clips to an AOI. Nothing is computed here.
"""
from __future__ import annotations

import functools
import glob
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as darr
import numpy as np
import rasterio
import rioxarray
import shapely
import xarray as xr
from affine import Affine
from rasterio import features as rfeatures
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from pipeline.bands import SCENE_DIMS, canonical_name, check_scene, order_bands
from pipeline.errors import CRSError, InputError
from pipeline.grid import Grid, align, pixel_metres, true_scale_grid
from pipeline.readers import readers
from pipeline.readers.multiband import has_date

log = logging.getLogger(__name__)

_SKIP_STEMS = ("dem",)
_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".zip", ".safe"}
#: the reader of the input contract's multi-band GeoTIFFs (any other reader that claims a
#: file knows it for an image of its kind: a per-band file, a drone orthomosaic)
_CONTRACT = "pipeline.readers.multiband"


def expand_patterns(paths: Sequence[Path]) -> list[Path]:
    """Paths with glob patterns expanded (a quoted ``'scene/S2_*.tif'``, or a shell that does
    not expand them); a path that exists is taken as it is, whatever its characters."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.exists() or not glob.has_magic(str(p)):
            out.append(p)
            continue
        found = sorted(glob.glob(str(p), recursive=True))   # ** : any depth
        if not found:
            raise InputError(f"{p}: the pattern matches no file; check the folder and the "
                             "file names")
        out += map(Path, found)
    return out


#: files that are never images (vector, table, text, preview): left out of a list of images
#: given with images, as ``scene/*`` brings them
_NOT_RASTER_SUFFIXES = frozenset({
    ".geojson", ".json", ".gpkg", ".shp", ".shx", ".dbf", ".prj", ".cpg", ".kml", ".kmz",
    ".fgb", ".csv", ".txt", ".md", ".yaml", ".yml", ".html", ".pdf", ".png", ".jpg", ".jpeg",
    ".xml", ".ovr", ".log"})


def expand_paths(paths: Sequence[Path], dem: Path | None = None) -> list[Path]:
    """Files and folders -> the products to read (a folder a reader claims stays whole).

    A DEM among them (the ``dem`` file, or one named ``dem.*``, as in ``--images scene/*.tif``
    with the DEM in the scene's folder) is not an image and is left out; so is, when it came
    with images (as ``scene/*`` brings them), a GeoTIFF that is not an image
    (``_not_an_image``: a class map, a cloud mask) or a file that is never one (labels,
    truth, notes: ``_NOT_RASTER_SUFFIXES``)."""
    mods = readers()
    out: list[Path] = []
    named_side: dict[Path, str] = {}
    dems: list[Path] = []
    dem_file = Path(dem).resolve() if dem is not None else None

    def is_dem(f: Path) -> bool:
        return f.stem.lower() in _SKIP_STEMS or f.resolve() == dem_file

    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_file() and is_dem(p):
            log.info("%s: a DEM, not an image; left out of the images", p)
            dems.append(p)
            continue
        if p.is_file() and p.suffix.lower() in _NOT_RASTER_SUFFIXES:
            # `--images scene/*` brings the scene's labels, truth and notes along
            named_side[p] = f"a {p.suffix.lower()} file, not a raster image"
            continue
        if p.is_file() and not any(m.can_read(p) for m in mods if m.__name__ != _CONTRACT) \
                and (why := _not_an_image(p)):
            named_side[p] = why
            continue
        if p.is_dir() and not any(m.can_read(p) for m in mods):
            found = sorted(c for c in p.iterdir()
                           if c.suffix.lower() in _RASTER_SUFFIXES
                           and not c.name.startswith(".") and not is_dem(c))
            side = {c: why for c in found if (why := _not_an_image(c))}
            for c, why in side.items():
                log.warning("%s: left out of the images (%s)", c, why)
            found = [c for c in found if c not in side]
            if not found:
                # a folder of product folders (e.g. per-band folders of several dates)
                found = sorted(c for c in p.iterdir() if c.is_dir()
                               and not c.name.startswith(".")
                               and any(m.can_read(c) for m in mods))
            if not found and side:
                first = next(iter(side))
                raise InputError(f"{p}: no image of the scene in the folder ({first.name}: "
                                 f"{side[first]}{', ...' if len(side) > 1 else ''}); name the "
                                 "bands (band descriptions) and put the date (YYYYMMDD) in the "
                                 "file names or an ACQUISITION_DATE tag in the files")
            if not found:
                raise InputError(f"{p}: folder holds no readable images (.tif, .jp2, .zip, "
                                 ".SAFE)")
            out.extend(found)
        else:
            out.append(p)
    if named_side and not out:   # nothing else given: the reader says what is wrong with it
        return list(named_side)
    if dems and not out:
        raise InputError(f"{dems[0]}: a DEM (named dem.* or given as --dem), not an image; "
                         "give the images too")
    for c, why in named_side.items():
        log.warning("%s: left out of the images (%s)", c, why)
    return out


def _not_an_image(path: Path) -> str | None:
    """Why a GeoTIFF found in an images folder is not an image of the scene (a class map, a
    cloud mask, a slope or elevation raster beside the dates), else None. Left out: a raster
    without one recognised band description that has fewer than three bands (dated or not)
    or no date (tag, file or folder name); an image that lacks only one of them is still
    read, and refused with its own reason."""
    if path.suffix.lower() not in {".tif", ".tiff"}:
        return None
    try:
        with rasterio.open(path) as src:
            tags, descriptions = src.tags(), src.descriptions
    except (OSError, RasterioIOError):
        return None                      # damaged: the reader names the file
    if any(d and canonical_name(d) for d in descriptions):
        return None
    if len(descriptions) < 3:   # no camera has fewer bands: a mask, a DEM, a class map
        return f"{len(descriptions)} band(s), none with a recognised name: not an image"
    if has_date(path, tags):
        return None
    return "no date and no recognised band: not an image of the scene"


def read_products(paths: Sequence[Path], sensor: Any | None = None,
                  chunks: int = 1024, dem: Path | None = None,
                  prefer: str | None = None) -> list[xr.DataArray]:
    mods = readers()
    arrays: list[xr.DataArray] = []
    seen: set[tuple] = set()
    for p in expand_paths(paths, dem):
        mod = next((m for m in mods if m.can_read(p)), None)
        if mod is None:
            raise InputError(f"{p}: unsupported input; give multi-band GeoTIFFs, Sentinel-2 "
                             ".SAFE/.zip products, per-band folders or drone orthomosaics")
        # absolute: the pixels are read where the graph runs (a cluster's workers do not
        # start in this folder)
        for product in mod.read(p.absolute(), sensor, chunks, prefer=prefer):
            # a drone flight's per-band files given one by one (flight/result_*.tif) each
            # read the whole flight: one product (it was the flight N times, mosaicked);
            # products of one source and day on other ground (a SAFE's granules, two tiles
            # or flights in one folder) are all kept, to be mosaicked
            key = (Path(str(product.attrs.get("source", p))).resolve(),
                   product.attrs.get("time"), str(product.rio.crs),
                   tuple(product.rio.transform()), product.shape[-2:])
            if key not in seen:
                seen.add(key)
                arrays.append(product)
    if not arrays:
        raise InputError("no images given")
    return arrays


def first_image_facts(paths: Sequence[Path], dem: Path | None = None) -> tuple[float, list[str]]:
    """Pixel size in metres (degrees at ~111 km) and canonical band names of the first image,
    read without pixels."""
    files = expand_paths(paths, dem)
    if not files:
        raise InputError("no images given")
    first = read_products(files[:1])[0]
    return pixel_metres(first.rio.transform(), first.rio.crs), first["band"].values.tolist()


def _aoi_block(transform, geom: BaseGeometry, block_info=None) -> np.ndarray:
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    tf = window_transform(Window(x0, y0, x1 - x0, y1 - y0), transform)
    # pixels whose centre is inside: a target over pixels the AOI only grazes would lie
    # mostly outside it
    return rfeatures.geometry_mask([geom], out_shape=(y1 - y0, x1 - x0), transform=tf,
                                   invert=True, all_touched=False)


def aoi_mask(grid: Grid, geom: BaseGeometry, chunks: int) -> darr.Array:
    """Lazy boolean (y, x) mask of ``geom`` (in the grid CRS), rasterised chunk by chunk
    (a module-level function with its arguments, not a closure: the graph is pickled to
    worker processes with --scheduler processes)."""
    return darr.map_blocks(functools.partial(_aoi_block, grid.transform, geom), dtype=bool,
                           chunks=darr.core.normalize_chunks(chunks, (grid.height, grid.width)))


def _footprint_on(da: xr.DataArray, grid: Grid):
    """``da``'s footprint in the grid's CRS: its own corners in the same CRS (exact for a
    rotated image), else its bounds (``_bounds_on``)."""
    if da.rio.crs == grid.crs:
        return Grid.of(da).footprint
    return _bounds_on(da, grid)


def _bounds_on(da: xr.DataArray, grid: Grid):
    """``da``'s bounds as a box in the grid's CRS, None without a transformation between the
    CRSs (another place)."""
    try:
        bounds = transform_bounds(da.rio.crs, grid.crs, *da.rio.bounds(), densify_pts=21)
    except Exception:  # noqa: BLE001  (no transformation between the CRSs: another place)
        return None
    return box(*bounds) if all(np.isfinite(bounds)) else None


def _coverage(da: xr.DataArray, grid: Grid) -> float:
    """Share of the grid's footprint inside ``da``'s bounds (0 when they do not overlap)."""
    target = grid.footprint
    bounds = _bounds_on(da, grid)
    return 0.0 if bounds is None else float(bounds.intersection(target).area / target.area)


def survey_grid(products: Sequence[xr.DataArray]) -> Grid:
    """The grid the images are surveyed on: the first image's CRS and pixel lattice, over the
    ground all of them cover (adjacent tiles given together are surveyed together; a date
    covering part of it is no data elsewhere). A pixel belongs to it when its centre lies
    inside an image's bounds, so a date misregistered by half a pixel adds no column."""
    first = Grid.of(products[0])
    tf = first.transform
    if tf.b or tf.d:          # a rotated grid: its own extent
        return first
    boxes = [b for p in products if (b := _bounds_on(p, first)) is not None]
    x0, y0, x1, y1 = shapely.union_all(boxes).bounds
    inv, eps = ~tf, 1e-6
    cols = sorted(c for c, _ in (inv * (x0, y0), inv * (x1, y1)))
    rows = sorted(r for _, r in (inv * (x0, y0), inv * (x1, y1)))
    c0, c1 = int(np.ceil(cols[0] - 0.5 + eps)), int(np.floor(cols[1] - 0.5 - eps))
    r0, r1 = int(np.ceil(rows[0] - 0.5 + eps)), int(np.floor(rows[1] - 0.5 - eps))
    c0, r0 = min(c0, 0), min(r0, 0)                   # never smaller than the first image
    c1, r1 = max(c1, first.width - 1), max(r1, first.height - 1)
    return Grid(first.crs, tf * Affine.translation(c0, r0), r1 - r0 + 1, c1 - c0 + 1)


def _outside_grid(products: Sequence[xr.DataArray], grid: Grid) -> float:
    """Share of the ground the images cover that lies outside the grid, warned about (only a
    rotated first grid, which is not extended, leaves any; the half pixel beyond the last
    pixel centre is inside)."""
    target = grid.footprint.buffer(grid.resolution / 2, join_style="mitre")
    placed = [(b, p) for p in products if (b := _footprint_on(p, grid)) is not None]
    union = shapely.union_all([b for b, _ in placed]) if placed else target
    share = float(union.difference(target).area / union.area) if union.area else 0.0
    if share > 0.001:
        worst = max(placed, key=lambda bp: bp[0].difference(target).area)[1]
        log.warning("%.0f%% of the ground the images cover lies outside the survey grid (the "
                    "extent of %s, a rotated grid) and is not surveyed, e.g. part of %s; "
                    "survey one tile at a time", 100 * share,
                    products[0].attrs.get("source", "the first image"),
                    worst.attrs.get("source", "an image"))
    return round(share, 4)


def check_earth_crs(products: Sequence[xr.DataArray]) -> None:
    """Refuse images in a local (engineering) CRS, not tied to the Earth: a drone mosaic
    exported in "arbitrary" coordinates (no GCPs, no geotags) cannot be placed, so neither
    targets nor a DEM can (it was a traceback from the first transformation)."""
    import pyproj
    seen = set()
    for p in products:
        if p.rio.crs is None or p.rio.crs in seen:   # (no CRS: the readers name the file)
            continue
        seen.add(p.rio.crs)
        name = str(p.rio.crs)
        try:
            crs = pyproj.CRS.from_user_input(p.rio.crs)
            name = crs.name
            local = crs.is_engineering
            pyproj.Transformer.from_crs(crs, 4326, always_xy=True)
        except pyproj.exceptions.ProjError:
            local = True
        if local:
            raise CRSError(f"{p.attrs.get('source', 'an image')}: its CRS ({name}) is a local "
                           "coordinate system, not tied to the Earth; georeference the image "
                           "(e.g. export the orthomosaic in UTM, or gdal_edit.py -a_srs "
                           "EPSG:<code> if its coordinates are in one)")


def check_one_place(products: Sequence[xr.DataArray]) -> None:
    """Refuse images of more than one place: each must overlap or touch the ground of the
    others (adjacent tiles chain: A-B-C with C apart from A is one place). Aligning another
    place would give a date of nothing but NaN and a survey grid spanning both."""
    first = Grid.of(products[0])
    touch = first.resolution / 2        # tiles that abut, up to rounding
    places: list[tuple[BaseGeometry, list[int]]] = []
    for i, p in enumerate(products):
        b = _bounds_on(p, first)
        b = b.buffer(touch, join_style="mitre") if b is not None else None
        hit = [k for k, (g, _) in enumerate(places) if b is not None and g.intersects(b)]
        merged = ([b] if b is not None else []) + [places[k][0] for k in hit]
        members = [i] + [m for k in hit for m in places[k][1]]
        places = [pl for k, pl in enumerate(places) if k not in hit]
        # no bounds in the first image's CRS (no transformation): a place of its own
        places.append((shapely.union_all(merged) if merged else shapely.Polygon(), members))
    if len(places) > 1:
        other = min(min(m) for _, m in places if 0 not in m)
        name = products[0].attrs.get("source", "the first image")
        raise InputError(f"{products[other].attrs.get('source', 'an image')} does not overlap "
                         f"{name} (nor an image touching it): the images show different "
                         "places; give the images of one place (e.g. one product or patch "
                         "folder, or adjacent tiles) at a time")


def open_scene(paths: Sequence[Path], sensor: Any | None = None, *, chunks: int = 1024,
               aoi: BaseGeometry | None = None, dem: Path | None = None,
               prefer: str | None = None) -> xr.DataArray:
    """Read ``paths`` into one lazy Scene (time, band, y, x), float32, NaN where no data.

    ``aoi`` must be in the CRS of the grid (see ``pipeline.aoi.read_aoi``); ``dem``, when
    listed among ``paths``, is left out; ``prefer``: the drone camera to take where a file's
    band names fit more than one (P4M and RedEdge-MX both call a band 'rededge').
    """
    products = read_products(paths, sensor, chunks, dem, prefer)
    check_earth_crs(products)
    check_one_place(products)
    grid = survey_grid(products)
    regrid = true_scale_grid(grid)
    if regrid is not None:
        grid, scale = regrid
        log.warning("images in %s: one of its units is %.3f ground metres at the scene "
                    "centre, not 1; aligned onto %s at %.4g m pixels so that areas and "
                    "distances are in metres", products[0].rio.crs.to_string(), 1 / scale,
                    grid.crs.to_string(), grid.resolution)
    no_scl = [i for i, p in enumerate(products) if "scl" not in p["band"].values]
    if no_scl and len(no_scl) < len(products):
        # SCL where a date has it; the dates without it are masked by the spectral test
        log.info("%d of %d images have no SCL layer; their clouds are found by the spectral "
                 "test", len(no_scl), len(products))
        products = [_without_scl(p) if i in no_scl else p for i, p in enumerate(products)]
    shared = set(products[0]["band"].values.tolist())
    for p in products[1:]:
        shared &= set(p["band"].values.tolist())
    dropped = set().union(*(set(p["band"].values.tolist()) for p in products)) - shared
    # band -> the images that lack it (detect names them when a model needs the band)
    lacking = {b: [str(p.attrs.get("source", "an image")) for p in products
                   if b not in p["band"].values.tolist()] for b in sorted(dropped)}
    sensors = {p.attrs.get("sensor") for p in products}
    if len(sensors) > 1:
        first = {}
        for p in products:
            first.setdefault(str(p.attrs.get("sensor")), p.attrs.get("source", "an image"))
        which = ", ".join(f"{k} ({v})" for k, v in sorted(first.items()))
        raise InputError(f"images come from different sensors: {which}; survey one sensor at "
                         "a time")
    if not shared:
        raise InputError("the images share no band; check that they come from one sensor")
    outside = _outside_grid(products, grid)
    if dropped:
        log.info("bands not present on every date are dropped: %s", sorted(dropped))
    bands = order_bands(list(shared))
    aligned = [align(p.sel(band=bands), grid).drop_vars("spatial_ref", errors="ignore")
               for p in products]
    times = np.array([p.attrs["time"] for p in products], dtype="datetime64[ns]")
    groups = same_day_groups(times)
    layers = [mosaic([aligned[i] for i in g]) for g in groups]
    first = [g[0] for g in groups]
    scene = xr.concat(layers, dim="time", join="override", combine_attrs="drop")
    scene = scene.chunk({"time": -1, "band": -1, "y": chunks, "x": chunks})
    scene = scene.assign_coords(
        time=times[first],
        sun_zenith=("time", np.array([products[i].attrs.get("sun_zenith", np.nan)
                                      for i in first], dtype="float64")),
        sun_azimuth=("time", np.array([products[i].attrs.get("sun_azimuth", np.nan)
                                       for i in first], dtype="float64")),
        source=("time", ["; ".join(str(products[i].attrs.get("source", "")) for i in g)
                         for g in groups]),
    ).transpose(*SCENE_DIMS)
    scene = scene.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    # a JSON string, not a dict: attrs must stay writable as raster tags or netCDF attributes
    scene.attrs = {"sensor": sensors.pop(), "dropped_bands": json.dumps(lacking),
                   "unsurveyed": json.dumps({"images_outside_grid_share": outside})}
    if aoi is not None:
        scene = clip_to_aoi(scene, aoi, chunks)
    check_scene(scene, "ingest")
    return scene


def _without_scl(product: xr.DataArray) -> xr.DataArray:
    """``product`` with an empty (NaN) SCL layer, for a date whose file has none."""
    empty = xr.full_like(product.isel(band=[0]), np.nan).assign_coords(band=["scl"])
    return xr.concat([product, empty], dim="band", combine_attrs="override")


def same_day_groups(times: np.ndarray) -> list[list[int]]:
    """Indices of the products grouped by acquisition day, in time order (stable)."""
    order = np.argsort(times, kind="stable")
    days = times.astype("datetime64[D]")
    groups: list[list[int]] = []
    for i in order:
        if groups and days[groups[-1][0]] == days[i]:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return groups


def mosaic(layers: list[xr.DataArray]) -> xr.DataArray:
    """One date from products of the same day (adjacent tiles of one pass, or flights): each
    pixel from the first product that has data there, so an overlap is one observation, not
    two (evidence counts observations)."""
    out = layers[0]
    if len(layers) > 1:
        log.info("%d products of %s mosaicked into one date", len(layers),
                 str(out.attrs.get("time", ""))[:10])
    for other in layers[1:]:
        out = out.where(np.isfinite(out.isel(band=0, drop=True)), other)
    return out


#: a polygon edge this close (in pixels) to a pixel edge counts as on it (reprojection noise)
_SNAP_PX = 1e-3


def _holds_a_pixel_centre(transform: Affine, win: tuple[slice, slice],
                          aoi: BaseGeometry) -> bool:
    """Whether the centre of a pixel of the window ``win`` lies inside ``aoi``."""
    from rasterio.features import geometry_mask
    rows, cols = win
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    return bool(geometry_mask([aoi], shape, transform * Affine.translation(cols.start,
                                                                          rows.start),
                              invert=True).any())


def aoi_window(grid: Grid, aoi: BaseGeometry) -> tuple[slice, slice] | None:
    """Rows and columns of the pixels the AOI overlaps (None when it overlaps none).

    Decided geometrically, so no pixel is read: the AOI must share area with the grid's
    footprint, and the window is the AOI's bounds in pixels, snapped to pixel edges within
    ``_SNAP_PX`` so an AOI drawn on pixel edges (in another CRS) gains no sliver row or column.
    """
    part = aoi.intersection(grid.footprint)
    if part.is_empty or part.area <= 0:
        return None
    minx, miny, maxx, maxy = part.bounds
    inv = ~grid.transform
    cols, rows = zip(*(inv * (x, y) for x, y in ((minx, miny), (minx, maxy),
                                               (maxx, miny), (maxx, maxy))))
    c0 = max(0, int(np.floor(min(cols) + _SNAP_PX)))
    c1 = min(grid.width, int(np.ceil(max(cols) - _SNAP_PX)))
    r0 = max(0, int(np.floor(min(rows) + _SNAP_PX)))
    r1 = min(grid.height, int(np.ceil(max(rows) - _SNAP_PX)))
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _at_least(win: slice, n: int, size: int) -> slice:
    """``win`` widened about its middle to ``n`` pixels, within ``0..size``."""
    if win.stop - win.start >= n or size < n:
        return win
    start = min(max(0, win.start - (n - (win.stop - win.start) + 1) // 2), size - n)
    return slice(start, start + n)


def clip_to_aoi(scene: xr.DataArray, aoi: BaseGeometry, chunks: int,
                margin: int | None = None) -> xr.DataArray:
    """Crop to the AOI's bounding box and set pixels outside the polygon to NaN (lazily).

    ``margin`` (pixels; detect): crop ``margin`` pixels wider on every side where the images
    reach and blank nothing, so that the masks and the neighbourhood features of a pixel
    near the AOI's edge see the ground around it as in a run without the AOI (blanked, a
    spot scored 0.81-0.95 fell to 0.02 under a small AOI). The window the AOI's bounding box
    covers in the crop is ``attrs["aoi_window"]`` (JSON ``[row0, row1, col0, col1]``); the
    caller keeps its outputs to it and to the polygon."""
    if aoi.is_empty:
        raise InputError("the AOI is empty; give a file with at least one polygon")
    win = aoi_window(Grid.of(scene), aoi)
    if win is None:
        raise InputError("the AOI does not overlap the images; check its CRS and extent")
    pixel = abs(scene.rio.transform().determinant)
    inside = aoi.intersection(Grid.of(scene).footprint).area
    if inside < 100 * pixel and not _holds_a_pixel_centre(scene.rio.transform(), win, aoi):
        # every pixel of the survey would be 'without data', blamed on the clouds
        raise InputError(f"the AOI holds no pixel centre of the images (it covers "
                         f"{inside / pixel:.2g} pixel(s) of them): nothing to survey in it; "
                         "draw it larger, over the images (or check its CRS: coordinates "
                         "saved with the wrong CRS shrink or move it)")
    outside = 1 - inside / aoi.area
    if outside > 0.001:
        log.warning("%.0f%% of the AOI lies outside the images (the survey grid) and is not "
                    "surveyed; give images covering it too, or split the AOI",
                    100 * outside)
    # a corridor narrower than 3 px: widened (the pixels outside the polygon stay NaN), so
    # slope has neighbours (a 10 m wide AOI with --dem was refused as a DEM of 1 px)
    win = tuple(_at_least(w, 3, scene.sizes[d]) for w, d in zip(win, ("y", "x")))
    crop = win if margin is None else tuple(
        slice(max(0, w.start - margin), min(scene.sizes[d], w.stop + margin))
        for w, d in zip(win, ("y", "x")))
    clipped = scene.isel(y=crop[0], x=crop[1])
    tf = scene.rio.transform() * Affine.translation(crop[1].start, crop[0].start)
    clipped = clipped.rio.write_transform(tf)
    grid = Grid(scene.rio.crs, tf, clipped.sizes["y"], clipped.sizes["x"])
    if margin is None:
        inside = xr.DataArray(aoi_mask(grid, aoi, chunks), dims=("y", "x"),
                              coords={"y": clipped["y"], "x": clipped["x"]})
        clipped = clipped.where(inside)
    out = clipped.astype("float32").chunk({"time": -1, "band": -1, "y": chunks, "x": chunks})
    out.attrs = dict(scene.attrs)
    if margin is not None:
        out.attrs["aoi_window"] = json.dumps([win[0].start - crop[0].start,
                                              win[0].stop - crop[0].start,
                                              win[1].start - crop[1].start,
                                              win[1].stop - crop[1].start])
    unsurveyed = json.loads(scene.attrs.get("unsurveyed", "{}"))
    unsurveyed["aoi_outside_grid_share"] = round(float(outside), 4)
    out.attrs["unsurveyed"] = json.dumps(unsurveyed)
    return out.rio.write_crs(grid.crs).rio.write_transform(grid.transform)


#: elevations outside these (metres) are a DEM's void fills, not ground
DEM_MIN_M, DEM_MAX_M = -500.0, 9000.0


def _dem_has_data(path: Path, grid: Grid) -> bool:
    """Whether the DEM holds a valid elevation over the grid: a look at <= 128 x 128 points
    of it, warped onto a coarse copy of the grid (without dask: read_dem stays lazy)."""
    from rasterio.vrt import WarpedVRT
    step = max(1, int(np.ceil(max(grid.height, grid.width) / 128)))
    with rasterio.open(path) as src, WarpedVRT(
            src, crs=grid.crs, transform=grid.transform * Affine.scale(step),
            width=-(-grid.width // step), height=-(-grid.height // step)) as vrt:
        z = vrt.read(1, masked=True).astype("float64")
        z = z * (src.scales[0] or 1.0) + (src.offsets[0] or 0.0)
    z = z.filled(np.nan)
    return bool(((z >= DEM_MIN_M) & (z <= DEM_MAX_M)).any())


def read_dem(path: Path, grid: Grid, chunks: int = 1024) -> xr.DataArray:
    """A single-band DEM (metres after its GDAL scale/offset, any CRS) on ``grid``, lazy,
    float32, NaN where no data."""
    try:
        with warnings.catch_warnings():  # a multi-band file (refused below) warns on scales
            warnings.simplefilter("ignore", UserWarning)
            # mask_and_scale: GDAL scale/offset applied (a decimetre DEM stored as uint16)
            dem = rioxarray.open_rasterio(Path(path).absolute(),
                                          chunks={"y": chunks, "x": chunks},
                                          mask_and_scale=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable DEM raster ({exc})") from None
    if dem.rio.crs is None:
        raise InputError(f"{path}: DEM has no CRS; georeference it")
    dem.attrs["source"] = str(path)
    check_earth_crs([dem])
    if dem.sizes["band"] != 1:
        raise InputError(f"{path}: DEM must have one band, it has {dem.sizes['band']}")
    dem = dem.squeeze("band", drop=True).astype("float32")
    # void fills a DEM may hold without declaring them (SRTM's -32768, -9999, 32767): no land
    # lies below the Dead Sea (-430 m) or above Everest (8849 m); read as elevations they gave
    # targets -32700 m and shifted an elevation calendar's phases by years
    dem = dem.where((dem >= DEM_MIN_M) & (dem <= DEM_MAX_M))
    covered = _coverage(dem, grid)
    if covered <= 0:
        raise InputError(f"{path}: the DEM does not cover the images; give a DEM of the same "
                         "area")
    if covered < 0.999:
        log.warning("%s: the DEM covers %.3g%% of the images; elsewhere elevation is missing",
                    path, 100 * covered)
    if not _dem_has_data(Path(path), grid):
        raise InputError(f"{path}: the DEM has no valid elevation over the images (no data, "
                         f"or values outside {DEM_MIN_M:g}..{DEM_MAX_M:g} m); give a DEM "
                         "with data there")
    out = align(dem, grid)
    return out.chunk({"y": chunks, "x": chunks})
