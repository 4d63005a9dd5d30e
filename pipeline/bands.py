"""The canonical vocabulary: band names, dimension names and their order.

Every sensor maps its bands onto these names (Awesome Spectral Indices' band names), and every
stage checks its input with :func:`check_scene` where data enters it.
"""
from __future__ import annotations

import xarray as xr

from pipeline.errors import InputError

#: Reflective bands in canonical order (Awesome Spectral Indices names).
CANONICAL_BANDS: tuple[str, ...] = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
    "nir", "nir08", "wv", "swir16", "swir22",
)
#: Categorical layers carried in a Scene next to the reflective bands (nearest-neighbour only).
CATEGORICAL_BANDS: tuple[str, ...] = ("scl",)
ALL_BANDS: tuple[str, ...] = CANONICAL_BANDS + CATEGORICAL_BANDS

#: Dimension order of a Scene.
SCENE_DIMS: tuple[str, ...] = ("time", "band", "y", "x")

#: Sentinel-2 band name -> canonical name.
S2_BANDS: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "wv",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
#: Sentinel-2 band_id used in product metadata offsets (0-12, where 8 is B8A).
S2_BAND_ID: dict[str, int] = {
    "B01": 0, "B02": 1, "B03": 2, "B04": 3, "B05": 4, "B06": 5, "B07": 6, "B08": 7,
    "B8A": 8, "B09": 9, "B10": 10, "B11": 11, "B12": 12,
}


def canonical_name(name: str) -> str | None:
    """Map a Sentinel-2 or canonical band name (any case) to the canonical name, else None."""
    key = name.strip()
    up = key.upper()
    if len(up) == 2 and up[0] == "B" and up[1].isdigit():  # Earth Engine style: B2 = B02
        up = f"B0{up[1]}"
    if up in S2_BANDS:
        return S2_BANDS[up]
    low = key.lower()
    return low if low in ALL_BANDS else None


def order_bands(names: list[str] | tuple[str, ...]) -> list[str]:
    """Sort canonical names into canonical order (categorical layers last)."""
    return sorted(names, key=ALL_BANDS.index)


def check_scene(scene: xr.DataArray, stage: str) -> None:
    """Check that ``scene`` is a Scene: dims (time, band, y, x), canonical band names, float32."""
    if tuple(scene.dims) != SCENE_DIMS:
        raise InputError(f"{stage}: scene dims are {tuple(scene.dims)}, expected {SCENE_DIMS}")
    unknown = [b for b in scene["band"].values.tolist() if b not in ALL_BANDS]
    if unknown:
        raise InputError(f"{stage}: unknown band names {unknown}; canonical names are {ALL_BANDS}")
    if scene.dtype != "float32":
        raise InputError(f"{stage}: scene dtype is {scene.dtype}, expected float32")
