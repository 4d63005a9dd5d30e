"""One grid: every acquisition (and a DEM) aligned onto a common grid, lazily.

The target grid (``pipeline.ingest.survey_grid``) has the first product's CRS and pixel
lattice over the ground all the products cover. Arrays already on it pass
through untouched; others are reprojected with odc-geo's dask-aware ``xr_reproject``
(reflectance by nearest neighbour, or by the average of the finer pixels when an image is
finer than the grid; DEMs bilinear; categorical layers such as SCL nearest).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyproj
import shapely
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_reproject
from rasterio.crs import CRS

from pipeline.bands import CATEGORICAL_BANDS


def pixel_metres(transform: Affine, crs) -> float:
    """Side of a square of one pixel's ground area, in metres: in a geographic CRS from the
    WGS84 ellipsoid's metres per degree at the grid's first row (a degree of longitude is
    cos(latitude) of one of latitude: at 60 N a 10 m pixel is 0.00018 x 0.00009 degrees, and
    111 km per degree had made it 20 m); in a projected CRS its unit (the grid's own pixel
    width, as inspect reports)."""
    if crs is None or not crs.is_geographic:
        return abs(transform.a)
    a, e2 = 6_378_137.0, 0.00669437999014
    phi = np.radians(np.clip(transform.f, -90, 90))
    w = 1 - e2 * np.sin(phi) ** 2
    east = np.pi / 180 * a * np.cos(phi) / np.sqrt(w)           # metres per degree
    north = np.pi / 180 * a * (1 - e2) / w ** 1.5
    return float(np.sqrt(abs(transform.a) * east * abs(transform.e) * north))


@dataclass(frozen=True)
class Grid:
    crs: CRS
    transform: Affine
    height: int
    width: int

    @classmethod
    def of(cls, da: xr.DataArray) -> Grid:
        return cls(da.rio.crs, da.rio.transform(), da.sizes["y"], da.sizes["x"])

    @property
    def resolution(self) -> float:
        return float(abs(self.transform.a))

    @property
    def footprint(self):
        """The ground the grid covers, a polygon of its four corners (a rotated grid's too:
        two corners made a rotated flight's box, and the flight 100 % 'outside the grid')."""
        t, w, h = self.transform, self.width, self.height
        return shapely.Polygon([t * (0, 0), t * (w, 0), t * (w, h), t * (0, h)]).normalize()

    def metres_per_unit(self) -> tuple[float, float]:
        """Metres per CRS unit along x and y, to turn settings in metres into the grid's
        units: a projected CRS's unit (the metre, a foot) both ways; in a geographic CRS a
        degree of longitude and one of latitude, measured on the CRS's ellipsoid at the grid's
        centre (a local scale for the metres to kilometres of buffers and validation blocks
        over one scene, not a geodesic measure). No CRS: metres."""
        if self.crs is None:
            return 1.0, 1.0
        crs = pyproj.CRS.from_user_input(self.crs)
        if not crs.is_geographic:
            unit = float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0
            return unit, unit
        lon, lat = self.transform * (self.width / 2, self.height / 2)
        geod, d = crs.get_geod(), 0.01      # degrees
        east = geod.inv(lon - d / 2, lat, lon + d / 2, lat)[2] / d
        north = geod.inv(lon, lat - d / 2, lon, lat + d / 2)[2] / d
        return float(east), float(north)

    def geobox(self) -> GeoBox:
        return GeoBox((self.height, self.width), self.transform, self.crs.to_wkt())

    def same_as(self, other: Grid) -> bool:
        """Same CRS and shape, transforms equal to a thousandth of a pixel (an absolute
        tolerance in CRS units would call two 5 cm grids in degrees, 4.5e-7 degrees a pixel,
        the same when they lie pixels apart)."""
        if not (self.crs == other.crs and self.height == other.height
                and self.width == other.width):
            return False
        tol = 1e-3 * min(abs(self.transform.a), abs(self.transform.e))  # at the far corner too
        a, b, c, d, e, f = (x - y for x, y in zip(self.transform[:6], other.transform[:6]))
        return (abs(c) <= tol and abs(f) <= tol
                and max(abs(a), abs(b), abs(d), abs(e)) * max(self.width, self.height) <= tol)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone holding (lon, lat) (longitude 180 in zone 60)."""
    zone = min(max(int(np.floor((lon + 180.0) / 6.0)) + 1, 1), 60)
    return (32600 if lat >= 0 else 32700) + zone


#: a projected CRS whose scale at the scene centre differs from 1 by more than this is not
#: worked in: Web Mercator (1 / cos(latitude): +15 % per axis, +33 % in area at 30 N)
MAX_SCALE_ERROR = 0.01


def true_scale_grid(grid: Grid) -> tuple[Grid, float] | None:
    """For a grid in a projected CRS whose units are far from ground metres at its centre
    (Web Mercator), the UTM grid of the same ground with the same ground pixel size, and the
    CRS's scale factor there; None for any other grid (geographic grids are measured
    geodesically, UTM and national grids are within a percent)."""
    if grid.crs is None:
        return None
    crs = pyproj.CRS.from_user_input(grid.crs)
    if crs.is_geographic:
        return None
    x, y = grid.transform * (grid.width / 2, grid.height / 2)
    lon, lat = pyproj.Transformer.from_crs(crs, 4326, always_xy=True).transform(x, y)
    try:
        f = pyproj.Proj(crs).get_factors(lon, lat)
        unit = float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0
        scale = max(f.parallel_scale, f.meridional_scale) / unit
    except Exception:  # noqa: BLE001 - a CRS pyproj cannot take factors of: leave it
        return None
    if not np.isfinite(scale) or abs(scale - 1) <= MAX_SCALE_ERROR:
        return None
    from rasterio.transform import array_bounds
    from rasterio.warp import calculate_default_transform
    dst = CRS.from_epsg(utm_epsg(lon, lat))
    pixel = abs(grid.transform.a) / scale
    tf, w, h = calculate_default_transform(grid.crs, dst, grid.width, grid.height,
                                           *array_bounds(grid.height, grid.width,
                                                         grid.transform), resolution=pixel)
    return Grid(dst, tf, int(h), int(w)), float(scale)


def _reproject(da: xr.DataArray, grid: Grid, resampling: str) -> xr.DataArray:
    src = da.odc.assign_crs(da.rio.crs.to_wkt()) if hasattr(da, "odc") else da
    out = xr_reproject(src, grid.geobox(), resampling=resampling, dst_nodata=np.nan)
    out = out.rename({out.odc.spatial_dims[0]: "y", out.odc.spatial_dims[1]: "x"}) \
        if tuple(out.odc.spatial_dims) != ("y", "x") else out
    out = out.drop_vars([c for c in out.coords if c not in ("band", "y", "x")])
    out = out.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    out.attrs = dict(da.attrs)
    return out.astype("float32")


#: an image whose pixels are this much finer than the grid's (per axis) is averaged onto it
FINER = 1.5


def ground_pixel(src: Grid, dst: Grid) -> float:
    """Side of ``src``'s mean pixel in ``dst``'s CRS units (its footprint carried into that
    CRS), to compare pixel sizes across CRSs (Web Mercator units are not ground metres)."""
    if src.crs is None or dst.crs is None or src.crs == dst.crs:
        return float(np.sqrt(abs(src.transform.determinant)))
    to = pyproj.Transformer.from_crs(src.crs, dst.crs, always_xy=True).transform
    edge = src.footprint.segmentize(max(src.width, src.height) * src.resolution / 16)
    carried = shapely.transform(edge, lambda c: np.column_stack(to(c[:, 0], c[:, 1])))
    return float(np.sqrt(carried.area / (src.width * src.height)))


def reflectance_resampling(src: Grid, dst: Grid) -> str:
    """How reflectance goes onto another grid: ``average`` of the image's pixels when they are
    finer than the grid's (a 2.5 cm flight on a 5 cm survey grid; bilinear and nearest would
    sample a few of them), else ``nearest``: each grid pixel keeps one measured value, so the
    texture and flower-blob contrasts of drone pixels and the peak of a plot within a 10 m
    pixel stay as they were measured (bilinear averaged four neighbours: a Web Mercator flight
    regridded to UTM at its own pixel size had 4.1 % of its ground flagged against 12.6 % for
    the same flight in UTM). A pixel moves by at most half a pixel."""
    grid_side = float(np.sqrt(abs(dst.transform.determinant)))
    return "average" if ground_pixel(src, dst) * FINER < grid_side else "nearest"


def align(da: xr.DataArray, grid: Grid) -> xr.DataArray:
    """``da`` (band, y, x) or (y, x) on ``grid``: reflectance as ``reflectance_resampling``
    says, categorical bands by nearest neighbour, a (y, x) layer (a DEM) bilinear."""
    src = Grid.of(da)
    if src.same_as(grid):
        return da
    if "band" not in da.dims:
        return _reproject(da, grid, "bilinear")
    names = da["band"].values.tolist()
    cat = [b for b in names if b in CATEGORICAL_BANDS]
    refl = [b for b in names if b not in CATEGORICAL_BANDS]
    parts = []
    if refl:
        parts.append(_reproject(da.sel(band=refl), grid, reflectance_resampling(src, grid)))
    if cat:
        parts.append(_reproject(da.sel(band=cat), grid, "nearest"))
    out = xr.concat(parts, dim="band").sel(band=names) if len(parts) > 1 else parts[0]
    out = out.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    out.attrs = dict(da.attrs)
    return out
