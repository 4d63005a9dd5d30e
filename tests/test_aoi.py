"""AOI files: GeoJSON, GeoPackage, Shapefile; CGCS2000 / Gauss-Krüger; GBK attributes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import LineString, Point, box

from pipeline.aoi import read_aoi, read_features
from pipeline.errors import InputError

# two village plots near Hangzhou (lon/lat, CGCS2000 ~ WGS84 at this scale)
PLOTS = [box(120.100, 30.200, 120.102, 30.202), box(120.103, 30.200, 120.104, 30.201)]
NAMES = ["西湖区转塘街道", "富阳区银湖街道"]


def _write(path: Path, geoms: list, names: list[str], crs: str, encoding: str | None = None,
           driver: str | None = None) -> Path:
    pyogrio.raw.write(path, np.array(shapely.to_wkb(geoms), dtype=object),
                  [np.array(names, dtype=object)], ["unit"], crs=CRS(crs).to_wkt(),
                  geometry_type="Polygon", encoding=encoding, driver=driver)
    return path


def test_gbk_shapefile_without_cpg(tmp_path: Path) -> None:
    shp = _write(tmp_path / "units.shp", PLOTS, NAMES, "EPSG:4490", encoding="GBK")
    assert "杭州".encode("gbk") != "杭州".encode()
    dbf = shp.with_suffix(".dbf").read_bytes()
    assert NAMES[0].encode("gbk") in dbf                     # really GBK on disk
    shp.with_suffix(".cpg").unlink(missing_ok=True)          # as such files usually arrive
    features, crs = read_features(shp)
    assert [f.properties["unit"] for f in features] == NAMES
    assert crs.to_epsg() == 4490


def test_gbk_shapefile_with_cpg(tmp_path: Path) -> None:
    shp = _write(tmp_path / "units.shp", PLOTS, NAMES, "EPSG:4490", encoding="GBK")
    shp.with_suffix(".cpg").write_text("936")
    features, _ = read_features(shp)
    assert [f.properties["unit"] for f in features] == NAMES


def test_utf8_shapefile(tmp_path: Path) -> None:
    shp = _write(tmp_path / "units.shp", PLOTS, NAMES, "EPSG:4490", encoding="UTF-8")
    shp.with_suffix(".cpg").unlink(missing_ok=True)
    features, _ = read_features(shp)
    assert [f.properties["unit"] for f in features] == NAMES


def test_cgcs2000_gauss_kruger_reprojected(tmp_path: Path) -> None:
    """A CGCS2000 3-degree Gauss-Krüger file (EPSG:4549, central meridian 120E)."""
    to_gk = Transformer.from_crs("EPSG:4490", "EPSG:4549", always_xy=True)
    gk = [shapely.transform(p, lambda xy: np.column_stack(to_gk.transform(xy[:, 0], xy[:, 1])))
          for p in PLOTS]
    gpkg = _write(tmp_path / "aoi.gpkg", gk, NAMES, "EPSG:4549")
    native = read_aoi(gpkg)
    assert native.bounds[0] > 1e5                                 # metres, file's CRS
    utm = read_aoi(gpkg, crs="EPSG:32651")
    to_utm = Transformer.from_crs("EPSG:4490", "EPSG:32651", always_xy=True)
    expected = shapely.transform(shapely.union_all(PLOTS), lambda xy: np.column_stack(
        to_utm.transform(xy[:, 0], xy[:, 1])))
    assert utm.hausdorff_distance(expected) < 1.0                # metres
    assert utm.area == pytest.approx(native.area, rel=2e-3)      # ~ 0.07 km2 both ways
    lonlat = read_aoi(gpkg, crs="EPSG:4490")
    assert lonlat.bounds == pytest.approx((120.100, 30.200, 120.104, 30.202), abs=1e-7)


def test_geojson_union_and_skips_lines(tmp_path: Path) -> None:
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"unit": n}, "geometry": shapely.geometry.mapping(g)}
        for n, g in zip(NAMES, PLOTS)] + [
        {"type": "Feature", "properties": {"unit": "road"},
         "geometry": shapely.geometry.mapping(LineString([(120.1, 30.2), (120.2, 30.3)]))}]}
    f = tmp_path / "aoi.geojson"
    f.write_text(json.dumps(fc, ensure_ascii=False), encoding="utf-8")
    aoi = read_aoi(f)
    assert aoi.geom_type == "MultiPolygon" and len(aoi.geoms) == 2
    assert aoi.area == pytest.approx(sum(p.area for p in PLOTS))
    from rasterio.crs import CRS as RioCRS  # a Scene's CRS, as ingest passes it
    utm = read_aoi(f, crs=RioCRS.from_epsg(32651))
    assert utm.bounds[0] > 1e5 and utm.area == pytest.approx(53_430, rel=0.01)  # m2


def test_no_polygons_is_an_input_error(tmp_path: Path) -> None:
    f = tmp_path / "points.geojson"
    f.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {},
         "geometry": shapely.geometry.mapping(Point(120.1, 30.2))}]}))
    with pytest.raises(InputError, match="no polygons"):
        read_aoi(f)
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(InputError, match="empty.geojson"):
        read_aoi(empty)
    with pytest.raises(InputError, match="not found"):
        read_aoi(tmp_path / "missing.shp")


def _utm_geojson(path: Path) -> Path:
    """A GeoJSON in UTM metres with no ``crs`` member, as a GIS export easily produces."""
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
    utm = shapely.transform(PLOTS[0], lambda xy: np.column_stack(
        to_utm.transform(xy[:, 0], xy[:, 1])))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"class": "poppy"},
        "geometry": shapely.geometry.mapping(utm)}]}))
    return path


def test_geojson_in_metres_without_crs_is_refused(tmp_path: Path) -> None:
    """Read as WGS84 the metres give nonsense (an empty AOI, a GEOS error in training, an
    exclusion that removes nothing); the one reader refuses them for every caller."""
    from classifiers.labels import read_labels, read_polygons
    gj = _utm_geojson(tmp_path / "plots.geojson")
    for call in (lambda: read_aoi(gj, "EPSG:32650"),
                 lambda: read_polygons(gj, "EPSG:32650", what="exclusion file"),
                 lambda: read_labels(gj, "EPSG:32650", require_both=False)):
        with pytest.raises(InputError, match=r"plots\.geojson: coordinates are not "
                           r"longitude/latitude \(e\.g\. x=\d{6}\).*RFC 7946"):
            call()


def test_a_geojson_crs_member_gdal_does_not_know_is_named(tmp_path: Path) -> None:
    """An unknown code in the crs member (GDAL reads the file as WGS84): the refusal said
    'a GeoJSON without a crs member must be WGS84', but the file has one."""
    from pipeline.errors import CRSError
    gj = _utm_geojson(tmp_path / "plots.geojson")
    doc = json.loads(gj.read_text())
    doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::999999"}}
    gj.write_text(json.dumps(doc))
    with pytest.raises(CRSError, match="its crs member names 'urn:ogc:def:crs:EPSG::999999', "
                                       "which is not a CRS GDAL knows"):
        read_features(gj)


def test_geojson_in_lon_lat_without_crs_still_reads(tmp_path: Path) -> None:
    gj = tmp_path / "plots.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(PLOTS[0])}]}))
    features, crs = read_features(gj)
    assert crs.to_epsg() == 4326 and features[0].geometry.equals(PLOTS[0])


def test_a_multipolygon_label_is_its_parts(tmp_path: Path) -> None:
    """Plots delivered as one MultiPolygon feature per class are plots: each part is a
    polygon of its own (eroded, counted and validated alone), with the feature's class."""
    from classifiers.labels import read_labels
    to_utm = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    plots = [box(500000 + 40 * i, 3340000, 500000 + 40 * i + 15, 3340015) for i in range(3)]
    field = box(500000, 3340100, 500200, 3340300)

    def lonlat(g):
        return shapely.transform(g, lambda xy: np.column_stack(
            to_utm.transform(xy[:, 0], xy[:, 1])))
    gj = tmp_path / "labels.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": "poppy"},
         "geometry": shapely.geometry.mapping(lonlat(shapely.MultiPolygon(plots)))},
        {"type": "Feature", "properties": {"class": "wheat"},
         "geometry": shapely.geometry.mapping(lonlat(field))}]}))
    labels = read_labels(gj, "EPSG:32650")
    assert labels.classes == ("poppy", "poppy", "poppy", "wheat")
    assert [g.geom_type for g in labels.geometries] == ["Polygon"] * 4
    for got, want in zip(labels.geometries, plots):
        assert abs(got.area - want.area) < 1 and got.centroid.distance(want.centroid) < 0.5


def _feature(coords, cls: str = "poppy", kind: str = "Polygon") -> dict:
    return {"type": "Feature", "properties": {"class": cls},
            "geometry": {"type": kind, "coordinates": coords}}


def test_an_open_ring_is_closed_and_a_ring_without_area_left_out(tmp_path: Path) -> None:
    """GDAL reads a ring whose last point is not its first (hand edits, some exports); it
    was a GEOSException traceback. It is closed; a two-point 'ring' has no area: left out."""
    ring = list(PLOTS[0].exterior.coords)[:-1]          # not closed
    gj = tmp_path / "labels.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature([ring]), _feature([ring[:2]], "wheat"), _feature(
            [list(PLOTS[1].exterior.coords)], "wheat")]}))
    skipped: list[dict] = []
    features, _ = read_features(gj, skipped=skipped)
    assert len(features) == 2 and features[0].geometry.equals(PLOTS[0])
    assert skipped == [{"class": "wheat"}]


def test_a_folder_given_as_a_vector_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    """A folder holding a Shapefile was read by GDAL and failed only after training, when its
    inputs were hashed (IsADirectoryError)."""
    folder = tmp_path / "plots"
    folder.mkdir()
    _write(folder / "labels.shp", PLOTS, NAMES, "EPSG:4490")
    with pytest.raises(InputError, match="plots: is a folder; give the labels file itself"):
        read_features(folder, what="labels file")


def test_a_geopackage_of_several_layers_names_them_instead_of_reading_the_first(
        tmp_path: Path) -> None:
    """QGIS keeps several layers in one GeoPackage: the first was read silently (a draft
    layer of 5 plots, not the final one of 18). Several layers with geometry are refused,
    naming them; one layer with geometry beside tables without (QGIS styles) is read."""
    gpkg = tmp_path / "labels.gpkg"
    for layer, geoms in (("labels_draft", PLOTS[:1]), ("labels_final", PLOTS)):
        pyogrio.raw.write(gpkg, np.array(shapely.to_wkb(geoms), dtype=object),
                          [np.array(["poppy"] * len(geoms), dtype=object)], ["class"],
                          crs=CRS("EPSG:4326").to_wkt(), geometry_type="Polygon",
                          layer=layer, append=layer != "labels_draft")
    with pytest.raises(InputError, match=r"holds 2 layers with geometry \(labels_draft, "
                                         r"labels_final\).*ogr2ogr"):
        read_features(gpkg, what="labels file")
    # the command it suggests works as printed: names with spaces quoted
    spaced = tmp_path / "field work.gpkg"
    for layer in ("Fields A", "Fields B"):
        pyogrio.raw.write(spaced, np.array(shapely.to_wkb(PLOTS), dtype=object),
                          [np.array(["poppy"] * 2, dtype=object)], ["class"],
                          crs=CRS("EPSG:4326").to_wkt(), geometry_type="Polygon",
                          layer=layer, append=layer != "Fields A")
    with pytest.raises(InputError) as err:
        read_features(spaced, what="AOI file")
    assert str(err.value).endswith(f"(e.g. ogr2ogr 'field work_Fields B.gpkg' '{spaced}' "
                                   "'Fields B')")
    one = tmp_path / "one.gpkg"
    pyogrio.raw.write(one, None, [np.array(["{}"], dtype=object)], ["styleQML"],
                      layer="layer_styles")
    pyogrio.raw.write(one, np.array(shapely.to_wkb(PLOTS), dtype=object),
                      [np.array(["poppy"] * 2, dtype=object)], ["class"],
                      crs=CRS("EPSG:4326").to_wkt(), geometry_type="Polygon",
                      layer="plots", append=True)
    features, _ = read_features(one, what="labels file")
    assert len(features) == 2 and features[1].geometry.equals(PLOTS[1])


def _kml_folders(folders: dict[str, list]) -> str:
    """A Google Earth KML: each folder a Placemark per polygon (name and, in the second
    folder on, a description)."""
    def ring(g) -> str:
        return " ".join(f"{x},{y},0" for x, y in g.exterior.coords)
    body = "".join(
        f"<Folder><name>{name}</name>" + "".join(
            f"<Placemark><name>{name} {k}</name>"
            + (f"<description>d{k}</description>" if i else "")
            + "<Polygon><outerBoundaryIs><LinearRing><coordinates>"
            f"{ring(g)}</coordinates></LinearRing></outerBoundaryIs></Polygon></Placemark>"
            for k, g in enumerate(geoms)) + "</Folder>"
        for i, (name, geoms) in enumerate(folders.items()))
    return ('<?xml version="1.0" encoding="UTF-8"?><kml xmlns="http://www.opengis.net/kml/2.2">'
            f"<Document>{body}</Document></kml>")


def test_a_google_earth_kml_of_several_folders_is_read_whole(tmp_path: Path) -> None:
    """Google Earth keeps an AOI drawn in parts in folders, which GDAL reads as layers: the
    file was refused as 'several layers, which one?'."""
    kml = tmp_path / "county.kml"
    kml.write_text(_kml_folders({"Fields A": PLOTS[:1], "Fields B": PLOTS[1:]}))
    aoi = read_aoi(kml, CRS("EPSG:4326"))
    assert aoi.equals(shapely.union_all(PLOTS))
    features, _ = read_features(kml, what="AOI file")
    assert [f.properties["Name"] for f in features] == ["Fields A 0", "Fields B 0"]


def test_poppy_points_and_poppy_lookalike_classes_are_said(tmp_path: Path, caplog) -> None:
    """Plots recorded as GPS points: the refusal said the file had no poppy; now it says the
    poppy features are points. A class such as 'opium_poppy' is background (the target is
    'poppy'): trained silently as background, now with a warning; ornamental poppy is not
    warned about."""
    import logging

    from classifiers.labels import read_labels
    gj = tmp_path / "labels.geojson"
    field = [list(PLOTS[1].exterior.coords)]
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature([120.1, 30.2], kind="Point"), _feature([120.101, 30.2], kind="Point"),
        _feature(field, "wheat")]}))
    with pytest.raises(InputError, match="its 2 'poppy' features are points or lines, not "
                                         "polygons; outline each plot"):
        read_labels(gj, "EPSG:32650")
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature([list(PLOTS[0].exterior.coords)]), _feature(field, "Opium_Poppy"),
        _feature(field, "ornamental_poppy"), _feature(field, "wheat")]}))
    with caplog.at_level(logging.WARNING, logger="classifiers.labels"):
        labels = read_labels(gj, "EPSG:32650")
    assert labels.classes == ("poppy", "opium_poppy", "ornamental_poppy", "wheat")
    assert "class 'opium_poppy' (1 polygons) is trained as background" in caplog.text
    assert "ornamental" not in caplog.text
