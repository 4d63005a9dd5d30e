"""pipeline.fetch against a fake Sentinel Hub on 127.0.0.1 (tests/sh_server.py); no internet."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from sh_server import CLIENT_ID, CLIENT_SECRET, SUN_AZIMUTH, SUN_ZENITH, FakeSentinelHub, feature

from pipeline import fetch as F
from pipeline.errors import CredentialsError, CRSError, InputError, OutputBusy

# A ~300 m x 200 m field in Helmand (UTM zone 41N).
LON0, LAT0 = 64.3500, 31.6000
FEATURES = [
    feature("S2A_T41RMQ_20240503", "2024-05-03T06:10:21Z", 10.0),
    feature("S2A_T41RNQ_20240503", "2024-05-03T06:10:25Z", 20.0),  # same date, other tile
    feature("S2B_T41RMQ_20240508", "2024-05-08T06:10:19Z", 80.0),  # too cloudy
    feature("S2A_T41RMQ_20240513", "2024-05-13T06:10:22Z", 5.0),
    feature("S2B_T41RMQ_20240518", "2024-05-18T06:10:20Z", 30.5),  # just above 30
    feature("S2A_T41RMQ_20240702", "2024-07-02T06:10:20Z", 0.0),   # outside the window
]
WINDOW = "2024-05-01/2024-05-31"


def _square(lon: float, lat: float, dx: float, dy: float) -> list[list[float]]:
    return [[lon, lat], [lon + dx, lat], [lon + dx, lat + dy], [lon, lat + dy], [lon, lat]]


def write_aoi(path: Path, dx: float = 0.0032, dy: float = 0.0018) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [_square(LON0, LAT0, dx, dy)]}}]}))
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user sentinelhub profile
    monkeypatch.delenv("SH_PROFILE", raising=False)
    monkeypatch.setenv("SH_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SH_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setattr(F, "DOWNLOAD_SLEEP_TIME", 0.01)


@pytest.fixture
def server(env: None):
    fake = FakeSentinelHub(features=list(FEATURES)).start()
    yield fake
    fake.stop()


@pytest.fixture
def aoi(tmp_path: Path) -> Path:
    return write_aoi(tmp_path / "aoi.geojson")


def run(server: FakeSentinelHub, aoi: Path, out: Path, **kw) -> dict:
    return F.fetch(aoi, kw.pop("window", WINDOW), out, base_url=server.base_url,
                   token_url=server.token_url, **kw)


def test_cloud_filter_keeps_the_right_dates(server, aoi, tmp_path):
    result = run(server, aoi, tmp_path / "out")
    assert [w["date"] for w in result["written"]] == ["2024-05-03", "2024-05-13"]
    assert [s["date"] for s in result["skipped"]] == ["2024-05-08", "2024-05-18"]
    assert [f["date"] for f in result["found"]] == ["2024-05-03", "2024-05-08", "2024-05-13",
                                                    "2024-05-18"]
    assert result["found"][0]["cloud_cover"] == 15.0  # mean of the date's two tiles
    assert sorted(p.name for p in (tmp_path / "out").glob("S2_*.tif")) == [
        "S2_20240503.tif", "S2_20240513.tif"]
    assert json.loads((tmp_path / "out" / "fetch.json").read_text()) == result
    assert server.catalog_requests == 3  # 5 features in the window, pages of 2: context.next
    # one Process API request per kept date, for that date only, harmonised, in UTM 41N
    assert len(server.process_requests) == 2
    payload = server.process_requests[0]
    data = payload["input"]["data"][0]
    assert data["type"] == "sentinel-2-l2a"
    assert data["processing"]["harmonizeValues"] is True
    assert data["dataFilter"]["timeRange"]["from"].startswith("2024-05-03T00:00:00")
    assert data["dataFilter"]["timeRange"]["to"].startswith("2024-05-03T23:59:59")
    assert payload["input"]["bounds"]["properties"]["crs"].endswith("/32641")
    assert "geometry" in payload["input"]["bounds"]
    for band in ("B01", "B8A", "B12", "SCL", "sunZenithAngles", "sunAzimuthAngles", "dataMask"):
        assert f'"{band}"' in payload["evalscript"]


def test_output_follows_the_input_contract(server, aoi, tmp_path):
    grid, aoi_utm, _ = F.make_grid(*F.read_aoi(aoi), 10.0)
    server.nodata_west_of = grid.west + 50  # the 5 westmost columns are outside the swath
    result = run(server, aoi, tmp_path / "out")
    # the valid share of the AOI's pixels (the lon/lat rectangle is a little rotated in UTM)
    from rasterio.features import geometry_mask
    in_aoi = geometry_mask([aoi_utm], out_shape=(grid.height, grid.width),
                           transform=grid.transform, invert=True)
    assert 0 < in_aoi.sum() < grid.width * grid.height
    assert result["written"][0]["valid_fraction"] == round(in_aoi[:, 5:].sum() / in_aoi.sum(), 4)
    with rasterio.open(tmp_path / "out" / "S2_20240503.tif") as src:
        assert src.descriptions == F.OUTPUT_BANDS
        assert set(src.descriptions) == {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                         "B8A", "B09", "B11", "B12", "SCL"}
        assert src.dtypes[0] == "uint16" and src.nodata == 0
        assert src.scales == (1e-4,) * 12 + (1.0,)
        assert src.offsets == (0.0,) * 13
        assert src.crs.to_epsg() == 32641 and src.res == (10.0, 10.0)
        assert (src.width, src.height) == (grid.width, grid.height)
        tags = src.tags()
        assert tags["ACQUISITION_DATE"] == "2024-05-03T06:10:21"
        assert float(tags["SUN_ZENITH"]) == pytest.approx(SUN_ZENITH)
        assert float(tags["SUN_AZIMUTH"]) == pytest.approx(SUN_AZIMUTH)
        data = src.read()
    cols = (round(grid.west / 10) + np.arange(grid.width)) % 1000
    for i in range(12):
        assert (data[i, :, 5:] == (1000 + 100 * i + cols[5:])[None, :]).all()
    assert (data[12, :, 5:] == 4).all()
    assert (data[:, :, :5] == 0).all()  # no data stays nodata, in every band


def test_rerun_reads_the_cache_and_sends_no_process_request(server, aoi, tmp_path):
    first = run(server, aoi, tmp_path / "out")
    sent = len(server.process_requests)
    assert first["downloads"] == sent == 2
    assert any((tmp_path / "out" / ".poppyscan" / "sh-cache").rglob("response.tar"))
    second = run(server, aoi, tmp_path / "out")
    assert len(server.process_requests) == sent and server.process_attempts == sent
    assert second["downloads"] == 0
    assert second["written"] == first["written"]
    assert not list((tmp_path / "out" / ".poppyscan").glob("staging-*"))


def test_the_cache_keeps_the_last_runs_answers_only(server, aoi, tmp_path):
    """Every answer stayed in OUT/.poppyscan/sh-cache for ever (about 34 bytes per pixel
    and date: a season refetched with other windows piled up GBs). A successful run keeps
    its own answers (the same command again downloads nothing) and removes the others; a
    cache folder given by the caller may be shared and is left alone."""
    cache = tmp_path / "out" / ".poppyscan" / "sh-cache"
    run(server, aoi, tmp_path / "out", window="2024-05-03/2024-05-03")
    first = {p.name for p in cache.iterdir()}
    assert len(first) == 1                            # one request: 3 May
    run(server, aoi, tmp_path / "out", window="2024-05-13/2024-05-13")
    second = {p.name for p in cache.iterdir()}
    assert len(second) == 1 and not second & first
    sent = len(server.process_requests)
    assert run(server, aoi, tmp_path / "out", window="2024-05-13/2024-05-13")["downloads"] == 0
    assert len(server.process_requests) == sent
    shared = tmp_path / "shared-cache"
    for window in ("2024-05-03/2024-05-03", "2024-05-13/2024-05-13"):
        run(server, aoi, tmp_path / "other", window=window, cache=shared)
    assert len(list(shared.iterdir())) == 2


def test_a_429_is_retried(server, aoi, tmp_path):
    from sentinelhub.exceptions import SHRateLimitWarning

    server.fail_process_with = [429]
    with pytest.warns(SHRateLimitWarning):  # the library's rate-limit path handled it
        result = run(server, aoi, tmp_path / "out")
    assert len(result["written"]) == 2
    assert server.process_attempts == len(server.process_requests) + 1


def test_endless_429_gives_up_with_a_fetch_error(server, aoi, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "MAX_RATE_LIMIT_RETRIES", 3)
    server.fail_process_with = [429] * 10
    with pytest.warns(Warning), pytest.raises(F.FetchError, match="rate limit"):
        run(server, aoi, tmp_path / "out")
    assert server.process_attempts == 3


def test_group_by_date_handles_fractions_and_missing_cloud_cover():
    acqs = F.group_by_date([
        feature("b", "2024-05-03T06:10:25.123Z", 20.0),
        feature("a", "2024-05-03T06:10:21.999+00:00", 11.0),
        {"id": "c", "properties": {"datetime": "2024-05-04T23:30:00-02:00"}},  # 05-05 UTC
    ])
    assert [a.date.isoformat() for a in acqs] == ["2024-05-03", "2024-05-05"]
    assert acqs[0].datetime == "2024-05-03T06:10:21" and acqs[0].cloud_cover == 15.5
    assert acqs[0].ids == ("a", "b")
    assert acqs[1].cloud_cover is None and acqs[1].datetime == "2024-05-05T01:30:00"


def test_a_date_is_kept_when_one_of_its_scenes_passes_the_cloud_filter(server, aoi, tmp_path):
    """As a catalog filter eo:cloud_cover <= max keeps scenes: a date on a tile edge with one
    scene at 20 % and one at 50 % passes --max-cloud 30 (their mean, 35 %, was skipped), and
    30.004 % does not pass 30 (it was rounded to 30.0 first and kept)."""
    server.features = [
        feature("S2A_T41RMQ_20240503", "2024-05-03T06:10:21Z", 20.0),
        feature("S2A_T41RNQ_20240503", "2024-05-03T06:10:25Z", 50.0),
        feature("S2A_T41RMQ_20240513", "2024-05-13T06:10:22Z", 30.004),
        feature("S2A_T41RMQ_20240518", "2024-05-18T06:10:22Z", 60.0),
        feature("S2A_T41RNQ_20240518", "2024-05-18T06:10:26Z", 40.0),
    ]
    result = run(server, aoi, tmp_path / "out", max_cloud=30)
    assert [w["date"] for w in result["written"]] == ["2024-05-03"]
    assert result["written"][0]["cloud_cover"] == 35.0        # the record keeps the mean
    assert [(s["date"], s["reason"]) for s in result["skipped"]] == [
        ("2024-05-13", "cloud cover 30.004% > 30%"),
        ("2024-05-18", "cloud cover of each of its 2 scenes > 30% (least 40%)")]


def test_a_503_is_retried(server, aoi, tmp_path):
    server.fail_process_with = [503]
    result = run(server, aoi, tmp_path / "out")
    assert len(result["written"]) == 2
    assert server.process_attempts == len(server.process_requests) + 1


def test_wrong_credentials_raise_credentials_error(server, aoi, tmp_path, monkeypatch):
    monkeypatch.setenv("SH_CLIENT_SECRET", "wrong")
    with pytest.raises(CredentialsError, match="SH_CLIENT_ID") as info:
        run(server, aoi, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert server.token_requests >= 1 and server.catalog_requests == 0
    assert not (tmp_path / "out").exists()


def test_process_request_forbidden_is_a_credentials_error(server, aoi, tmp_path):
    server.fail_process_with = [403]
    with pytest.raises(CredentialsError, match="HTTP 403"):
        run(server, aoi, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.tif"))


def test_no_acquisition_in_the_window_writes_an_empty_listing(server, aoi, tmp_path):
    result = run(server, aoi, tmp_path / "out", window="2023-01-01/2023-01-31")
    assert result["found"] == [] and result["written"] == [] and result["skipped"] == []
    assert server.process_requests == []
    assert json.loads((tmp_path / "out" / "fetch.json").read_text()) == result


@pytest.mark.parametrize("kw", [{"max_cloud": 101}, {"max_cloud": -1}, {"resolution": 0},
                                {"resolution": 5000}])
def test_bad_options_fail_before_anything(server, aoi, tmp_path, kw):
    with pytest.raises(InputError):
        run(server, aoi, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists() and server.token_requests == 0


def test_a_rerun_leaves_only_what_its_fetch_json_lists(server, aoi, tmp_path):
    out = tmp_path / "out"
    first = run(server, aoi, out, dem=True)
    assert {w["file"] for w in first["written"]} == {"S2_20240503.tif", "S2_20240513.tif"}
    assert (out / "dem.tif").is_file()
    second = run(server, aoi, out, max_cloud=min(w["cloud_cover"] for w in first["written"]))
    files = {p.name for p in out.glob("*.tif")}
    assert files == {w["file"] for w in second["written"]} and second["dem"] is None
    assert len(files) == 1


def test_the_cli_says_why_nothing_was_fetched(server, aoi, tmp_path, capsys):
    import run as cli
    base = ["fetch", "--aoi", str(aoi), "--sh-base-url", server.base_url, "--sh-token-url",
            server.token_url]
    assert cli.main([*base, "--window", "2023-01-01/2023-01-31", "--out",
                     str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "fetched 0 dates" in out and "no acquisition in the window" in out
    assert cli.main([*base, "--window", WINDOW, "--max-cloud", "0", "--out",
                     str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "fetched 0 dates" in out and "found but skipped (cloud cover" in out


def test_an_aoi_too_large_to_mosaic_fails_before_anything(server, tmp_path):
    """Each date is mosaicked in memory: a 2 x 2 degree AOI at 10 m (~480 Mpx, ~12 GB) is one
    line before any request, not a memory error after the search."""
    big = tmp_path / "big.geojson"
    big.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [_square(LON0, LAT0, 2.0, 2.0)]}}]}))
    with pytest.raises(InputError, match=r"Mpx.*split the AOI"):
        run(server, big, tmp_path / "out")
    assert not (tmp_path / "out").exists() and server.token_requests == 0


def test_missing_credentials_raise_before_any_request(server, aoi, tmp_path, monkeypatch):
    monkeypatch.delenv("SH_CLIENT_ID")
    monkeypatch.delenv("SH_CLIENT_SECRET")
    with pytest.raises(CredentialsError, match="SH_CLIENT_SECRET"):
        run(server, aoi, tmp_path / "out")
    assert server.token_requests == 0
    assert not (tmp_path / "out").exists()


def test_credentials_and_urls_from_a_sentinelhub_profile(server, aoi, tmp_path, monkeypatch):
    monkeypatch.delenv("SH_CLIENT_ID")
    monkeypatch.delenv("SH_CLIENT_SECRET")
    monkeypatch.setenv("SH_PROFILE", "poppy")
    config = tmp_path / "config" / "sentinelhub" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[poppy]\nsh_client_id = "{CLIENT_ID}"\nsh_client_secret = "{CLIENT_SECRET}"\n'
                      f'sh_base_url = "{server.base_url}"\nsh_token_url = "{server.token_url}"\n')
    result = F.fetch(aoi, "2024-05-13/2024-05-13", tmp_path / "out")
    assert [w["date"] for w in result["written"]] == ["2024-05-13"]
    assert result["service"] == server.base_url and server.token_requests == 1


def test_a_cdse_profile_without_a_token_url_gets_the_cdse_one(env, tmp_path, monkeypatch):
    monkeypatch.setenv("SH_PROFILE", "cdse")
    config = tmp_path / "config" / "sentinelhub" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[cdse]\nsh_base_url = "https://sh.dataspace.copernicus.eu"\n')
    assert F._sh_config(None, None).sh_token_url == F.CDSE_TOKEN_URL
    assert F._sh_config(None, "https://example.org/token").sh_token_url == \
        "https://example.org/token"


def test_unknown_profile_raises_credentials_error(server, aoi, tmp_path, monkeypatch):
    monkeypatch.delenv("SH_CLIENT_ID")
    monkeypatch.delenv("SH_CLIENT_SECRET")
    monkeypatch.setenv("SH_PROFILE", "no-such-profile")
    with pytest.raises(CredentialsError, match="profile"):
        run(server, aoi, tmp_path / "out")
    assert not (tmp_path / "config").exists()      # sentinelhub wrote a default config.toml


def test_credentials_from_the_environment_write_nothing_in_home(server, aoi, tmp_path):
    """Without a sentinelhub config.toml the environment's credentials are used and none is
    written (sentinelhub saves a default one into the user's home); without credentials the
    error is the same one line."""
    run(server, aoi, tmp_path / "out")
    assert server.token_requests >= 1 and not (tmp_path / "config").exists()


@pytest.mark.parametrize("window", ["2024-05-01", "2024-05-01/2024-13-01", "2024-06-01/2024-05-01",
                                    "a/b/c"])
def test_bad_window_fails_before_anything(server, aoi, tmp_path, window):
    with pytest.raises(InputError, match="--window"):
        run(server, aoi, tmp_path / "out", window=window)
    assert not (tmp_path / "out").exists() and server.token_requests == 0


def test_empty_or_unreadable_aoi_fails_before_anything(server, tmp_path):
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {},
        "geometry": {"type": "Point", "coordinates": [LON0, LAT0]}}]}))
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("not a vector file")
    for path in (empty, points, garbage, tmp_path / "missing.geojson"):
        with pytest.raises(InputError, match="AOI"):
            run(server, path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and server.token_requests == 0


def test_aoi_in_another_crs_gives_the_same_grid(tmp_path, aoi):
    import shapely
    from pyproj import Transformer

    wgs = shapely.Polygon(_square(LON0, LAT0, 0.0032, 0.0018))
    merc = shapely.transform(wgs, Transformer.from_crs(4326, 3857, always_xy=True).transform,
                            interleaved=False)
    gpkg = tmp_path / "aoi.gpkg"
    from pyogrio.raw import write  # geopandas is not required
    write(gpkg, np.array([shapely.to_wkb(merc)], dtype=object), [], [], driver="GPKG",
          geometry_type="Polygon", crs="EPSG:3857")
    g1, _, _ = F.make_grid(*F.read_aoi(aoi), 10.0)
    g2, _, _ = F.make_grid(*F.read_aoi(gpkg), 10.0)
    assert g1 == g2 and g1.epsg == 32641
    assert (g1.width, g1.height) in {(31, 21), (31, 22), (32, 21), (32, 22), (31, 20), (30, 21)}


def test_aoi_without_crs_is_a_crs_error(tmp_path):
    import shapely
    from pyogrio.raw import write

    shp = tmp_path / "aoi.shp"
    with pytest.warns(UserWarning, match="crs"):
        write(shp, np.array([shapely.to_wkb(shapely.box(0, 0, 1, 1))], dtype=object), [], [],
              driver="ESRI Shapefile", geometry_type="Polygon")
    with pytest.raises(CRSError, match="CRS"):
        F.read_aoi(shp)


def test_large_aoi_is_split_and_mosaicked(server, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "MAX_TILE_PX", 16)
    aoi = write_aoi(tmp_path / "big.geojson", dx=0.0045, dy=0.0030)  # ~43 x 34 px
    grid, _, _ = F.make_grid(*F.read_aoi(aoi), 10.0)
    result = run(server, aoi, tmp_path / "out", window="2024-05-13/2024-05-13")
    assert [w["date"] for w in result["written"]] == ["2024-05-13"]
    n_tiles = len(grid.tiles(16))
    assert n_tiles >= 6 and len(server.process_requests) == n_tiles
    assert all(p["output"]["width"] <= 16 and p["output"]["height"] <= 16
               for p in server.process_requests)
    with rasterio.open(tmp_path / "out" / "S2_20240513.tif") as src:
        blue = src.read(2)
    cols = (round(grid.west / 10) + np.arange(grid.width)) % 1000
    assert (blue == (1100 + cols)[None, :]).all()  # every tile landed in its place


def test_dem_is_resampled_to_the_grid(server, aoi, tmp_path):
    result = run(server, aoi, tmp_path / "out", window="2024-05-13/2024-05-13", dem=True)
    assert result["dem"] == "dem.tif"
    dem_payload = [p for p in server.process_requests if p["input"]["data"][0]["type"] == "dem"]
    assert len(dem_payload) == 1
    assert dem_payload[0]["input"]["data"][0]["dataFilter"]["demInstance"] == "COPERNICUS_30"
    with rasterio.open(tmp_path / "out" / "dem.tif") as dem, \
            rasterio.open(tmp_path / "out" / "S2_20240513.tif") as s2:
        assert dem.count == 1 and dem.dtypes[0] == "float32"
        assert dem.transform == s2.transform and dem.crs == s2.crs
        assert dem.shape == s2.shape
        values = dem.read(1)
    rows = round(-s2.transform.f / 10) + np.arange(values.shape[0])
    assert np.allclose(values, (500.0 + rows % 1000)[:, None])


def test_a_failed_run_leaves_no_outputs(server, aoi, tmp_path):
    server.fail_process_with = [400]
    # the service's own reason is in the line
    with pytest.raises(F.FetchError, match="HTTP 400: fake failure.*check the AOI"):
        run(server, aoi, tmp_path / "out")
    out = tmp_path / "out"
    assert not out.exists()            # created by the run, nothing cached to resume from
    (out / "mine").mkdir(parents=True)   # a folder the user made is kept
    server.fail_process_with = [400]
    with pytest.raises(F.FetchError):
        run(server, aoi, out)
    assert (out / "mine").is_dir() and not list(out.glob("*.tif"))
    assert not (out / ".poppyscan").exists()     # the run state it made there, lock and all


def test_service_urls_and_collections():
    from sentinelhub import DataCollection

    s2 = DataCollection.SENTINEL2_L2A
    assert F._collection(s2, "X", F.SH_BASE_URL) is s2
    cdse = F._collection(s2, "POPPYSCAN_S2", F.CDSE_BASE_URL)
    assert cdse.service_url == F.CDSE_BASE_URL and cdse.api_id == s2.api_id
    assert F._collection(s2, "POPPYSCAN_S2", F.CDSE_BASE_URL) == cdse  # idempotent


def test_cdse_base_url_picks_the_cdse_token_url(env):
    config = F._sh_config(F.CDSE_BASE_URL, None)
    assert config.sh_token_url == F.CDSE_TOKEN_URL
    assert config.sh_base_url == F.CDSE_BASE_URL


def test_grid_tiles_cover_the_grid_once():
    grid = F.Grid(32641, 10.0, 0.0, 1000.0, 5001, 2600)
    tiles = grid.tiles(2500)
    assert all(w <= 2500 and h <= 2500 for _, _, w, h in tiles)
    cover = np.zeros((grid.height, grid.width), np.int32)
    for c, r, w, h in tiles:
        cover[r:r + h, c:c + w] += 1
    assert (cover == 1).all()


def test_outputs_read_back_through_the_multiband_reader(server, aoi, tmp_path):
    multiband = pytest.importorskip("pipeline.readers.multiband")
    grid, _, _ = F.make_grid(*F.read_aoi(aoi), 10.0)
    server.nodata_west_of = grid.west + 30
    run(server, aoi, tmp_path / "out", dem=True)
    (scene,) = multiband.read(tmp_path / "out" / "S2_20240503.tif")
    values = scene.compute()
    assert values.band.values.tolist()[-1] == "scl" and "nir08" in values.band.values.tolist()
    assert np.isnan(values.values[:-1, :, :3]).all()  # nodata -> NaN
    assert (values.values[-1, :, :3] == 0).all()       # SCL 0: the class 'no data' 
    col = (round(grid.west / 10) + 3) % 1000
    assert float(values.sel(band="blue")[0, 3]) == pytest.approx((1100 + col) * 1e-4)
    assert float(values.sel(band="scl")[0, 3]) == 4.0
    assert values.attrs["sun_zenith"] == pytest.approx(SUN_ZENITH)


def test_utm_zone_of_the_antimeridian_and_the_equator() -> None:
    from pipeline.grid import utm_epsg
    assert utm_epsg(117.0, 32.0) == 32650 and utm_epsg(117.0, -0.001) == 32750
    assert utm_epsg(180.0, 10.0) == 32660 and utm_epsg(-180.0, 10.0) == 32601


# --- found by an outside-style audit (session 18) --------------------------------------------
def test_a_damaged_answer_is_downloaded_again_and_never_kept(server, aoi, tmp_path, caplog):
    """A body cut short or garbage (a proxy, a dropped connection) was a traceback, and the
    client had cached it, so every rerun failed the same way."""
    server.damage_process = ["cut"]
    result = run(server, aoi, tmp_path / "out")
    assert len(result["written"]) == 2 and "damaged answer" in caplog.text
    assert server.process_attempts == 3                 # two dates, the damaged one again
    with rasterio.open(tmp_path / "out" / "S2_20240503.tif") as src:
        assert src.read(1).min() >= 1000                                  # the good answer
    server.damage_process = ["garbage", "garbage"]
    with pytest.raises(F.FetchError, match="damaged twice.*run the same command again"):
        run(server, aoi, tmp_path / "again")
    assert len(run(server, aoi, tmp_path / "again")["written"]) == 2     # not kept


def test_files_fetch_did_not_write_are_refused_not_deleted(server, aoi, tmp_path):
    """The analyst's own dem.tif and last season's dates in --out were deleted silently."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "dem.tif").write_bytes(b"my dem")
    (out / "S2_20230420.tif").write_bytes(b"last season")
    with pytest.raises(InputError, match="S2_20230420.tif, dem.tif, which fetch did not"):
        run(server, aoi, out)
    assert server.token_requests == 0
    assert (out / "dem.tif").read_bytes() == b"my dem"
    assert (out / "S2_20230420.tif").read_bytes() == b"last season"


def test_a_verbose_log_holds_no_secret_or_token(server, aoi, tmp_path, capsys):
    import run as cli

    rc = cli.main(["-v", "fetch", "--aoi", str(aoi), "--out", str(tmp_path / "out"),
                   "--window", WINDOW, "--sh-base-url", server.base_url,
                   "--sh-token-url", server.token_url])
    err = capsys.readouterr().err
    assert rc == 0 and "searching" in err
    from sh_server import TOKEN
    assert CLIENT_SECRET not in err and TOKEN not in err


def test_a_rate_limited_token_request_is_retried(server, aoi, tmp_path, monkeypatch):
    """A 429 from the token URL was 'credentials rejected ... set SH_CLIENT_ID'."""
    server.fail_token_with = [429]
    assert len(run(server, aoi, tmp_path / "out")["written"]) == 2
    assert server.token_requests >= 2
    monkeypatch.setattr(F, "MAX_DOWNLOAD_ATTEMPTS", 2)
    server.fail_token_with = [429] * 5
    with pytest.raises(F.FetchError, match="rate limit"):
        run(server, aoi, tmp_path / "other")


def test_a_killed_runs_staging_folder_is_removed_by_the_next(server, aoi, tmp_path):
    out = tmp_path / "out"
    (out / ".poppyscan" / "staging-abc").mkdir(parents=True)
    (out / ".poppyscan" / "staging-abc" / "S2_20240503.tif").write_bytes(b"x" * 1000)
    run(server, aoi, out)
    assert not list((out / ".poppyscan").glob("staging-*"))


def test_sigterm_stops_fetch_cleanly(server, aoi, tmp_path):
    """kill / timeout / a batch scheduler: exit 143 and the staging folder removed (it was
    left for good, a date's worth of files each time)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    server.process_delay_s = 2.0
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, str(root / "run.py"), "fetch", "--aoi", str(aoi), "--out", str(out),
         "--window", WINDOW, "--sh-base-url", server.base_url, "--sh-token-url",
         server.token_url], stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 60
    while server.process_attempts == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert list((out / ".poppyscan").glob("staging-*"))        # the run is in its downloads
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "rerun the same command" in err and "Traceback" not in err
    assert not list((out / ".poppyscan").glob("staging-*"))


def test_an_unusable_out_or_a_damaged_config_fails_before_any_request(server, aoi, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match="is a file, not a folder; choose another --out"):
        run(server, aoi, tmp_path / "afile" / "scenes")
    cfg = tmp_path / "config" / "sentinelhub" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[default-profile]\nsh_client_id = "unclosed\n')
    with pytest.raises(InputError, match="config.toml: the sentinelhub configuration file"):
        run(server, aoi, tmp_path / "out")
    assert server.token_requests == 0


def test_a_wrong_service_url_says_so(server, aoi, tmp_path):
    with pytest.raises(F.FetchError, match="HTTP 404.*check the service URL"):
        F.fetch(aoi, WINDOW, tmp_path / "out", base_url=server.base_url + "/api/v1",
                token_url=server.token_url)


def test_an_aoi_across_the_antimeridian_is_refused_with_the_reason(server, tmp_path):
    """A 200 m field on the 180th meridian was refused as a grid of 131 187 GB."""
    p = tmp_path / "aoi.geojson"
    ring = [[179.999, -17.0], [-179.999, -17.0], [-179.999, -16.998], [179.999, -16.998],
            [179.999, -17.0]]
    p.write_text(json.dumps({"type": "Feature", "properties": {},
                             "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    with pytest.raises(InputError, match="crosses the 180th meridian"):
        run(server, p, tmp_path / "out")
    # written with longitudes past 180 (as some tools do): the same reason, not "these are
    # not longitudes"
    ring = [[179.999, -17.0], [180.001, -17.0], [180.001, -16.998], [179.999, -16.998],
            [179.999, -17.0]]
    p.write_text(json.dumps({"type": "Feature", "properties": {},
                             "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    with pytest.raises(InputError, match=r"longitudes run beyond 180 \(to 180.0010\).*cross "
                                         "the 180th meridian"):
        run(server, p, tmp_path / "out")


def test_another_base_url_without_a_token_url_is_warned(monkeypatch, caplog):
    """The base URL alone does not move the token URL: the credentials still go to Sentinel
    Hub's (a user pointing at another service learnt it from an authentication error after a
    minute of retries). Sentinel Hub's and CDSE's own hosts are not warned about."""
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent-config")
    monkeypatch.delenv("SH_PROFILE", raising=False)
    monkeypatch.setenv("SH_CLIENT_ID", "id")
    monkeypatch.setenv("SH_CLIENT_SECRET", "secret")
    with caplog.at_level("WARNING"):
        F._sh_config("http://127.0.0.1:9", None)
        F._sh_config("https://services-uswest2.sentinel-hub.com", None)
        F._sh_config("https://sh.dataspace.copernicus.eu", None)
        F._sh_config("http://127.0.0.1:9", "http://127.0.0.1:9/token")
    warned = [r.getMessage() for r in caplog.records if "--sh-token-url" in r.getMessage()]
    assert len(warned) == 1 and "127.0.0.1:9" in warned[0]
    assert "services.sentinel-hub.com" in warned[0]


def test_a_second_fetch_into_a_busy_folder_is_refused_and_touches_nothing(server, aoi,
                                                                          tmp_path):
    """Two fetches into one --out: the second removed the first's staging folder (the first
    died naming an internal file) or mixed another AOI's date into it."""
    import fcntl
    out = tmp_path / "out"
    (out / ".poppyscan" / "staging-other").mkdir(parents=True)   # the other run's work
    with open(out / ".poppyscan" / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputBusy, match="another fetch is writing into it now"):
            run(server, aoi, out)
    assert (out / ".poppyscan" / "staging-other").is_dir()
    assert server.token_requests == 0 and not list(out.glob("*.tif"))
    assert len(run(server, aoi, out)["written"]) == 2                # free again: it runs


def test_a_failed_run_removes_the_folders_it_made(server, aoi, tmp_path):
    """--out nest/season/2024 of a run that failed before any download left nest/season."""
    server.fail_process_with = [400]
    with pytest.raises(F.FetchError):
        run(server, aoi, tmp_path / "nest" / "season" / "2024")
    assert not (tmp_path / "nest").exists()


def test_a_token_url_that_is_not_one_is_not_blamed_on_the_credentials(server, aoi, tmp_path):
    """A mistyped token URL (404) or a web page answering it was 'credentials rejected ...
    set SH_CLIENT_ID': the analyst went to make new credentials."""
    for url, said in ((server.base_url + "/auth/realms/CDSE/token", "answered 'not found'"),
                      (server.token_url, "answered without a token")):
        server.html_paths = {"/oauth/token"} if url == server.token_url else set()
        with pytest.raises(F.FetchError, match=f"{said}.*not the service's OAuth token "
                                               "endpoint; check --sh-token-url"):
            F.fetch(aoi, WINDOW, tmp_path / "out", base_url=server.base_url, token_url=url)
    assert not (tmp_path / "out").exists()


def test_a_web_page_for_an_answer_says_so(server, aoi, tmp_path):
    """A proxy's or maintenance page where JSON or an image was due: a JSON parser's error,
    or 'damaged twice (... ReadError('not a gzip file') - method bz2: ReadErr' cut short."""
    server.html_paths = {"/api/v1/catalog/1.0.0/search"}
    with pytest.raises(F.FetchError, match="catalog search at .*: the answer is not JSON"):
        run(server, aoi, tmp_path / "out")
    server.html_paths = {"/api/v1/process"}
    with pytest.raises(F.FetchError, match="answered text/html, not an image"):
        run(server, aoi, tmp_path / "out")
    assert not (tmp_path / "out").exists()     # its cache held request.json files only


def test_a_slow_or_failing_service_is_said_at_each_retry(server, aoi, tmp_path, monkeypatch,
                                                          caplog):
    """A service that never answered gave minutes of silence, then 'check the URL and the
    network'; a 500 every time, the same advice."""
    monkeypatch.setattr(F, "DOWNLOAD_TIMEOUT", 0.3)
    server.process_delay_s = 1.0
    with pytest.raises(F.FetchError, match="no answer in 0.3 s, 4 times; the service is slow "
                                           "or down: try again later"):
        run(server, aoi, tmp_path / "out")
    assert caplog.text.count("the service: no answer in 0.3 s; retrying") == 3
    server.process_delay_s = 0.0
    server.fail_process_with = [500] * 8          # both dates, four times each
    with pytest.raises(F.FetchError, match=r"HTTP 500.*the service failed: try again later"):
        run(server, aoi, tmp_path / "out")
    assert "the service: HTTP 500; retrying" in caplog.text
    # said once each: the library's own two debug lines per retry stay out of the log
    assert "Download attempt failed" not in caplog.text and "attempts left" not in caplog.text


def test_a_window_date_that_does_not_exist_is_named():
    """2023-02-29 was 'a date that is not ISO YYYY-MM-DD': it is ISO, the day does not exist."""
    with pytest.raises(InputError, match="2023-02-29 is not a day of the calendar"):
        F.parse_window("2023-02-29/2023-05-31")
    with pytest.raises(InputError, match="not ISO YYYY-MM-DD"):
        F.parse_window("2023-2-28/2023-05-31")
    assert F.parse_window("2024-02-29/2024-05-31")[0] == dt.date(2024, 2, 29)


def test_an_aoi_smaller_than_a_pixel_is_refused(server, tmp_path):
    """A 1 m box (or lon/lat saved as UTM metres: a point at northing 40 m) was fetched as
    one pixel, and inspect and detect then blamed the clouds."""
    p = write_aoi(tmp_path / "aoi.geojson", dx=0.00001, dy=0.00001)
    with pytest.raises(InputError, match=r"the AOI covers 1.\d+ m\^2 at .*less than one 10 m "
                                         "pixel"):
        run(server, p, tmp_path / "out")
    assert server.token_requests == 0 and not (tmp_path / "out").exists()
