"""Fetch Sentinel-2 L2A acquisitions (and optionally the Copernicus DEM) for an AOI.

Sentinel Hub and the Copernicus Data Space Ecosystem (CDSE) run the same APIs; the base and
token URLs choose between them. The steps:

1. validate the AOI file, the window and the options (nothing is written before this);
2. authenticate (a rejected or missing credential is a :class:`CredentialsError`);
3. Catalog API search over the AOI and the window; dates none of whose scenes has a cloud
   cover of at most ``max_cloud`` are skipped (and listed as such in ``fetch.json``);
4. one Process API request per date and per grid tile (tiles stay within the 2500-pixel limit)
   for the 12 L2A bands, SCL, ``dataMask`` and the sun angles, harmonised to processing
   baseline 04.00 (offset removed), in the UTM zone of the AOI centroid at ``resolution`` m;
   responses are cached in the sentinelhub ``data_folder`` so a rerun downloads nothing;
5. tiles are mosaicked and written as one multi-band GeoTIFF per date (``S2_YYYYMMDD.tif``,
   the input contract of :mod:`pipeline.geotiff`), ``dem.tif`` with ``dem=True``, and
   ``fetch.json`` last.

Outputs are written into a staging folder inside ``out/.poppyscan`` and moved into ``out`` only
when everything succeeded; a failed run leaves at most the download cache behind.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine

from outputs.atomic import (
    check_can_create,
    first_missing,
    lock_folder,
    uninterrupted,
    unlock_folder,
)
from pipeline.aoi import read_features
from pipeline.bands import S2_BANDS
from pipeline.errors import CredentialsError, CRSError, InputError, PoppyscanError
from pipeline.geotiff import write_multiband
from pipeline.grid import utm_epsg

LOGGER = logging.getLogger(__name__)

#: Sentinel Hub (default) service URL (sentinelhub's own default token URL goes with it).
SH_BASE_URL = "https://services.sentinel-hub.com"
#: Copernicus Data Space Ecosystem service and token URLs.
CDSE_BASE_URL = "https://sh.dataspace.copernicus.eu"
CDSE_TOKEN_URL = (
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
)

#: Largest tile side (pixels) of one Process API request (the API's limit is 2500): 1024
#: keeps the tiles in flight small (at 2500, four tiles of one date were held as bytes and
#: decoded arrays besides the mosaic, ~100 bytes per pixel of the date in all).
MAX_TILE_PX = 1024
#: Coarsest pixel (m) the Process API serves for Sentinel-2 L2A.
MAX_RESOLUTION = 1500.0
#: pixels of one date's grid: each date is mosaicked in memory at ~26 bytes per pixel (13
#: uint16 bands) besides ~0.7 GB for the interpreter and the tiles in flight (measured,
#: docs/fetch.md), so 64 Mpx (an 80 km square at 10 m) needs about 2.4 GB
MAX_GRID_PX = 64_000_000
BYTES_PER_PX = 26
FIXED_BYTES = 0.7 * 2**30
#: Retries of the sentinelhub client for 5xx and connection errors, and the first sleep (s).
MAX_DOWNLOAD_ATTEMPTS = 4
#: seconds a request may go without an answer before it is tried again (sentinelhub's default)
DOWNLOAD_TIMEOUT = 120.0
DOWNLOAD_SLEEP_TIME = 5.0
#: Answers 429 (rate limit) tolerated per request, each after the service's Retry-After.
MAX_RATE_LIMIT_RETRIES = 30
#: Parallel downloads of the tiles of one date.
MAX_THREADS = 4

#: Reflectance bands in the order they are written (canonical order, from pipeline.bands).
REFLECTANCE_BANDS: tuple[str, ...] = tuple(b for b in S2_BANDS if b != "SCL")
#: Band descriptions of the written files.
OUTPUT_BANDS: tuple[str, ...] = (*REFLECTANCE_BANDS, "SCL")
REFLECTANCE_SCALE = 1e-4

_CREDENTIALS_HINT = (
    "set SH_CLIENT_ID and SH_CLIENT_SECRET (an OAuth client of the service named by "
    "--sh-base-url/--sh-token-url) or a sentinelhub profile (SH_PROFILE, `sentinelhub.config`)"
)


class FetchError(PoppyscanError, RuntimeError):
    """The service could not be reached or answered with an error that is not about credentials."""


# --------------------------------------------------------------------------- validation


def parse_window(window: str) -> tuple[dt.date, dt.date]:
    """Parse ``START/END`` (ISO dates, inclusive) into two dates; InputError if malformed."""
    parts = str(window).split("/")
    if len(parts) != 2:
        raise InputError(f"--window {window!r} is not START/END, e.g. 2024-04-01/2024-06-30")
    try:
        start, end = (dt.date.fromisoformat(p.strip()) for p in parts)
    except ValueError:
        import re
        for p in parts:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.strip()):
                try:
                    dt.date.fromisoformat(p.strip())
                except ValueError:
                    raise InputError(f"--window {window!r}: {p.strip()} is not a day of the "
                                     "calendar; check its month and day") from None
        raise InputError(
            f"--window {window!r} has a date that is not ISO YYYY-MM-DD, e.g. 2024-04-01/2024-06-30"
        ) from None
    if start > end:
        raise InputError(f"--window {window!r} starts after it ends; give START/END, START<=END")
    return start, end


def read_aoi(path: Path) -> tuple[Any, str]:
    """The AOI's polygons as one geometry in the file's CRS, and that CRS (pipeline.aoi)."""
    features, crs = read_features(Path(path), what="AOI file")
    aoi = shapely.union_all([f.geometry for f in features])
    if aoi.is_empty or aoi.area <= 0:
        raise InputError(f"{path}: the AOI polygons are empty (zero area)")
    return aoi, crs.to_wkt()


@dataclass(frozen=True)
class Grid:
    """The output grid: UTM CRS, pixel size and extent (north-up)."""

    epsg: int
    resolution: float
    west: float
    north: float
    width: int
    height: int

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.west, 0.0, -self.resolution, self.north)

    def tiles(self, max_px: int) -> list[tuple[int, int, int, int]]:
        """Split into (col_off, row_off, width, height) windows of at most ``max_px`` per side."""
        nx, ny = math.ceil(self.width / max_px), math.ceil(self.height / max_px)
        tw, th = math.ceil(self.width / nx), math.ceil(self.height / ny)
        return [
            (c, r, min(tw, self.width - c), min(th, self.height - r))
            for r in range(0, self.height, th) for c in range(0, self.width, tw)
        ]

    def tile_bounds(self, tile: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        c, r, w, h = tile
        res = self.resolution
        return (self.west + c * res, self.north - (r + h) * res,
                self.west + (c + w) * res, self.north - r * res)


def make_grid(aoi: Any, aoi_crs: str, resolution: float) -> tuple[Grid, Any, Any]:
    """Grid in the UTM zone of the AOI centroid; also return the AOI in UTM and in WGS 84."""
    import shapely
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError as ProjCRSError

    try:
        src = CRS.from_user_input(aoi_crs)
    except ProjCRSError:
        raise CRSError(f"AOI CRS {aoi_crs!r} is unknown; save the AOI in a standard CRS") from None
    to_wgs = Transformer.from_crs(src, CRS.from_epsg(4326), always_xy=True)
    aoi_wgs = shapely.transform(aoi, to_wgs.transform, interleaved=False)
    centroid = aoi_wgs.centroid
    if not (-180 <= centroid.x <= 180 and -90 <= centroid.y <= 90):
        raise CRSError(f"AOI centroid {centroid.x:.2f},{centroid.y:.2f} is off Earth; fix its CRS")
    west, _, east, _ = aoi_wgs.bounds
    if east - west > 180:
        raise InputError("the AOI crosses the 180th meridian (longitudes from "
                         f"{west:.2f} to {east:.2f}); split it into one AOI on each side")
    epsg = utm_epsg(centroid.x, centroid.y)
    to_utm = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(epsg), always_xy=True)
    # densify so long straight edges in lon/lat stay right in UTM
    aoi_utm = shapely.transform(shapely.segmentize(aoi_wgs, 0.001), to_utm.transform,
                                interleaved=False)
    minx, miny, maxx, maxy = aoi_utm.bounds
    res = resolution
    west, south = math.floor(minx / res) * res, math.floor(miny / res) * res
    east, north = math.ceil(maxx / res) * res, math.ceil(maxy / res) * res
    width = max(int(round((east - west) / resolution)), 1)
    height = max(int(round((north - south) / resolution)), 1)
    return Grid(epsg, float(resolution), west, north, width, height), aoi_utm, aoi_wgs


# --------------------------------------------------------------------------- service access


def _sh_config(base_url: str | None, token_url: str | None) -> Any:
    """SHConfig from env (SH_CLIENT_ID/SH_CLIENT_SECRET) or profile (SH_PROFILE), URLs set."""
    from sentinelhub import SHConfig

    try:
        if os.path.exists(SHConfig.get_config_location()):
            config = SHConfig()
        elif os.environ.get("SH_PROFILE"):
            raise KeyError(os.environ["SH_PROFILE"])
        else:
            # no configuration file: the credentials from the environment, and nothing
            # written (SHConfig() saves a default config.toml into the user's home)
            env = {k: os.environ[v] for k, v in (("sh_client_id", "SH_CLIENT_ID"),
                                                 ("sh_client_secret", "SH_CLIENT_SECRET"))
                   if os.environ.get(v)}
            config = SHConfig(use_defaults=True, **env)
    except KeyError as exc:
        raise CredentialsError(
            f"sentinelhub profile not found ({exc.args[0]}); {_CREDENTIALS_HINT}") from None
    except (ValueError, OSError) as exc:   # a damaged config.toml (TOMLDecodeError)
        where = SHConfig.get_config_location()
        raise InputError(f"{where}: the sentinelhub configuration file cannot be read "
                         f"({' '.join(str(exc).split())[:120]}); repair or remove it") from None
    if base_url:
        config.sh_base_url = base_url.rstrip("/")
    if token_url:
        config.sh_token_url = token_url
    elif "dataspace.copernicus.eu" in (config.sh_base_url or "") and \
            "dataspace.copernicus.eu" not in (config.sh_token_url or ""):
        # a CDSE base URL, from the option or a profile, with Sentinel Hub's token URL
        config.sh_token_url = CDSE_TOKEN_URL
    host = urllib.parse.urlsplit(base_url or "").hostname or ""
    if base_url and not token_url and not host.endswith(
            ("sentinel-hub.com", "dataspace.copernicus.eu")):
        # the client id and secret go to the token URL, which another base URL does not move
        LOGGER.warning("--sh-base-url %s with Sentinel Hub's token URL %s: the credentials are "
                    "sent there; give --sh-token-url for another service", base_url,
                    config.sh_token_url)
    config.max_download_attempts = MAX_DOWNLOAD_ATTEMPTS
    config.download_timeout_seconds = DOWNLOAD_TIMEOUT
    config.download_sleep_time = DOWNLOAD_SLEEP_TIME
    config.max_retries = MAX_RATE_LIMIT_RETRIES
    if not (config.sh_client_id and config.sh_client_secret):
        raise CredentialsError(f"Sentinel Hub credentials are missing; {_CREDENTIALS_HINT}")
    return config


def _status_of(exc: BaseException) -> int | None:
    request_exception = getattr(exc, "request_exception", None)
    response = getattr(request_exception, "response", None)
    return getattr(response, "status_code", None)


def _service_says(exc: BaseException) -> str:
    """The service's own reason for a failed request (Sentinel Hub and CDSE answer errors
    with {"error": {"message" or "reason": ...}}), on one line; '' when there is none."""
    response = getattr(getattr(exc, "request_exception", None), "response", None)
    if response is None:
        return ""
    try:
        err = response.json().get("error", {})
        text = err.get("message") or err.get("reason") or ""
    except (ValueError, AttributeError):
        text = getattr(response, "text", "") or ""
    return " ".join(str(text).split())[:200]


def _translate(exc: BaseException, what: str, url: str) -> PoppyscanError:
    """Turn a sentinelhub/oauthlib/requests failure into one clear poppyscan error."""
    import requests
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error
    from sentinelhub.exceptions import DownloadFailedException, OutOfRequestsException

    status = _status_of(exc)
    if _rate_limited(exc):
        return FetchError(f"{what}: rate limit still hit after retries at {url}; try again later")
    if isinstance(exc, OAuth2Error):
        return _token_error(exc, url)
    if status in (401, 403):
        return CredentialsError(
            f"credentials rejected by {url} (HTTP {status}); {_CREDENTIALS_HINT}")
    if isinstance(exc, OutOfRequestsException):
        return FetchError(f"{what}: rate limit still hit after retries at {url}; try again later")
    if isinstance(getattr(exc, "request_exception", None), requests.Timeout):
        return FetchError(f"{what} at {url}: no answer in {DOWNLOAD_TIMEOUT:g} s, "
                          f"{MAX_DOWNLOAD_ATTEMPTS} times; the service is slow or down: try "
                          "again later")
    if isinstance(exc, DownloadFailedException):
        first = str(exc).strip().splitlines()
        reason = f"HTTP {status}" if status else (first[-1] if first else type(exc).__name__)
        said = _service_says(exc)
        if said:
            reason += f": {said}"
        advice = ("check the service URL (--sh-base-url): it has no such API" if status == 404
                  else "check the AOI, window and resolution" if status and 400 <= status < 500
                  else "the service failed: try again later" if status and status >= 500
                  else "check the URL and the network")
        return FetchError(f"{what} failed at {url} ({reason}); {advice}")
    if isinstance(exc, json.JSONDecodeError):
        return FetchError(f"{what} at {url}: the answer is not JSON (a web page: a proxy's "
                          "or a maintenance page?); check --sh-base-url and the network")
    detail = " ".join(str(exc).split())[:300]
    return FetchError(f"{what} failed at {url}: {type(exc).__name__}: {detail}")


#: the OAuth errors (RFC 6749, 5.2) that say the client id or secret is not accepted
_CREDENTIAL_ERRORS = frozenset({"invalid_client", "unauthorized_client", "invalid_grant",
                                "access_denied", "invalid_request", "invalid_scope",
                                "unsupported_grant_type"})


def _token_error(exc: Any, url: str) -> PoppyscanError:
    """A failed token request: rejected credentials only when the service says so; a URL
    that answers without a token (a web page, a proxy's login) or with an error of its own
    (a wrong path's 'not found') is the URL's fault, and a failing service the service's."""
    code = str(getattr(exc, "error", "") or "")
    if code in _CREDENTIAL_ERRORS:
        return CredentialsError(f"credentials rejected by {url} ({code}); {_CREDENTIALS_HINT}")
    if code in ("server_error", "temporarily_unavailable"):
        return FetchError(f"the token service at {url} failed ({code}); try again later")
    what = ("answered without a token (a web page or a proxy's login?)"
            if code == "missing_token" else f"answered '{code}'")
    return FetchError(f"{url} {what}: not the service's OAuth token endpoint; check "
                      "--sh-token-url, or leave it out for Sentinel Hub or CDSE (known from "
                      "--sh-base-url)")


class _RetriesSaid(logging.Handler):
    """Says each retry of a failed download (sentinelhub logs them at debug level only: a
    service that never answered gave nine minutes of silence, then one line)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("Download attempt failed") or len(record.args) != 3:
            return
        exc, left, wait = record.args          # type: ignore[misc]
        import requests
        response = getattr(exc, "response", None)
        why = (f"no answer in {DOWNLOAD_TIMEOUT:g} s" if isinstance(exc, requests.Timeout)
               else f"HTTP {response.status_code}" if response is not None
               else "the connection failed")
        LOGGER.warning("the service: %s; retrying in %.0f s (%d attempt(s) left)", why, wait,
                       left)


@contextlib.contextmanager
def _retries_said() -> Any:
    # the library's own debug lines (two per retry) stop here: they repeated each warning on
    # stderr, under -q too (a record reaches the root's handlers whatever the root's level)
    handlers = logging.getLogger("sentinelhub.download.handlers")
    level, propagate, said = handlers.level, handlers.propagate, _RetriesSaid()
    handlers.setLevel(logging.DEBUG)
    handlers.propagate = False
    handlers.addHandler(said)
    try:
        yield
    finally:
        handlers.removeHandler(said)
        handlers.setLevel(level)
        handlers.propagate = propagate


def _service_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the service (not our code) failed: translated by :func:`_translate`."""
    import requests
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error
    from sentinelhub.exceptions import BaseSentinelHubException

    return (requests.RequestException, OAuth2Error, BaseSentinelHubException, KeyError, ValueError)


def _rate_limited(exc: BaseException) -> bool:
    """HTTP 429 (from a download, or oauthlib's ``too_many_requests`` from the token URL)."""
    return (_status_of(exc) == 429 or getattr(exc, "status_code", None) == 429
            or getattr(exc, "error", None) == "too_many_requests")


def _retry_after(exc: BaseException) -> float:
    """Seconds the service asks to wait (Retry-After), else the first download sleep."""
    for response in (getattr(getattr(exc, "request_exception", None), "response", None),
                     getattr(exc, "response", None)):
        try:
            return min(float(response.headers["Retry-After"]), 600.0)
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return DOWNLOAD_SLEEP_TIME


def _session(config: Any) -> Any:
    """An authenticated session; a rate-limited token request (429) is retried after the
    service's Retry-After, like downloads are (it was reported as rejected credentials)."""
    import time

    from sentinelhub import SentinelHubSession

    for attempt in range(1, MAX_DOWNLOAD_ATTEMPTS + 1):
        try:
            return SentinelHubSession(config=config)
        except _service_errors() as exc:
            limited = _rate_limited(exc)
            if limited and attempt < MAX_DOWNLOAD_ATTEMPTS:
                wait = _retry_after(exc)
                LOGGER.warning("the token service asks to slow down (HTTP 429); retrying in "
                               "%.0f s", wait)
                time.sleep(wait)
                continue
            err = _translate(exc, "authentication", config.sh_token_url)
            status = _status_of(exc) or 0
            if isinstance(err, FetchError) and not limited and 400 <= status < 500:
                err = CredentialsError(f"credentials rejected by {config.sh_token_url} "
                                       f"(HTTP {status}); {_CREDENTIALS_HINT}")
            raise err from None
    raise AssertionError("unreachable")


def _collection(base: Any, prefix: str, base_url: str) -> Any:
    """A predefined collection carries its own service URL; redefine it for another deployment."""
    if (base.service_url or "").rstrip("/") == base_url.rstrip("/"):
        return base
    digest = hashlib.sha1(base_url.encode()).hexdigest()[:10]
    return base.define_from(f"{prefix}_{digest}", service_url=base_url)


def _search(config: Any, session: Any, collection: Any, aoi_wgs: Any,
            start: dt.date, end: dt.date) -> list[dict]:
    import shapely
    from sentinelhub import CRS, Geometry, SentinelHubCatalog, SentinelHubDownloadClient

    catalog = SentinelHubCatalog(config=config)
    catalog.client = SentinelHubDownloadClient(session=session, config=config)
    time = (dt.datetime.combine(start, dt.time.min), dt.datetime.combine(end, dt.time(23, 59, 59)))
    fields = {"include": ["id", "properties.datetime", "properties.eo:cloud_cover"], "exclude": []}
    # a detailed AOI makes a heavy query; its convex hull finds the same scenes (or a few more,
    # which then have no valid pixel and are skipped)
    area = aoi_wgs if shapely.get_num_coordinates(aoi_wgs) <= 500 else aoi_wgs.convex_hull
    try:
        return list(catalog.search(collection, time=time, geometry=Geometry(area, CRS.WGS84),
                                   fields=fields))
    except _service_errors() as exc:
        raise _translate(exc, "catalog search", catalog.service_url) from None


@dataclass(frozen=True)
class Acquisition:
    """One date of the catalog: its features' ids, first sensing time and cloud covers (one
    per scene that gives it: an AOI on a tile or orbit edge has several)."""

    date: dt.date
    datetime: str
    clouds: tuple[float, ...]
    ids: tuple[str, ...]

    @property
    def cloud_cover(self) -> float | None:
        """The mean of the scenes' cloud covers, for the record (fetch.json, the file's tag)."""
        return round(float(np.mean(self.clouds)), 2) if self.clouds else None

    def passes(self, max_cloud: float) -> bool:
        """Kept when one of its scenes passes, as a catalog filter ``eo:cloud_cover <= max``
        would keep that scene (the Process request then puts the least cloudy first)."""
        return not self.clouds or min(self.clouds) <= max_cloud


def group_by_date(features: Sequence[dict]) -> list[Acquisition]:
    """Group catalog features (one per tile and orbit) by UTC sensing date."""
    by_date: dict[dt.date, list[dict]] = {}
    for feature in features:
        stamp = dt.datetime.fromisoformat(feature["properties"]["datetime"].replace("Z", "+00:00"))
        by_date.setdefault(stamp.astimezone(dt.UTC).date(), []).append(feature)
    out = []
    for date in sorted(by_date):
        feats = by_date[date]
        stamps = sorted(
            dt.datetime.fromisoformat(f["properties"]["datetime"].replace("Z", "+00:00"))
            .astimezone(dt.UTC).replace(tzinfo=None) for f in feats)
        clouds = [float(f["properties"]["eo:cloud_cover"]) for f in feats
                  if f["properties"].get("eo:cloud_cover") is not None]
        out.append(Acquisition(
            date=date, datetime=stamps[0].isoformat(timespec="seconds"),
            clouds=tuple(clouds),
            ids=tuple(sorted({str(f.get("id", "")) for f in feats}))))
    return out


# --------------------------------------------------------------------------- Process API

def s2_evalscript() -> str:
    """Evalscript: DN of the reflectance bands and SCL (0 = nodata), sun angles (NaN = nodata)."""
    inputs = [*REFLECTANCE_BANDS, "SCL", "sunZenithAngles", "sunAzimuthAngles", "dataMask"]
    units = ["DN"] * (len(REFLECTANCE_BANDS) + 1) + ["DEGREES", "DEGREES", "DN"]
    refl = ", ".join(f"Math.max(1, s.{b})" for b in REFLECTANCE_BANDS)
    zeros = ", ".join(["0"] * len(OUTPUT_BANDS))
    return f"""//VERSION=3
function setup() {{
  return {{
    input: [{{bands: {json.dumps(inputs)}, units: {json.dumps(units)}}}],
    output: [
      {{id: "default", bands: {len(OUTPUT_BANDS)}, sampleType: "UINT16"}},
      {{id: "angles", bands: 2, sampleType: "FLOAT32"}}
    ],
    mosaicking: "SIMPLE"
  }};
}}
function evaluatePixel(s) {{
  if (s.dataMask == 0) {{
    return {{default: [{zeros}], angles: [NaN, NaN]}};
  }}
  return {{default: [{refl}, s.SCL], angles: [s.sunZenithAngles, s.sunAzimuthAngles]}};
}}
"""


DEM_EVALSCRIPT = """//VERSION=3
function setup() {
  return {
    input: [{bands: ["DEM", "dataMask"]}],
    output: {id: "default", bands: 1, sampleType: "FLOAT32"}
  };
}
function evaluatePixel(s) {
  return [s.dataMask == 0 ? NaN : s.DEM];
}
"""


def _tile_requests(grid: Grid, aoi_utm: Any, collection: Any, evalscript: str,
                   responses: list[dict], config: Any, cache: Path,
                   time_interval: tuple[dt.datetime, dt.datetime] | None,
                   input_args: dict[str, Any]) -> list[tuple[tuple[int, int, int, int], Any]]:
    """One Process API download request per grid tile that touches the AOI."""
    import shapely
    from sentinelhub import CRS, BBox, Geometry, SentinelHubRequest

    out = []
    for tile in grid.tiles(MAX_TILE_PX):
        bounds = grid.tile_bounds(tile)
        if not shapely.box(*bounds).intersects(aoi_utm):
            continue
        request = SentinelHubRequest(
            evalscript=evalscript,
            input_data=[SentinelHubRequest.input_data(
                data_collection=collection, time_interval=time_interval, **input_args)],
            responses=responses,
            bbox=BBox(bounds, crs=CRS(grid.epsg)),
            geometry=Geometry(aoi_utm, crs=CRS(grid.epsg)),
            size=(tile[2], tile[3]),
            data_folder=str(cache),
            config=config,
        )
        out.append((tile, request.download_list[0]))
    return out


def _cache_entries(requests: list[tuple[Any, Any]]) -> set[str]:
    """The names of the cache folders (one per request: the hash of URL + payload) of
    ``requests``."""
    return {Path(r.get_storage_paths()[1]).parent.name for _, r in requests}


def _raw(client: Any, requests: list[Any], config: Any, what: str) -> list[Any]:
    try:
        return client.download(requests, max_threads=MAX_THREADS, decode_data=False)
    except _service_errors() as exc:
        raise _translate(exc, what, config.sh_base_url) from None


def _responses(requests: list[tuple[Any, Any]], session: Any, config: Any, what: str,
               check: Any) -> Any:
    """``(tile, check(tile, decoded))`` for each ``(tile, request)`` of ``requests``, in
    order, downloading (or reading from the cache) MAX_THREADS at a time, so that a date's
    tiles are not all held in memory. A damaged response (cut short, not a TIFF or tar, the wrong size: decoding or ``check``
    raises) is removed from the cache and downloaded once more; damaged again, the run stops
    with one line (a damaged file left in the cache failed every rerun)."""
    from sentinelhub import SentinelHubDownloadClient

    client = SentinelHubDownloadClient(session=session, config=config)
    for start in range(0, len(requests), MAX_THREADS):
        batch = requests[start:start + MAX_THREADS]
        answers = _raw(client, [request for _, request in batch], config, what)
        for (tile, request), response in zip(batch, answers):
            for attempt in (1, 2):
                try:
                    value = check(tile, response.decode())
                    break
                except Exception as exc:  # noqa: BLE001 - any failure to decode the bytes
                    Path(request.get_storage_paths()[1]).unlink(missing_ok=True)
                    ctype = _content_type(response)
                    if attempt == 2 and ctype.startswith(("text/", "application/json")):
                        raise FetchError(
                            f"{what}: {config.sh_base_url} answered {ctype}, not an image "
                            "(a maintenance page or a proxy's?); check --sh-base-url and "
                            "the network, or run the same command again later") from None
                    if attempt == 2:
                        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
                        raise FetchError(
                            f"{what}: the service's answer from {config.sh_base_url} was "
                            f"damaged twice ({reason}); it is not kept: run the same command "
                            "again later") from None
                    LOGGER.warning("%s: a damaged answer (%s); downloading it again", what,
                                   type(exc).__name__)
                    [response] = _raw(client, [request], config, what)
            yield tile, value
            del response, value


def _content_type(response: Any) -> str:
    """The media type a service answer says it is ('' when it says none)."""
    headers = getattr(response, "headers", None) or {}
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return str(ctype).split(";")[0].strip().lower()


def _misses(requests: list[tuple[Any, Any]]) -> int:
    """``(tile, request)`` pairs whose response is not in the cache (downloads to come)."""
    return sum(1 for _, r in requests if not os.path.exists(r.get_storage_paths()[1]))


def _as_hwc(array: np.ndarray, bands: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[-1] != bands and array.shape[0] == bands:  # planar TIFF
        array = np.moveaxis(array, 0, -1)
    return array


def _sized(array: Any, bands: int, h: int, w: int) -> np.ndarray:
    """``array`` as (h, w, bands), or an error naming the size the service answered with."""
    out = _as_hwc(array, bands)
    if out.shape != (h, w, bands):
        raise ValueError(f"an image of shape {out.shape}, expected {(h, w, bands)}")
    return out


def _fetch_date(acq: Acquisition, grid: Grid, aoi_utm: Any, collection: Any, config: Any,
                session: Any, cache: Path, used: set[str]
                ) -> tuple[np.ndarray, float, float, float, int]:
    """Mosaic one date: (band, y, x) uint16 DN, mean sun zenith/azimuth, valid fraction, misses.
    The cache folders of its requests are added to ``used``."""
    from sentinelhub import MimeType, MosaickingOrder

    start = dt.datetime.combine(acq.date, dt.time.min)
    requests = _tile_requests(
        grid, aoi_utm, collection, s2_evalscript(),
        [{"identifier": "default", "format": {"type": MimeType.TIFF.get_string()}},
         {"identifier": "angles", "format": {"type": MimeType.TIFF.get_string()}}],
        config, cache, (start, start + dt.timedelta(days=1, seconds=-1)),
        {"mosaicking_order": MosaickingOrder.LEAST_CC,
         "other_args": {"processing": {"harmonizeValues": True}}},
    )
    data = np.zeros((len(OUTPUT_BANDS), grid.height, grid.width), dtype=np.uint16)
    # the valid share is of the AOI's pixels (centres inside), not of its bounding box
    from rasterio.features import geometry_mask
    in_aoi = geometry_mask([aoi_utm], out_shape=(grid.height, grid.width),
                           transform=grid.transform, invert=True)
    if not in_aoi.any():        # an AOI thinner than a pixel: its bounding box
        in_aoi[:] = True
    sums, count, count_aoi = np.zeros(2), 0, 0
    misses = _misses(requests)
    used |= _cache_entries(requests)

    def decoded(tile: tuple[int, int, int, int], result: Any) -> tuple[np.ndarray, np.ndarray]:
        _, _, w, h = tile
        return (_sized(result["default.tif"], len(OUTPUT_BANDS), h, w),
                _sized(result["angles.tif"], 2, h, w))

    # one tile's arrays at a time besides the mosaic
    for (c, r, w, h), (dn, angles) in _responses(requests, session, config,
                                                 f"process request for {acq.date}", decoded):
        valid = np.isfinite(angles[:, :, 0]) & (dn[:, :, :len(REFLECTANCE_BANDS)] > 0).any(axis=2)
        view = data[:, r:r + h, c:c + w]
        view[:] = np.moveaxis(dn, -1, 0)
        view[:, ~valid] = 0
        sums += np.nansum(angles[valid], axis=0, dtype=np.float64)
        count += int(valid.sum())
        count_aoi += int((valid & in_aoi[r:r + h, c:c + w]).sum())
        del dn, angles, valid
    zenith, azimuth = (sums / count) if count else (math.nan, math.nan)
    return data, float(zenith), float(azimuth), count_aoi / float(in_aoi.sum()), misses


def _fetch_dem(grid: Grid, aoi_utm: Any, config: Any, session: Any, cache: Path,
               base_url: str, used: set[str]) -> tuple[np.ndarray, int]:
    from sentinelhub import DataCollection, MimeType, ResamplingType

    collection = _collection(DataCollection.DEM_COPERNICUS_30, "POPPYSCAN_DEM_COPERNICUS_30",
                             base_url)
    requests = _tile_requests(
        grid, aoi_utm, collection, DEM_EVALSCRIPT,
        [{"identifier": "default", "format": {"type": MimeType.TIFF.get_string()}}],
        config, cache, None,
        {"upsampling": ResamplingType.BILINEAR, "downsampling": ResamplingType.BILINEAR},
    )
    dem = np.full((grid.height, grid.width), np.nan, dtype=np.float32)
    misses = _misses(requests)
    used |= _cache_entries(requests)

    def decoded(tile: tuple[int, int, int, int], result: Any) -> np.ndarray:
        _, _, w, h = tile
        return _sized(result, 1, h, w)[:, :, 0]

    for (c, r, w, h), block in _responses(requests, session, config, "DEM request", decoded):
        dem[r:r + h, c:c + w] = block
    return dem, misses


def _write_dem(path: Path, dem: np.ndarray, grid: Grid) -> Path:
    profile = {"driver": "GTiff", "dtype": "float32", "count": 1, "height": grid.height,
               "width": grid.width, "crs": grid.crs, "transform": grid.transform,
               "nodata": float("nan"), "compress": "deflate", "predictor": 3}
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(dem, 1)
        dst.set_band_description(1, "DEM")
        dst.update_tags(UNITS="metre", SOURCE="COPERNICUS_30")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- entry point


def _earlier_files(out: Path) -> set[str]:
    """The dates and DEM an earlier fetch wrote into ``out`` (its fetch.json), which this run
    replaces. Files of those names that no fetch wrote (the analyst's own DEM, last season's
    dates) are refused before any request, not overwritten or deleted."""
    ours = {"S2_*.tif", "dem.tif"}
    present = {p.name for pattern in ours for p in out.glob(pattern)} if out.is_dir() else set()
    earlier: set[str] = set()
    try:
        doc = json.loads((out / "fetch.json").read_text())
        earlier = {w["file"] for w in doc.get("written", [])} | (
            {doc["dem"]} if doc.get("dem") else set())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass                                   # no earlier fetch (or not one of ours)
    foreign = sorted(present - earlier)
    if foreign:
        raise InputError(f"--out {out} holds {', '.join(foreign[:3])}"
                         f"{' ...' if len(foreign) > 3 else ''}, which fetch did not write "
                         "there; give fetch an empty folder or the folder of an earlier fetch")
    return earlier & present


def fetch(aoi: Path, window: str, out: Path, *, max_cloud: float = 30.0, resolution: float = 10.0,
          dem: bool = False, base_url: str | None = None, token_url: str | None = None,
          cache: Path | None = None) -> dict:
    """Fetch Sentinel-2 L2A dates for ``aoi`` within ``window`` into ``out``; return fetch.json."""
    start, end = parse_window(window)
    if not (0.0 <= float(max_cloud) <= 100.0):
        raise InputError(f"--max-cloud {max_cloud} is not a percentage in 0..100")
    if not (0 < float(resolution) <= MAX_RESOLUTION):
        raise InputError(f"--resolution {resolution} must be metres in (0, {MAX_RESOLUTION:g}]")
    geom, geom_crs = read_aoi(Path(aoi))
    grid, aoi_utm, aoi_wgs = make_grid(geom, geom_crs, float(resolution))
    if aoi_utm.area < float(resolution) ** 2:
        c = aoi_wgs.centroid
        raise InputError(f"{aoi}: the AOI covers {aoi_utm.area:.3g} m^2 at {c.y:.5f}, "
                         f"{c.x:.5f} (lat, lon), less than one {float(resolution):g} m pixel; "
                         "draw it larger, or check its CRS (coordinates saved with the wrong "
                         "CRS shrink or move it)")
    px = grid.width * grid.height
    if px > MAX_GRID_PX:
        raise InputError(f"{aoi}: at {float(resolution):g} m the AOI's grid is {grid.width} x "
                         f"{grid.height} pixels ({px / 1e6:.0f} Mpx, about "
                         f"{(px * BYTES_PER_PX + FIXED_BYTES) / 2**30:.1f} GB in memory; at most "
                         f"{MAX_GRID_PX / 1e6:.0f} Mpx): split the AOI into smaller ones or use "
                         "a coarser --resolution")
    out = Path(out)
    check_can_create(out, "--out")
    new_top = first_missing(out)         # the folder a failed run removes (nest/ of nest/a/b)
    work = out / ".poppyscan"
    if new_top is None and not work.exists():
        new_top = work                   # in the analyst's folder: the run state it made
    lock_folder(work, out, "fetch")
    own_cache = cache is None           # a cache= given may be shared: never pruned
    cache = Path(cache) if cache is not None else work / "sh-cache"
    try:
        with _retries_said():
            result, used = _fetch_into(out, work, cache, aoi, start, end, grid, aoi_utm,
                                       aoi_wgs, max_cloud, dem, base_url, token_url)
    except BaseException:
        # a folder this run created that holds no download to resume from: not left behind
        if new_top is not None and not (own_cache and _downloads_in(cache)):
            shutil.rmtree(new_top, ignore_errors=True)
        raise
    finally:
        unlock_folder(work)
    if own_cache:
        _prune_cache(cache, used)
    return result


def _downloads_in(cache: Path) -> bool:
    """Whether ``cache`` holds a service answer (sentinelhub keeps request.json beside each
    response: a request that got no usable answer leaves only that)."""
    return cache.is_dir() and any(p.is_file() and p.name != "request.json"
                                  for p in cache.rglob("*"))


def _fetch_into(out: Path, work: Path, cache: Path, aoi: Path, start: dt.date, end: dt.date,
                grid: Grid, aoi_utm: Any, aoi_wgs: Any, max_cloud: float, dem: bool,
                base_url: str | None, token_url: str | None) -> tuple[dict, set[str]]:
    """The body of :func:`fetch`, run holding ``out``'s lock: the dates and DEM written into
    ``out``, fetch.json last; the result and the cache entries it used."""
    from sentinelhub import DataCollection

    earlier = _earlier_files(out)
    config = _sh_config(base_url, token_url)
    service_url = config.sh_base_url.rstrip("/")
    session = _session(config)
    s2 = _collection(DataCollection.SENTINEL2_L2A, "POPPYSCAN_SENTINEL2_L2A", service_url)
    LOGGER.info("searching %s for %s..%s over %s", service_url, start, end, Path(aoi).name)
    acquisitions = group_by_date(_search(config, session, s2, aoi_wgs, start, end))

    keep = [a for a in acquisitions if a.passes(max_cloud)]
    skipped = [{"date": a.date.isoformat(), "cloud_cover": a.cloud_cover,
                "reason": (f"cloud cover {a.clouds[0]:g}% > {max_cloud:g}%" if len(a.clouds) == 1
                           else f"cloud cover of each of its {len(a.clouds)} scenes > "
                           f"{max_cloud:g}% (least {min(a.clouds):g}%)")}
               for a in acquisitions if not a.passes(max_cloud)]
    LOGGER.info("found %d dates, %d kept (max cloud %s%%)", len(acquisitions), len(keep), max_cloud)

    cache.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for stale in work.glob("staging-*"):    # of a run killed without a chance to clean up
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=work))
    written: list[dict] = []
    downloads = 0
    try:
        for acq in keep:
            data, zenith, azimuth, valid, misses = _fetch_date(
                acq, grid, aoi_utm, s2, config, session, cache, used)
            downloads += misses
            if valid == 0:
                skipped.append({"date": acq.date.isoformat(), "cloud_cover": acq.cloud_cover,
                                "reason": "no valid pixel over the AOI"})
                continue
            name = f"S2_{acq.date:%Y%m%d}.tif"
            tags = {"SENSOR": "sentinel2", "SUN_ZENITH": f"{zenith:.4f}",
                    "SUN_AZIMUTH": f"{azimuth:.4f}", "SOURCE": service_url,
                    "HARMONIZED": "true"}
            if acq.cloud_cover is not None:
                tags["CLOUD_COVER"] = f"{acq.cloud_cover}"
            write_multiband(
                staging / name, data, OUTPUT_BANDS, grid.transform, grid.crs,
                acquisition_date=acq.datetime,
                scales=[REFLECTANCE_SCALE] * len(REFLECTANCE_BANDS) + [1.0],
                offsets=[0.0] * len(OUTPUT_BANDS), nodata=0, tags=tags)
            written.append({"date": acq.date.isoformat(), "datetime": acq.datetime, "file": name,
                            "cloud_cover": acq.cloud_cover, "valid_fraction": round(valid, 4),
                            "sun_zenith": round(zenith, 4), "sun_azimuth": round(azimuth, 4)})
            LOGGER.info("wrote %s (%.0f%% valid)", name, 100 * valid)
        dem_file = None
        if dem:
            dem_data, misses = _fetch_dem(grid, aoi_utm, config, session, cache, service_url,
                                          used)
            downloads += misses
            _write_dem(staging / "dem.tif", dem_data, grid)
            dem_file = "dem.tif"
        result = {
            "aoi": str(aoi), "window": {"start": start.isoformat(), "end": end.isoformat()},
            "service": service_url, "collection": "sentinel-2-l2a", "max_cloud": float(max_cloud),
            "grid": {"crs": grid.crs, "resolution": grid.resolution, "width": grid.width,
                     "height": grid.height, "transform": list(grid.transform)[:6]},
            "bands": list(OUTPUT_BANDS),
            "found": [{"date": a.date.isoformat(), "datetime": a.datetime,
                       "cloud_cover": a.cloud_cover, "ids": list(a.ids)} for a in acquisitions],
            "skipped": sorted(skipped, key=lambda s: s["date"]),
            "written": written, "dem": dem_file, "downloads": downloads,
            "cache": str(cache),
        }
        (staging / "fetch.json").write_text(json.dumps(result, indent=2) + "\n")
        # an earlier run's dates or DEM that this one does not write (a stricter --max-cloud,
        # another window, no --dem) would be read by inspect and detect beside the new ones
        keep = {w["file"] for w in written} | ({dem_file} if dem_file else set())
        with uninterrupted():
            for name in earlier - keep:
                (out / name).unlink(missing_ok=True)
            for item in sorted(staging.iterdir(), key=lambda p: p.name == "fetch.json"):
                os.replace(item, out / item.name)  # fetch.json last: a complete run
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result, used


def _prune_cache(cache: Path, used: set[str]) -> None:
    """Keep the answers of this (successful) run only: the same command again still
    downloads nothing, and the answers of earlier runs (other windows, AOIs, --max-cloud),
    about 34 bytes per pixel per date, no longer pile up in the folder."""
    for entry in cache.iterdir():
        if entry.name not in used:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
