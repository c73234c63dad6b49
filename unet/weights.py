"""Border weight maps of the U-Net paper (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 · exp(-(d1(x) + d2(x))² / (2 σ²))

d1, d2 are the distances (px) from x to the nearest and second-nearest cell; cells are the
connected components (4-connected, so a one-pixel diagonal membrane still separates two
cells) of the interior pixels under the declared label polarity (ISBI: 255 = interior,
0 = membrane). The border term is applied to membrane pixels only: it is there to make
the thin membranes between touching cells count, and inside a cell d1 = 0 would just
re-weight interior pixels near every border. w_c balances the two classes so that each
carries half of the total weight (mean of w_c over the slice = 1).

Computed once per source slice from its labels (float32, (H, W)), then warped with them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from unet import exactmath

# Distances only matter while exp(-(d1+d2)²/2σ²) is visible: beyond d1 + d2 = 6σ the term is
# below 1.5e-8 · w0, under float16's resolution of the stored map. So each cell's distance
# transform is computed only inside its bounding box grown by 6σ, not over the whole slice.
_CUTOFF_SIGMAS = 6.0


def class_balance_weights(interior: np.ndarray) -> np.ndarray:
    """w_c (H, W) float32: 0.5 / frequency of the pixel's class (1 everywhere if one class is absent)."""
    frac = float(interior.mean())
    if frac in (0.0, 1.0):
        return np.ones(interior.shape, dtype=np.float32)
    return np.where(interior, 0.5 / frac, 0.5 / (1.0 - frac)).astype(np.float32)


def two_nearest_cell_distances(cells: np.ndarray, n_cells: int, cutoff: float) -> tuple[np.ndarray,
                                                                                         np.ndarray]:
    """Distances (px) to the nearest and second-nearest cell, each (H, W) float32; inf beyond ``cutoff``.

    ``cells`` is an (H, W) int label image (0 = no cell, 1..n_cells = cells), as from
    ``scipy.ndimage.label``.
    """
    h, w = cells.shape
    d1 = np.full((h, w), np.inf, dtype=np.float32)
    d2 = np.full((h, w), np.inf, dtype=np.float32)
    pad = int(np.ceil(cutoff))
    for index, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        y0, y1 = max(box[0].start - pad, 0), min(box[0].stop + pad, h)
        x0, x1 = max(box[1].start - pad, 0), min(box[1].stop + pad, w)
        outside = cells[y0:y1, x0:x1] != index
        dist = ndimage.distance_transform_edt(outside).astype(np.float32)
        near1, near2 = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]  # views: updated in place
        closer = dist < near1
        near2[...] = np.where(closer, near1, np.minimum(near2, dist))
        near1[...] = np.where(closer, dist, near1)
    return d1, d2


def border_weight_map(label: np.ndarray, *, interior_value: int = 255, w0: float = 10.0,
                      sigma: float = 5.0, class_balance: bool = True) -> np.ndarray:
    """The U-Net weight map (H, W) float32 for a label slice (H, W) (see the module docstring).

    ``interior_value`` is the label value of cell interiors; every other value is membrane.
    """
    if label.ndim != 2:
        raise ValueError(f"label must be 2-D (H, W), got shape {label.shape}")
    if sigma <= 0 or w0 < 0:
        raise ValueError(f"need sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    interior = label == interior_value
    weight = class_balance_weights(interior) if class_balance else np.ones(label.shape, np.float32)
    if w0 == 0:
        return weight
    cells, n_cells = ndimage.label(interior)
    if n_cells == 0:
        return weight
    d1, d2 = two_nearest_cell_distances(cells, n_cells, _CUTOFF_SIGMAS * sigma)
    d = d1.astype(np.float64) + d2  # inf beyond the cutoff, where the term is 0
    # exactmath.exp, not np.exp: numpy's exp differs in the last bits between CPUs, and the
    # training set's bytes must not.
    border = w0 * exactmath.exp(-(d * d) / (2.0 * sigma**2))
    return (weight + np.where(interior, 0.0, border)).astype(np.float32)
