"""TEMPORARY stub until the field-export writers land (same API)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from PIL import Image
from pyproj import Transformer
from shapely.geometry import mapping
from shapely.geometry.polygon import orient

from outputs.targets import TargetList


def _wgs(geom, crs):
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    g = shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    if g.geom_type == "Polygon":
        return orient(g, 1.0)
    return g


def _fc(features):
    return {"type": "FeatureCollection", "features": features}


def write_targets(targets: TargetList, out_dir: Path, formats: Sequence[str] = ("geojson",),
                  *, gcj02: bool = False) -> list[Path]:
    feats = [{"type": "Feature", "id": t.target_id, "properties": t.properties(),
              "geometry": mapping(shapely.set_precision(_wgs(t.geometry, targets.crs), 1e-7))}
             for t in targets.targets]
    p = Path(out_dir) / "targets.geojson"
    tmp = p.with_name(".targets.geojson.tmp")
    tmp.write_text(json.dumps(_fc(feats)))
    os.replace(tmp, p)
    return [p]


def write_blind_areas(targets: TargetList, out_dir: Path) -> Path:
    feats = [{"type": "Feature", "properties": {}, "geometry": mapping(_wgs(g, targets.crs))}
             for g in targets.blind_areas]
    p = Path(out_dir) / "blind_areas.geojson"
    p.write_text(json.dumps(_fc(feats)))
    return p


def write_quicklook(path: Path, rgb: np.ndarray, transform, crs, targets: TargetList) -> Path:
    lo, hi = np.nanpercentile(rgb, 2), np.nanpercentile(rgb, 98)
    img = np.nan_to_num(np.clip((rgb - lo) / (hi - lo + 1e-9), 0, 1) * 255).astype("uint8")
    Image.fromarray(np.moveaxis(img, 0, -1)).save(path)
    return path


def write_map_html(path: Path, rgb: np.ndarray, transform, crs, targets: TargetList) -> Path:
    path.write_text("<html><body>map pending</body></html>")
    return path
