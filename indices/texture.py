"""Spatial context features: neighbourhood statistics of per-phase composites.

At 5 cm a poppy plot is not a pixel but a pattern: glaucous leaf discs of ~20 cm with petal
blobs of 5-10 cm and soil between the plants. A single pixel of soil inside a poppy bed looks
like any soil; its neighbourhood does not. This module turns per-pixel phase composites into
neighbourhood statistics over square windows of side ``2 r + 1`` pixels:

- ``mean``: local mean (the plot's average colour, e.g. leaf + petal mixture),
- ``std``: local standard deviation (texture: plants, gaps and flower blobs),
- ``max``: local maximum (a petal blob anywhere nearby),
- ``min``: local minimum,
- ``dev``: the pixel minus its local mean (at 10 m: a plot against the field or garden around
  it; a shift of the whole scene, from calibration, haze or season, cancels).

Every statistic ignores NaN (masked pixels and the outside of the scene): a window's value is
computed from its valid pixels only, NaN when none is valid. So a tile read with a halo of
``max(r)`` pixels gives exactly the same values as the whole scene at once, and a scene edge
behaves like a masked area. Filters are separable (scipy.ndimage uniform/maximum filters),
a few milliseconds per megapixel and statistic.

Feature names: ``<phase>.<stat>_r<r>.<var>``, e.g. ``flowering.std_r4.NDVI``.

Leaf-only variables (``<var>@leaf``, e.g. ``NDYI@leaf``): the variable where the pixel is green
leaf (``NGRDI >= 0.1``: green above red, which chlorophyll gives and petals, soil, roofs and
concrete do not), NaN elsewhere; its local statistics then describe the leaves around a pixel
with the flowers, soil and gaps between plants left out. Poppy's glaucous (waxy, blue-grey)
leaves are the same whatever colour its petals are, so these features carry the cue a model
trained on plots of one petal colour can transfer to plots of another (docs/drone.md).

Relative variables (``<var>@rel``, e.g. ``nir@rel``): every statistic over the window's mean
(``mean`` becomes the pixel over the mean, ``std`` the coefficient of variation, ``max`` the
brightest spot against its surroundings). A gain, a sun height or a shadow that scales a
neighbourhood's brightness cancels, so a band can describe petals (bright) against leaves and
soil (dark) without its absolute level, which differs from flight to flight.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

STATS: tuple[str, ...] = ("mean", "std", "max")   # the default set; also "min", "dev"

#: leaf mask of ``<var>@leaf`` variables: pixels whose ``LEAF_INDEX`` is >= ``LEAF_MIN``
LEAF_SUFFIX = "@leaf"
LEAF_INDEX = "NGRDI"
LEAF_MIN = 0.1
#: relative variables (``<band>@rel``): every statistic is divided by the window's mean
REL_SUFFIX = "@rel"


def split_var(name: str) -> tuple[str, bool]:
    """``"NDYI@leaf"`` -> ``("NDYI", True)``; ``"NDVI"`` -> ``("NDVI", False)``;
    ``"nir@rel"`` -> ``("nir", False)`` (see :func:`is_relative`)."""
    name = name.removesuffix(REL_SUFFIX)
    if name.endswith(LEAF_SUFFIX):
        return name[:-len(LEAF_SUFFIX)], True
    return name, False


def is_relative(name: str) -> bool:
    return name.endswith(REL_SUFFIX)


def spatial_names(phases: Sequence[str], variables: Sequence[str], radii: Sequence[int],
                  stats: Sequence[str] = STATS) -> list[str]:
    """Names in the fixed order :func:`spatial_block` writes them."""
    return [f"{ph}.{st}_r{r}.{v}" for ph in phases for v in variables for r in radii
            for st in stats]


def _count(valid: np.ndarray, size: int) -> np.ndarray:
    return ndimage.uniform_filter(valid.astype("float32"), size, mode="constant", cval=0.0)


def _local(x: np.ndarray, r: int, stats: Sequence[str],
           cache: dict | None = None, relative: bool = False) -> list[np.ndarray]:
    """NaN-aware local statistics of one 2-D float32 image over (2r+1)^2 windows.

    ``cache`` keeps the share of valid pixels per window for images without NaN (the usual
    case), so it is filtered once per radius, not once per variable."""
    size = 2 * r + 1
    valid = np.isfinite(x)
    all_valid = bool(valid.all())
    xf = x.astype("float32") if all_valid else np.where(valid, x, 0.0).astype("float32")
    if all_valid and cache is not None:
        if r not in cache:
            cache[r] = _count(valid, size)
        cnt = cache[r]
    else:
        cnt = _count(valid, size)
    none = cnt < 0.5 / size ** 2
    safe = np.where(none, 1.0, cnt)
    out = []
    mean = ndimage.uniform_filter(xf, size, mode="constant", cval=0.0) / safe
    for st in stats:
        if st == "mean":
            v = mean
        elif st == "std":
            m2 = ndimage.uniform_filter(xf * xf, size, mode="constant", cval=0.0) / safe
            v = np.sqrt(np.maximum(m2 - mean * mean, 0.0))
        elif st == "max":
            v = ndimage.maximum_filter(xf if all_valid else np.where(valid, x, -np.inf)
                                       .astype("float32"), size, mode="constant",
                                       cval=-np.inf)
        elif st == "dev":
            v = x - mean     # NaN where the pixel itself is masked
        elif st == "min":
            v = ndimage.minimum_filter(xf if all_valid else np.where(valid, x, np.inf)
                                       .astype("float32"), size, mode="constant",
                                       cval=np.inf)
        else:
            raise ValueError(f"unknown spatial statistic '{st}'")
        if relative:   # brightness-free: the statistic over the window's mean
            v = (x if st == "mean" else v) / np.where(mean > 0, mean, np.nan)
        out.append(np.where(none, np.nan, v).astype("float32"))
    return out


def spatial_block(images: np.ndarray, radii: Sequence[int],
                  stats: Sequence[str] = STATS, relative: Sequence[bool] = ()) -> np.ndarray:
    """(n, y, x) composites -> (n * len(radii) * len(stats), y, x), order var, radius, stat.
    ``relative``: per composite, whether its statistics are over the window mean (``@rel``)."""
    n, ny, nx = images.shape
    rel = tuple(relative) or (False,) * n
    out = np.empty((n * len(radii) * len(stats), ny, nx), dtype="float32")
    k = 0
    cache: dict = {}
    for i in range(n):
        for r in radii:
            for v in _local(images[i], int(r), stats, cache, rel[i]):
                out[k] = v
                k += 1
    return out
