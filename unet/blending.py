"""How overlapping tiles combine, and what that costs in context: windows and their audit.

Axes are (y, x) in pixels inside one padded block plane (see :mod:`unet.blocks`).

Two questions decide whether blockwise output is what the model would say on the whole
slice, and both are answered here from the geometry alone, with no model:

* **edge weight** (:func:`edge_weight_fraction`): for each written pixel, the share of its
  weight that comes from predictions made within ``margin`` pixels of a tile's edge, where a
  same-padding U-Net sees zero padding instead of real neighbours. ``crop`` takes every pixel
  from the tile it is most central in (the U-Net paper's overlap-tile strategy), so the share is
  0 wherever that tile's edge is further than the margin.
* **context** (:func:`min_context`): the smallest distance from a written pixel to the edge of
  a tile that contributes to it. Where it is at least the model's receptive-field radius
  (:func:`unet.model.receptive_field_radius`), the tile border cannot change the prediction.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np

from unet.blocks import Region, Tile, owned_intervals, plan_tiles, tile_starts

BlendMode = Literal["crop", "gaussian", "constant"]

# Relative floor of the Gaussian window: only there so no weight is exactly 0 (a pixel covered by
# tile corners alone still gets a prediction). MONAI's 1e-3 made every tile edge weigh the same
# wherever all covering tiles were near their edges (issue 10); 1e-6 leaves the Gaussian's shape.
GAUSSIAN_FLOOR = 1e-6
GAUSSIAN_SIGMA = 0.125  # of the tile size, as MONAI


@lru_cache(maxsize=16)
def blend_window(tile: tuple[int, int], mode: BlendMode) -> np.ndarray:
    """Weights (y, x), float32, of one tile's prediction: Gaussian (peak 1, floored at
    ``GAUSSIAN_FLOOR``), or constant 1 (``constant`` averages; ``crop`` uses owned regions)."""
    if mode == "constant" or mode == "crop":
        ones = np.ones(tile, dtype=np.float32)
        ones.flags.writeable = False
        return ones
    if mode != "gaussian":
        raise ValueError(f"blend mode must be crop, gaussian or constant, got {mode!r}")
    axes = []
    for t in tile:
        c = (t - 1) / 2
        sigma = GAUSSIAN_SIGMA * t
        axes.append(np.exp(-((np.arange(t) - c) ** 2) / (2 * sigma**2)))
    w = np.outer(axes[0], axes[1])
    w = np.maximum(w / w.max(), GAUSSIAN_FLOOR).astype(np.float32)
    w.flags.writeable = False  # cached and shared between calls
    return w


def useful_tiles(plane: tuple[int, int], write: Region, tile: tuple[int, int], overlap: tuple[int, int],
                 mode: BlendMode) -> tuple[Tile, ...]:
    """The tiles of a padded plane whose contribution reaches the (y, x) ``write`` region
    (halo-only tiles would be computed and thrown away)."""
    def reaches(t: Tile) -> bool:
        r = t.owned if mode == "crop" else t.input
        return all(a < d and b > c
                   for a, b, c, d in zip(r.start, r.stop, write.start, write.stop, strict=True))

    return tuple(t for t in plan_tiles(plane, tile, overlap) if reaches(t))


def _edge_distance(shape: tuple[int, int]) -> np.ndarray:
    """Per pixel of a tile, the distance in pixels to the nearest tile edge (0 on the edge)."""
    y = np.minimum(np.arange(shape[0]), np.arange(shape[0])[::-1])
    x = np.minimum(np.arange(shape[1]), np.arange(shape[1])[::-1])
    return np.minimum.outer(y, x)


def _contributions(plane: tuple[int, int], write: Region, tile: tuple[int, int], overlap: tuple[int, int],
                   mode: BlendMode) -> list[tuple[Region, np.ndarray, np.ndarray]]:
    """Per useful tile: the part of the write region it touches, its weights there, and the
    distance of those pixels to the tile's edge."""
    window, dist = blend_window(tile, mode), _edge_distance(tile)
    out = []
    for t in useful_tiles(plane, write, tile, overlap, mode):
        r = t.owned if mode == "crop" else t.input
        lo = tuple(max(a, c) for a, c in zip(r.start, write.start, strict=True))
        hi = tuple(min(b, d) for b, d in zip(r.stop, write.stop, strict=True))
        part = Region(lo, hi)
        local = part.shifted(tuple(-s for s in t.input.start)).slices
        out.append((part.shifted(tuple(-s for s in write.start)), window[local], dist[local]))
    return out


def edge_weight_fraction(plane: tuple[int, int], write: Region, tile: tuple[int, int],
                         overlap: tuple[int, int], mode: BlendMode, margin: int = 8) -> np.ndarray:
    """Per written pixel (y, x), the share of its blending weight that comes from tiles in which
    it lies within ``margin`` pixels of the tile's edge."""
    total = np.zeros(write.shape, np.float64)
    near = np.zeros(write.shape, np.float64)
    for part, w, d in _contributions(plane, write, tile, overlap, mode):
        total[part.slices] += w
        near[part.slices] += np.where(d < margin, w, 0.0)
    return near / total


def min_context(plane: tuple[int, int], write: Region, tile: tuple[int, int], overlap: tuple[int, int],
                mode: BlendMode, min_weight: float = 0.02) -> int:
    """The smallest distance (pixels) from a written pixel to the edge of a tile giving it at
    least ``min_weight`` of its weight; for ``crop``, to the edge of the tile that owns it."""
    if mode == "crop":  # separable: the owner's edge distance is min(y distance, x distance)
        return min(_crop_context_along(*axis) for axis in zip(plane, write.start, write.stop, tile, overlap,
                                                               strict=True))
    return _min_context_per_pixel(plane, write, tile, overlap, mode, min_weight)


def _crop_context_along(length: int, w0: int, w1: int, tile: int, overlap: int) -> int:
    """Along one axis, the smallest distance from a written position in [w0, w1) to the edge of
    the tile owning it. Why not per pixel: for the default geometry that took 1.1 s and 0.5 GB of
    temporaries each time a valid-padding model was loaded; the distance is concave in the
    position, so each owned interval's ends give its minimum."""
    starts = tile_starts(length, tile, overlap)
    owned = ((s, max(a, w0), min(b, w1)) for s, (a, b) in zip(starts, owned_intervals(starts, tile, length),
                                                               strict=True))
    # the distances of lo and hi - 1 to the ends of the tile starting at s
    return min(min(lo - s, s + tile - hi) for s, lo, hi in owned if lo < hi)


def _min_context_per_pixel(plane: tuple[int, int], write: Region, tile: tuple[int, int],
                           overlap: tuple[int, int], mode: BlendMode, min_weight: float) -> int:
    total = np.zeros(write.shape, np.float64)
    parts = _contributions(plane, write, tile, overlap, mode)
    for part, w, _ in parts:
        total[part.slices] += w
    best = np.full(write.shape, np.iinfo(np.int64).max, np.int64)
    for part, w, d in parts:
        counts = w / total[part.slices] >= min_weight
        view = best[part.slices]
        np.minimum(view, np.where(counts, d, np.iinfo(np.int64).max), out=view)
    return int(best.min())
