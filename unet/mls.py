"""Moving Least Squares image warping (Schaefer, McPhail & Warren 2006).

Points are (y, x) row vectors in pixels, pixel centres at integer coordinates; images are
(H, W). A deformation is given by control points (handles) ``p`` (N, 2) that move to
``q`` (N, 2). Each evaluation point v gets its own best affine / similarity / rigid map,
fitted with weights ``w_i = 1 / |p_i - v|^(2 alpha)``.

Warping uses the *backward* map: for every output pixel v we evaluate MLS with p and q
swapped, which gives the source coordinate to sample. The map is evaluated on a coarse
grid (every ``grid_step`` px, first and last grid points on the first and last pixels)
and upsampled bilinearly as ``R_y @ m @ R_x.T``; the error against the full-resolution
map stays well under 0.5 px for the handle spacings used in augmentation (tested).

::

    output pixel v ──MLS(q → p)──▶ source coordinate s(v) ──sample──▶ out[v] = src[s(v)]
                 (coarse grid, then bilinear upsampling of s)

The fit itself (moments, edge cases, bit-identical on every CPU) is :mod:`unet.mls_fit`;
the paper's formulas as written, :mod:`unet.mls_reference`. Their names import from here too.

Edge cases of the warp (those of the fit: :mod:`unet.mls_fit`):

* p == q: the identity, exactly (no rounding from the fit).
* source coordinates outside the image: reflected about the border pixels
  (cv2 ``BORDER_REFLECT_101`` == scipy ``mode="mirror"``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage

from unet.mls_fit import MODES, Mode, _check_handles, _mls_on_grid, mls_points
from unet.mls_reference import mls_points_reference

__all__ = ["MODES", "Engine", "Mode", "backward_map", "coarse_grid", "handle_grid", "min_jacobian",
           "mls_points", "mls_points_reference", "remap", "warp"]

Engine = Literal["cv2", "scipy"]


def coarse_grid(n: int, grid_step: int) -> np.ndarray:
    """Grid coordinates along one axis of ``n`` pixels: ~every ``grid_step`` px, 0 and n-1 included."""
    if grid_step < 1:
        raise ValueError(f"grid_step must be >= 1, got {grid_step}")
    g = max(2, -(-(n - 1) // grid_step) + 1) if n > 1 else 1
    return np.linspace(0.0, n - 1.0, g)


@lru_cache(maxsize=32)
def _interpolation(n: int, grid_step: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``n`` pixels, the coarse-grid interval j (n,) int and the position t in it
    (n,) float64 in [0, 1]: pixel i interpolates grid points j and j + 1 with weights 1 - t, t."""
    grid = coarse_grid(n, grid_step)
    if len(grid) == 1:
        j, t = np.zeros(n, dtype=np.intp), np.zeros(n)
    else:
        pos = np.arange(n, dtype=np.float64)
        j = np.clip(np.searchsorted(grid, pos, side="right") - 1, 0, len(grid) - 2)
        t = (pos - grid[j]) / (grid[j + 1] - grid[j])
    for a in (j, t):
        a.setflags(write=False)
    return j, t


def _upsample(m: np.ndarray, h: int, w: int, grid_step: int) -> np.ndarray:
    """Bilinear upsampling of a coarse map (Gy, Gx) to (h, w) float32: along x on the coarse
    rows (float64), then along y by gathering whole rows (float32, the large step)."""
    jy, ty = _interpolation(h, grid_step)
    jx, tx = _interpolation(w, grid_step)
    jy1 = np.minimum(jy + 1, m.shape[0] - 1)  # t = 0 where a single grid point spans the axis
    jx1 = np.minimum(jx + 1, m.shape[1] - 1)
    cols = (m[:, jx] * (1.0 - tx) + m[:, jx1] * tx).astype(np.float32)  # (Gy, w)
    wy1 = ty.astype(np.float32)[:, None]
    wy0 = (1.0 - ty).astype(np.float32)[:, None]
    out = cols[jy]
    out *= wy0
    out += cols[jy1] * wy1
    return out


def backward_map(p: np.ndarray, q: np.ndarray, shape: tuple[int, int], mode: Mode = "rigid", *,
                 grid_step: int = 8, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (map_y, map_x), each (H, W) float32, of the warp that moves p → q.

    ``grid_step`` = 1 evaluates MLS at every pixel (the exact map); larger values evaluate
    on a coarse grid and upsample bilinearly.
    """
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise ValueError(f"shape must be two positive sizes (H, W), got {shape}")
    p, q = _check_handles(p, q)
    if np.array_equal(p, q):
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                             indexing="ij")
        return yy, xx
    gy = coarse_grid(h, grid_step) if grid_step > 1 else np.arange(h, dtype=np.float64)
    gx = coarse_grid(w, grid_step) if grid_step > 1 else np.arange(w, dtype=np.float64)
    # Backward map: swap p and q, so each output point finds where it comes from.
    src = _mls_on_grid(q, p, gy, gx, mode, alpha).reshape(len(gy), len(gx), 2)
    if grid_step == 1:
        return (np.ascontiguousarray(src[..., 0], dtype=np.float32),
                np.ascontiguousarray(src[..., 1], dtype=np.float32))
    return _upsample(src[..., 0], h, w, grid_step), _upsample(src[..., 1], h, w, grid_step)


def min_jacobian(map_y: np.ndarray, map_x: np.ndarray) -> float:
    """Smallest Jacobian determinant of a map (finite differences). ≤ 0 means it folds over."""
    dyy, dyx = np.gradient(map_y.astype(np.float64))
    dxy, dxx = np.gradient(map_x.astype(np.float64))
    return float((dyy * dxx - dyx * dxy).min())


def remap(image: np.ndarray, map_y: np.ndarray, map_x: np.ndarray, *, order: Literal[0, 1],
          engine: Engine = "cv2") -> np.ndarray:
    """Sample ``image`` (H, W) at (map_y, map_x): order 1 bilinear, 0 nearest; reflect at borders.

    cv2.remap is the gather used in practice: scipy's map_coordinates on the same map costs
    ~11 ms more per 512² image+label (notes/mls.md), more than the whole MLS map. The scipy
    path is kept as a plain reference. Output has the input dtype; bilinear results of
    integer images are rounded.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (bilinear), got {order}")
    if engine == "cv2":
        interp = cv2.INTER_NEAREST if order == 0 else cv2.INTER_LINEAR
        return cv2.remap(image, map_x.astype(np.float32, copy=False), map_y.astype(np.float32, copy=False),
                         interp, borderMode=cv2.BORDER_REFLECT_101)
    if engine == "scipy":
        out = ndimage.map_coordinates(image.astype(np.float32), [map_y, map_x], order=order,
                                      mode="mirror")
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(image.dtype)
    raise ValueError(f"engine must be 'cv2' or 'scipy', got {engine!r}")


def warp(image: np.ndarray, label: np.ndarray, weight: np.ndarray | None, p: np.ndarray, q: np.ndarray,
         mode: Mode = "rigid", *, grid_step: int = 8, alpha: float = 1.0, engine: Engine = "cv2",
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Warp an image (bilinear) and its label and weight map (nearest, same map) by p → q.

    All arrays (H, W); labels keep exactly their value set. Returns (image, label, weight).
    """
    if label.shape != image.shape or (weight is not None and weight.shape != image.shape):
        raise ValueError(f"image {image.shape}, label {label.shape} and weight "
                         f"{None if weight is None else weight.shape} must have the same shape")
    map_y, map_x = backward_map(p, q, image.shape, mode, grid_step=grid_step, alpha=alpha)
    out_w = None if weight is None else remap(weight, map_y, map_x, order=0, engine=engine)
    return (remap(image, map_y, map_x, order=1, engine=engine),
            remap(label, map_y, map_x, order=0, engine=engine), out_w)


def handle_grid(shape: tuple[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """A k×k grid of handles spanning the image, corners on the corner pixels.

    Returns (points (k*k, 2) float64 (y, x), border mask (k*k,) bool: handles on the frame).
    """
    if k < 2:
        raise ValueError(f"the handle grid needs k >= 2 per side, got {k}")
    h, w = shape
    gy, gx = np.meshgrid(np.linspace(0, h - 1, k), np.linspace(0, w - 1, k), indexing="ij")
    iy, ix = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    border = (iy == 0) | (iy == k - 1) | (ix == 0) | (ix == k - 1)
    return np.stack([gy.ravel(), gx.ravel()], axis=1), border.ravel()
