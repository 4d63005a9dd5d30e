"""Target list exports read back with independent readers; formats must agree."""
from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import gpxpy
import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely
from outputs_helpers import CRS, make_targets
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, shape

from outputs import atomic
from outputs.gcj02 import wgs84_to_gcj02
from outputs.targets import TargetList
from outputs.writers import write_blind_areas, write_targets
from pipeline.errors import ConfigError, CRSError

KML = "{http://www.opengis.net/kml/2.2}"
ALL = {"targets.geojson", "targets.gpkg", "targets.csv", "targets.gpx", "targets.kml"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[TargetList, Path, list[Path]]:
    out = tmp_path_factory.mktemp("out")
    tl = make_targets()
    paths = write_targets(tl, out, gcj02=True)
    paths.append(write_blind_areas(tl, out))
    return tl, out, paths


def _to_utm(g):
    tr = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    return shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _by_rank(tl: TargetList):
    return sorted(tl.targets, key=lambda t: t.rank)


def _kml_placemarks(path: Path) -> list[ET.Element]:
    root = ET.parse(path).getroot()
    folder = root.find(f"{KML}Document/{KML}Folder")
    return folder.findall(f"{KML}Placemark")


def _kml_polygons(pm: ET.Element) -> list[Polygon]:
    polys = []
    for poly in pm.iter(f"{KML}Polygon"):
        def ring(el):
            return [tuple(map(float, c.split(","))) for c in el.text.split()]
        outer = ring(poly.find(f"{KML}outerBoundaryIs/{KML}LinearRing/{KML}coordinates"))
        inner = [ring(r) for r in poly.findall(f"{KML}innerBoundaryIs/{KML}LinearRing/{KML}coordinates")]
        polys.append(Polygon(outer, inner))
    return polys


def test_writes_exactly_the_expected_files_and_no_temp_files(written):
    _, out, paths = written
    names = {p.name for p in paths}
    assert names == ALL | {"targets_gcj02.csv", "targets_gcj02.kml", "blind_areas.geojson"}
    assert {p.name for p in out.iterdir()} == names          # nothing .tmp left behind
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)


def test_geojson_is_rfc7946(written):
    tl, out, _ = written
    text = (out / "targets.geojson").read_text(encoding="utf-8")
    fc = json.loads(text)
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    feats = fc["features"]
    assert [f["properties"]["rank"] for f in feats] == [1, 2, 3]
    for f, t in zip(feats, _by_rank(tl)):
        assert f["id"] == f["properties"]["target_id"] == t.target_id
        assert f["geometry"]["type"] == ("MultiPolygon" if isinstance(t.geometry, MultiPolygon)
                                         else "Polygon")
        assert isinstance(f["properties"]["dates"], list)
        assert f["properties"]["dates"] == list(t.dates)
        assert {"target_id", "rank", "score", "score_max", "area_m2", "lon", "lat",
                "elevation_m", "slope_deg", "flowering_obs", "dates", "sensor", "unit",
                "reason"} <= set(f["properties"])
        g = shape(f["geometry"])
        for p in (g.geoms if isinstance(g, MultiPolygon) else [g]):
            assert p.exterior.is_ccw                       # right-hand rule: CCW exterior
            assert all(not r.is_ccw for r in p.interiors)  # ... and clockwise holes
        minx, miny, maxx, maxy = g.bounds                   # lon/lat, not metres
        assert 120.0 < minx < maxx < 120.2 and 30.1 < miny < maxy < 30.3
    assert any(list(shape(f["geometry"]).interiors) for f in feats
               if f["geometry"]["type"] == "Polygon")      # the hole survived

    # every coordinate has at most 7 decimals (parse numbers as text)
    raw = json.loads(text, parse_float=lambda s: s)

    def walk(c):
        if isinstance(c, list):
            for x in c:
                yield from walk(x)
        else:
            yield c
    nums = [n for f in raw["features"] for n in walk(f["geometry"]["coordinates"])]
    assert nums and all(len(n.split(".")[1]) <= 7 for n in nums if "." in n)
    assert max(len(n.split(".")[1]) for n in nums if "." in n) == 7   # rounded, not truncated to less

    info = pyogrio.read_info(out / "targets.geojson")
    assert info["features"] == 3 and ProjCRS(info["crs"]).to_epsg() == 4326


def test_geometry_crs_counts_and_attributes_agree_across_formats(written):
    tl, out, _ = written
    ranked = _by_rank(tl)
    ids = [t.target_id for t in ranked]

    # GeoJSON via pyogrio (independent of our json writer)
    gj_meta, _, gj_geom, gj_fields = pyogrio.raw.read(out / "targets.geojson")
    gj = dict(zip(gj_meta["fields"], gj_fields))
    assert list(gj["target_id"]) == ids and list(gj["rank"]) == [1, 2, 3]

    # GeoPackage via pyogrio: scene CRS, same geometry in metres
    info = pyogrio.read_info(out / "targets.gpkg", layer="targets")
    assert info["layer_name"] == "targets" and info["features"] == 3
    assert ProjCRS(info["crs"]).to_epsg() == 32650
    gp_meta, _, gp_geom, gp_fields = pyogrio.raw.read(out / "targets.gpkg", layer="targets")
    gp = dict(zip(gp_meta["fields"], gp_fields))
    assert list(gp["target_id"]) == ids and list(gp["rank"]) == [1, 2, 3]
    assert list(gp["dates"]) == [";".join(t.dates) for t in ranked]

    # CSV via csv module
    with open(out / "targets.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["target_id", "rank", "lat", "lon", "score", "area_m2"]
    assert [r["target_id"] for r in rows] == ids and all(r["coord_system"] == "WGS84" for r in rows)

    # GPX via gpxpy
    gpx = gpxpy.parse((out / "targets.gpx").read_text(encoding="utf-8"))
    assert len(gpx.waypoints) == 3

    # KML via xml.etree
    pms = _kml_placemarks(out / "targets.kml")
    assert len(pms) == 3

    for i, t in enumerate(ranked):
        g_gj = shapely.from_wkb(gj_geom[i])
        g_gp = shapely.from_wkb(gp_geom[i])
        # GPKG keeps the scene geometry exactly (Polygon may be promoted to MultiPolygon)
        assert g_gp.symmetric_difference(t.geometry).area < 1e-6
        assert g_gp.area == pytest.approx(t.area_m2, rel=1e-12)
        # GeoJSON back in UTM: within the 7-decimal rounding (~1 cm)
        back = _to_utm(g_gj)
        assert back.symmetric_difference(t.geometry).area < 0.02 * back.length
        assert shapely.hausdorff_distance(back, t.geometry) < 0.03
        # KML polygons equal the GeoJSON polygons to the last printed decimal
        kml_geom = shapely.union_all(_kml_polygons(pms[i]))
        assert shapely.hausdorff_distance(kml_geom, g_gj) < 2e-7
        assert all(p.exterior.is_ccw for p in _kml_polygons(pms[i]))

        # attributes agree everywhere
        r = rows[i]
        wpt = gpx.waypoints[i]
        data = {d.get("name"): d.find(f"{KML}value").text or ""
                for d in pms[i].iter(f"{KML}Data")}
        assert int(r["rank"]) == gj["rank"][i] == gp["rank"][i] == int(data["rank"]) == t.rank
        for key in ("score", "score_max", "area_m2"):
            v = getattr(t, key)
            assert float(r[key]) == gj[key][i] == gp[key][i] == float(data[key]) == v
        assert float(r["lat"]) == pytest.approx(t.lat, abs=5e-8) == wpt.latitude
        assert float(r["lon"]) == pytest.approx(t.lon, abs=5e-8) == wpt.longitude
        assert float(data["lat"]) == float(r["lat"]) and float(data["lon"]) == float(r["lon"])
        assert gj["lat"][i] == float(r["lat"]) and gp["lat"][i] == t.lat
        assert r["dates"] == data["dates"] == gp["dates"][i] == ";".join(t.dates)
        assert r["reason"] == data["reason"] == gp["reason"][i] == gj["reason"][i] == t.reason
        # the centroid waypoint lies on its plot (within 1 m, centroid of MultiPolygon may not)
        pt_utm = _to_utm(shapely.Point(wpt.longitude, wpt.latitude))
        assert pt_utm.distance(t.geometry.centroid) < 0.05
        # missing values: empty in CSV/KML, NULL in GPKG and GeoJSON
        if t.elevation_m is None:
            assert r["elevation_m"] == "" and data["elevation_m"] == ""
            assert math.isnan(gp["elevation_m"][i]) and math.isnan(gj["elevation_m"][i])
            assert wpt.elevation is None
        else:
            assert float(r["elevation_m"]) == gp["elevation_m"][i] == wpt.elevation == t.elevation_m
        assert (gp["unit"][i] if t.unit is not None else None) == t.unit
        assert r["unit"] == (t.unit or "")


def test_non_ascii_text_round_trips(written):
    tl, out, _ = written
    t = _by_rank(tl)[2]
    assert "瑞丽" in t.unit and "—" in t.reason
    with open(out / "targets.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[2]["unit"] == t.unit and rows[2]["reason"] == t.reason
    _, _, _, fields = pyogrio.raw.read(out / "targets.gpkg", columns=["unit"])
    assert fields[0][2] == t.unit


def test_gpx_is_1_1_with_short_names(written):
    tl, out, _ = written
    root = ET.parse(out / "targets.gpx").getroot()
    assert root.tag == "{http://www.topografix.com/GPX/1/1}gpx" and root.get("version") == "1.1"
    gpx = gpxpy.parse((out / "targets.gpx").read_text(encoding="utf-8"))
    for w, t in zip(gpx.waypoints, _by_rank(tl)):
        assert len(w.name) == 14 and w.name.startswith(f"T{t.rank:03d}-")
        assert t.target_id.startswith("ps-" + w.name[5:])    # 9 geohash characters
        assert t.target_id in w.description and "score 0." in w.description and "m2" in w.description


def test_gcj02_copies_are_shifted_and_labelled(written):
    tl, out, _ = written
    with open(out / "targets.csv", encoding="utf-8", newline="") as f:
        wgs = list(csv.DictReader(f))
    with open(out / "targets_gcj02.csv", encoding="utf-8", newline="") as f:
        gcj = list(csv.DictReader(f))
    assert len(gcj) == len(wgs) == 3 and all(r["coord_system"] == "GCJ-02" for r in gcj)
    for w, g in zip(wgs, gcj):
        lon, lat = wgs84_to_gcj02(float(w["lon"]), float(w["lat"]))
        assert float(g["lon"]) == pytest.approx(float(lon), abs=2e-7)
        assert float(g["lat"]) == pytest.approx(float(lat), abs=2e-7)
        shift_m = math.hypot((float(g["lon"]) - float(w["lon"])) * 96_000,
                             (float(g["lat"]) - float(w["lat"])) * 111_000)
        assert 100 < shift_m < 1000                      # the GCJ-02 offset near Hangzhou
        assert g["target_id"] == w["target_id"] and g["score"] == w["score"]

    root = ET.parse(out / "targets_gcj02.kml").getroot()
    doc = root.find(f"{KML}Document")
    assert "GCJ-02" in doc.find(f"{KML}name").text and "GCJ-02" in doc.find(f"{KML}description").text
    assert "WGS84" in ET.parse(out / "targets.kml").getroot().find(
        f"{KML}Document/{KML}description").text
    pw, pg = _kml_placemarks(out / "targets.kml"), _kml_placemarks(out / "targets_gcj02.kml")
    for a, b in zip(pw, pg):
        pa = tuple(map(float, a.find(f"{KML}MultiGeometry/{KML}Point/{KML}coordinates").text.split(",")))
        pb = tuple(map(float, b.find(f"{KML}MultiGeometry/{KML}Point/{KML}coordinates").text.split(",")))
        x, y = wgs84_to_gcj02(*pa)
        assert pb == pytest.approx((float(x), float(y)), abs=2e-7)
        ga, gb = shapely.union_all(_kml_polygons(a)), shapely.union_all(_kml_polygons(b))
        assert shapely.hausdorff_distance(shapely.affinity.translate(ga, pb[0] - pa[0], pb[1] - pa[1]),
                                          gb) < 1e-6        # the plot moves with its pin


def test_blind_areas_geojson(written):
    tl, out, _ = written
    fc = json.loads((out / "blind_areas.geojson").read_text(encoding="utf-8"))
    assert fc["type"] == "FeatureCollection" and "crs" not in fc and len(fc["features"]) == 1
    g = shape(fc["features"][0]["geometry"])
    assert g.exterior.is_ccw
    assert _to_utm(g).symmetric_difference(tl.blind_areas[0]).area < 1.0
    info = pyogrio.read_info(out / "blind_areas.geojson")
    assert info["features"] == 1 and ProjCRS(info["crs"]).to_epsg() == 4326
    kml_blind = ET.parse(out / "targets.kml").getroot().findall(f"{KML}Document/{KML}Folder")[1]
    assert len(kml_blind.findall(f"{KML}Placemark")) == 1


def test_blind_area_sizes_in_square_metres_in_any_crs(tmp_path):
    """A drone blind area of a few 5 cm pixels is not 0.0 m^2, and one in a geographic CRS
    (an orthomosaic in EPSG:4326) has a geodesic area, not none."""
    from shapely.geometry import box as sbox
    small = TargetList((), CRS, (sbox(500000.0, 3340000.0, 500000.15, 3340000.10),))  # 6 px
    fc = json.loads(write_blind_areas(small, tmp_path / "utm").read_text(encoding="utf-8"))
    assert fc["features"][0]["properties"]["area_m2"] == pytest.approx(0.015)
    # about 100 m x 100 m at 30 N in degrees
    geo = TargetList((), "EPSG:4326", (sbox(117.0, 30.0, 117.0 + 100 / 96_490, 30.0 + 100 / 110_850),))
    fc = json.loads(write_blind_areas(geo, tmp_path / "geo").read_text(encoding="utf-8"))
    assert fc["features"][0]["properties"]["area_m2"] == pytest.approx(10_000, rel=0.01)


def test_empty_target_list_writes_valid_empty_files(tmp_path):
    tl = TargetList((), CRS)
    paths = write_targets(tl, tmp_path, gcj02=True)
    blind = write_blind_areas(tl, tmp_path)
    assert len(paths) == 7
    for p in (tmp_path / "targets.geojson", blind):
        fc = json.loads(p.read_text(encoding="utf-8"))
        assert fc == {"type": "FeatureCollection", "features": []}
    assert pyogrio.read_info(tmp_path / "targets.gpkg", layer="targets")["features"] == 0
    with open(tmp_path / "targets.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 and rows[0][:2] == ["target_id", "rank"]
    assert gpxpy.parse((tmp_path / "targets.gpx").read_text(encoding="utf-8")).waypoints == []
    assert _kml_placemarks(tmp_path / "targets.kml") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in paths] + ["blind_areas.geojson"])


def test_selected_formats_only_and_unknown_format_rejected(tmp_path):
    tl = make_targets(1)
    paths = write_targets(tl, tmp_path / "new" / "dir", ["csv", "GPX"])
    assert [p.name for p in paths] == ["targets.csv", "targets.gpx"]
    with pytest.raises(ConfigError, match="shp"):
        write_targets(tl, tmp_path / "x", ["geojson", "shp"])
    assert not (tmp_path / "x").exists()               # nothing written before the check


def test_bad_crs_is_a_crs_error(tmp_path):
    tl = make_targets(1)
    bad = TargetList(tl.targets, "EPSG:999999")
    with pytest.raises(CRSError):
        write_targets(bad, tmp_path, ["geojson"])


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    tl = make_targets()
    write_targets(tl, tmp_path, ["geojson", "gpkg"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    import outputs.gpkg as gpkg_mod

    def boom(tmp, *a, **k):                         # write half a file, then fail
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(gpkg_mod, "ogr_write", boom)
    with pytest.raises(OSError, match="disk full"):
        write_targets(make_targets(1), tmp_path, ["gpkg"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert pyogrio.read_info(tmp_path / "targets.gpkg")["features"] == 3


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_waits_until_a_set_of_files_is_swapped_in(tmp_path, sig):
    """Ctrl-C between two moves of detect's final swap left the new targets.geojson beside
    the old targets.csv and report.json: held back, then delivered."""
    import os
    import signal
    number = getattr(signal, sig)
    got: list[str] = []

    def handler(signum, frame):
        raise KeyboardInterrupt(sig)
    previous = signal.signal(number, handler)
    try:
        with pytest.raises(KeyboardInterrupt, match=sig):
            with atomic.uninterrupted():
                for name in ("targets.geojson", "targets.csv", "report.json"):
                    if name == "targets.csv":
                        os.kill(os.getpid(), number)        # mid-way
                    (tmp_path / name).write_text("new")
                    got.append(name)
        assert got == ["targets.geojson", "targets.csv", "report.json"]
        assert signal.getsignal(number) is handler            # restored
    finally:
        signal.signal(number, previous)


def test_atomic_path_replaces_in_place(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"            # not visible until complete
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_waypoint_names_tell_nearby_places_apart_and_small_areas_are_not_zero():
    """Two targets 20 m apart, ranked 1 in two flights surveyed separately: the names differ (a
    6-character id prefix, ~1 km, gave both `T001-ps-wtm5sh`, and a GPS unit keeps one waypoint
    per name). A 0.44 m^2 drone target reads 0.44 m2, not "0 m2"."""
    from dataclasses import replace

    from outputs.gpx import waypoint_desc, waypoint_name
    from outputs.ranking import geohash
    t = make_targets(1).targets[0]
    a = replace(t, rank=1, target_id="ps-" + geohash(30.20000, 120.10000), area_m2=0.44)
    b = replace(t, rank=1, target_id="ps-" + geohash(30.20018, 120.10000), area_m2=1234.4)
    assert waypoint_name(a) != waypoint_name(b)
    assert waypoint_name(replace(a, rank=1234)) == "T1234-" + a.target_id[3:11]
    assert "area 0.44 m2" in waypoint_desc(a) and "area 1234 m2" in waypoint_desc(b)
    # a target of a blind area says so (it said nothing of its flowering observations)
    assert "2 clear flowering obs" in waypoint_desc(a)
    assert "not seen in bloom" in waypoint_desc(replace(a, flowering_obs=0))
    assert "not seen in bloom" not in waypoint_desc(a)


def test_waypoint_names_sort_in_rank_order_in_a_list_of_a_thousand(tmp_path):
    """From rank 1000 on, ``T1000-...`` sorted between ``T100-`` and ``T101-``: a GPS unit
    listing waypoints by name mixed the priorities. Every rank of such a list has 4 digits."""
    from dataclasses import replace
    t = make_targets(1).targets[0]
    many = TargetList(tuple(replace(t, rank=r, target_id=f"ps-wtm{r:07d}")
                            for r in range(1, 1201)), CRS)
    write_targets(many, tmp_path, formats=("gpx", "kml"))
    gpx_names = [w.name for w in gpxpy.parse((tmp_path / "targets.gpx").read_text()).waypoints]
    kml_names = [pm.find(f"{KML}name").text for pm in _kml_placemarks(tmp_path / "targets.kml")]
    assert gpx_names == kml_names == sorted(gpx_names)
    assert gpx_names[0] == "T0001-wtm00000" and gpx_names[-1] == "T1200-wtm00012"
    assert all(len(n) <= 14 for n in gpx_names)
    # a list under 1000 keeps 3 digits
    write_targets(make_targets(), tmp_path, formats=("gpx",))
    assert [w.name[:5] for w in gpxpy.parse((tmp_path / "targets.gpx").read_text()).waypoints] \
        == ["T001-", "T002-", "T003-"]


def test_missing_and_tiny_numbers_read_alike_in_csv_and_kml(tmp_path):
    """A NaN elevation was ``nan`` in the KML (empty in the CSV, null in the GeoJSON); a
    longitude within 11 m of the prime meridian was ``1e-05`` in the CSV and the KML."""
    from dataclasses import replace
    t = make_targets(1).targets[0]
    odd = TargetList((replace(t, elevation_m=float("nan"), lon=0.00001, lat=-0.0000123),), CRS)
    write_targets(odd, tmp_path, formats=("csv", "kml"))
    row = next(csv.DictReader((tmp_path / "targets.csv").open(encoding="utf-8")))
    [pm] = _kml_placemarks(tmp_path / "targets.kml")
    data = {d.get("name"): d.find(f"{KML}value").text or ""
            for d in pm.iter(f"{KML}Data")}
    for got in (row, data):
        assert got["elevation_m"] == ""
        assert got["lon"] == "0.00001" and got["lat"] == "-0.0000123"


def test_outlines_finer_than_the_coordinate_grid_stay_valid(tmp_path):
    """A drone plot traced at 5 mm pixels (below the 1e-7 degree grid, ~1 cm) rounded to
    self-intersecting polygons in the GeoJSON and the KML (an outside audit)."""
    from scipy import ndimage
    from shapely.ops import unary_union

    from outputs.targets import Target
    gsd, n = 0.005, 400                                  # a 2 m window of 5 mm pixels
    x0, y0 = 790000.0, 3345000.0
    field = ndimage.gaussian_filter(np.random.default_rng(1).random((n, n)), sigma=n / 25)
    lab, k = ndimage.label(field > np.percentile(field, 60))
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    targets = []
    for i in range(1, k + 1):
        rr, cc = np.nonzero(lab == i)
        if len(rr) * gsd * gsd < 0.4:
            continue
        p = unary_union([shapely.box(x0 + c * gsd, y0 - (r + 1) * gsd, x0 + (c + 1) * gsd,
                                     y0 - r * gsd) for r, c in zip(rr, cc)])
        lon, lat = to_ll.transform(p.representative_point().x, p.representative_point().y)
        targets.append(Target(f"ps-{i:010d}", len(targets) + 1, p, 0.9, 0.9, p.area, lon, lat))
    assert len(targets) == 2
    write_targets(TargetList(tuple(targets), CRS), tmp_path, formats=("geojson", "kml"))
    feats = json.loads((tmp_path / "targets.geojson").read_text())["features"]
    for f, t in zip(feats, targets):
        g = shape(f["geometry"])
        assert g.is_valid
        assert _to_utm(g).area == pytest.approx(t.area_m2, rel=0.02)
    for pm in _kml_placemarks(tmp_path / "targets.kml"):
        assert all(p.is_valid for p in _kml_polygons(pm))
