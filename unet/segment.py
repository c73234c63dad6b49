"""Cells from a membrane probability map: seeds, their components, a per-slice watershed.

Arrays are (z, y, x) voxels; probabilities are uint8 0..255 (membrane = 255), as stored
by the infer stage. The method (:class:`unet.segment_config.SegmentConfig`):

1. **seeds**: pixels with probability below the threshold, optionally only those farther
   than ``seed_distance`` pixels from any membrane pixel (the distance transform of each
   slice, which splits cells joined through small gaps in a membrane);
2. **components** of the seeds (``cc3d``): 4-connected within a slice, or 6-connected
   through z with ``link_slices`` (then a cell keeps its ID from slice to slice); those
   smaller than ``min_seed_size`` voxels are dropped;
3. **growth**: a seeded watershed of each slice's probability map (scikit-image), so
   membranes are split between the cells on either side and every pixel gets a cell.

Every step but the watershed is exact when run block by block (the distance needs a halo
larger than ``seed_distance``; components are joined across block faces): see
:mod:`unet.segment_run`. :func:`segment_array` runs the same method on a volume in memory,
the reference that blockwise output is tested against.
"""

from __future__ import annotations

from typing import Literal

import fastremap
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from unet.segment_config import SegmentConfig


def check_probability(prob: np.ndarray, what: str = "probability") -> None:
    """ValueError unless ``prob`` is a 3-D uint8 (z, y, x) membrane probability map."""
    if prob.ndim != 3:
        raise ValueError(f"{what} must be 3-D (z, y, x), got shape {prob.shape}")
    if prob.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 membrane probabilities 0..255, got {prob.dtype}")


def seed_mask(prob: np.ndarray, threshold: float, seed_distance: float = 0.0) -> np.ndarray:
    """Boolean (z, y, x) seed pixels: probability < ``threshold`` (in [0, 1]) and, when
    ``seed_distance`` > 0, more than that many pixels from the nearest membrane pixel in the slice."""
    check_probability(prob)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    interior = prob < threshold * 255.0
    if seed_distance <= 0:
        return interior
    out = np.zeros_like(interior)
    for z, plane in enumerate(interior):
        if plane.all():  # no membrane in view: every pixel is far from one (scipy has no zero to measure)
            out[z] = True
        elif plane.any():
            out[z] = ndimage.distance_transform_edt(plane) > seed_distance
    return out


def label_seeds(mask: np.ndarray, link_slices: bool) -> tuple[np.ndarray, int]:
    """Components (z, y, x) uint32 numbered 1..n, and n: 4-connected per slice, or 6-connected in 3-D."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (z, y, x), got shape {mask.shape}")
    if link_slices:
        labels, n = cc3d_components(mask, 6)
        return labels, n
    out = np.zeros(mask.shape, np.uint32)
    n = 0
    for z, plane in enumerate(mask):
        labels, k = cc3d_components(plane, 4)
        out[z] = np.where(labels > 0, labels + np.uint32(n), 0)
        n += k
    return out, n


def cc3d_components(mask: np.ndarray, connectivity: Literal[4, 6]) -> tuple[np.ndarray, int]:
    """Face-connected components of a 2-D (4) or 3-D (6) boolean mask, uint32 numbered 1..n."""
    import cc3d

    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True,
                                          out_dtype=np.uint32)
    return labels.astype(np.uint32, copy=False), int(n)


def grow(prob: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Seeded watershed of each slice of ``prob`` (z, y, x) from ``markers`` (same shape, 0 = none).

    Returns the markers' values (any unsigned dtype, uint64 included) grown over every
    pixel of each slice that holds a marker; slices without markers stay 0. Markers are
    renumbered per slice (fastremap) so the watershed's own int32 labels never overflow.
    """
    if prob.shape != markers.shape:
        raise ValueError(f"prob shape {prob.shape} differs from markers shape {markers.shape}")
    out = np.zeros(markers.shape, markers.dtype)
    for z in range(prob.shape[0]):
        if not markers[z].any():
            continue
        small, mapping = fastremap.renumber(markers[z], preserve_zero=True)
        grown = watershed(prob[z], small.astype(np.int32))
        back = np.zeros(len(mapping) + 1, markers.dtype)  # new id -> original id; 0 stays 0
        for old, new in mapping.items():
            back[int(new)] = old
        out[z] = back[grown]
    return out


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with components of fewer than ``min_size`` voxels set to 0 (then renumbered 1..n)."""
    if min_size > 0:
        ids, counts = fastremap.unique(labels, return_counts=True)
        small = [int(i) for i, c in zip(ids, counts, strict=True) if i != 0 and c < min_size]
        if small:
            labels = fastremap.mask(labels, small)
    renumbered, _ = fastremap.renumber(labels, preserve_zero=True)
    return renumbered


def segment_array(prob: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    """Cell labels (z, y, x) of a whole probability volume in memory (the blockwise reference).

    IDs are 1..n in ``cfg.dtype``; 0 only in slices that hold no seed at all.
    """
    check_probability(prob)
    seeds, _ = label_seeds(seed_mask(prob, cfg.threshold, cfg.seed_distance), cfg.link_slices)
    seeds = drop_small(seeds, cfg.min_seed_size)
    return grow(prob, seeds.astype(np.dtype(cfg.dtype)))
