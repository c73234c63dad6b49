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

Sums over handles are written as moments, one (M, 12) array for all of them (see
/work/shared/notes/mls.md, "cheaper equivalent form"): with
``F_i = [1, p_i, q_i, p_i ⊗ p_i, p_i ⊗ q_i]`` and ``S = w @ F``, the centred sums are
``Σ w p̂ᵀp̂ = S_pp - W p*ᵀp*`` (same for p̂ᵀq̂). Similarity and rigid use complex
numbers z = y + i·x: with ``c = Σ w conj(p̂) q̂``, similarity is ``(v - p*)·c/μ + q*``
(μ = Σ w |p̂|²) and rigid is ``(v - p*)·c/|c| + q*``. Everything is float64 with
coordinates centred on the image, which keeps the cancellation in ``S_pp - W p*ᵀp*`` harmless.

Same bits on every machine: a training set's bytes are a function of its parameters, so
nothing here goes through BLAS (``@``), whose summation order follows the CPU's kernel
and the thread count (OpenBLAS's Haswell and SkylakeX kernels gave different maps, hence
different images). The moments are summed handle by handle and the map is upsampled by
explicit linear interpolation, with elementwise operations that IEEE 754 rounds
exactly; ``|c|`` is a square root, not ``hypot`` (a libm function), and ``alpha != 1`` powers
come from :mod:`unet.exactmath`.

Edge cases, each with a defined result:

* v exactly on a handle (w = ∞): the map returns that handle's target q_k.
* affine with collinear or too few handles (singular moment matrix): v - p* + q*.
* rigid with c = 0 (no preferred rotation): the same translation v - p* + q*.
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

from unet import exactmath

Mode = Literal["affine", "similarity", "rigid"]
MODES: tuple[Mode, ...] = ("affine", "similarity", "rigid")
Engine = Literal["cv2", "scipy"]

# Relative threshold under which the 2x2 affine moment matrix counts as singular.
_SINGULAR_RTOL = 1e-10


def _check_handles(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 1:
        raise ValueError(f"control points p must have shape (N, 2) with N >= 1, got {p.shape}")
    if q.shape != p.shape:
        raise ValueError(f"targets q must have the shape of p {p.shape}, got {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError("control points p and q must be finite")
    return p, q


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def mls_points(p: np.ndarray, q: np.ndarray, v: np.ndarray, mode: Mode = "rigid",
               alpha: float = 1.0) -> np.ndarray:
    """Evaluate the MLS deformation p → q at points ``v`` (M, 2); returns f(v) (M, 2) float64.

    All coordinates (y, x) in pixels. Moment-GEMM form; see the module docstring.
    """
    p, q = _check_handles(p, q)
    v = np.asarray(v, dtype=np.float64).reshape(-1, 2)
    d2 = (v[:, 0, None] - p[None, :, 0]) ** 2 + (v[:, 1, None] - p[None, :, 1]) ** 2
    return _mls_from_d2(p, q, v, d2, mode, alpha)


def _mls_on_grid(p: np.ndarray, q: np.ndarray, gy: np.ndarray, gx: np.ndarray, mode: Mode,
                 alpha: float) -> np.ndarray:
    """MLS at the points of the grid gy × gx (row-major), (len(gy)·len(gx), 2) float64.

    On a grid the squared distances are separable, |v - p|² = (vy - py)² + (vx - px)², so
    they come from two small tables and one broadcast add instead of an (M, N, 2) array.
    """
    ddy = (gy[:, None] - p[None, :, 0]) ** 2  # (Gy, N)
    ddx = (gx[:, None] - p[None, :, 1]) ** 2  # (Gx, N)
    d2 = (ddy[:, None, :] + ddx[None, :, :]).reshape(-1, p.shape[0])
    vy, vx = np.meshgrid(gy, gx, indexing="ij")
    v = np.stack([vy.ravel(), vx.ravel()], axis=1)
    return _mls_from_d2(p, q, v, d2, mode, alpha)


def _mls_from_d2(p: np.ndarray, q: np.ndarray, v: np.ndarray, d2: np.ndarray, mode: Mode,
                 alpha: float) -> np.ndarray:
    """MLS p → q at points v (M, 2), given their squared distances d2 (M, N) to the handles."""
    _check_mode(mode)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if np.array_equal(p, q):
        return v.copy()
    on_handle = d2 == 0.0
    hit_rows = on_handle.any(axis=1)
    if hit_rows.any():
        d2 = np.where(on_handle, 1.0, d2)  # placeholder; these rows are overwritten with q_k below
    w = 1.0 / d2 if alpha == 1.0 else exactmath.exp(-alpha * exactmath.log(d2))
    # Centre all coordinates (on the handles' mean) to limit cancellation in S_pp - W p* p*ᵀ;
    # v is centred only after the distances, so a point on a handle stays exactly on it.
    origin = p.mean(axis=0)
    p, q, v = p - origin, q - origin, v - origin

    # F_i = [1, py, px, qy, qx, py*py, py*px, px*px, py*qy, py*qx, px*qy, px*qx]
    py, px, qy, qx = p[:, 0], p[:, 1], q[:, 0], q[:, 1]
    feats = np.stack([np.ones_like(py), py, px, qy, qx, py * py, py * px, px * px,
                      py * qy, py * qx, px * qy, px * qx], axis=1)
    s = _moments(w, feats)  # (M, 12)
    inv_wsum = 1.0 / s[:, 0]
    ps = s[:, 1:3] * inv_wsum[:, None]  # p*
    qs = s[:, 3:5] * inv_wsum[:, None]  # q*
    wsum = s[:, 0]
    # Centred second moments Σ w p̂ᵀp̂ and Σ w p̂ᵀq̂ (2x2 each, per evaluation point).
    wpy, wpx = wsum * ps[:, 0], wsum * ps[:, 1]
    a_yy = s[:, 5] - wpy * ps[:, 0]
    a_yx = s[:, 6] - wpy * ps[:, 1]
    a_xx = s[:, 7] - wpx * ps[:, 1]
    b_yy = s[:, 8] - wpy * qs[:, 0]
    b_yx = s[:, 9] - wpy * qs[:, 1]
    b_xy = s[:, 10] - wpx * qs[:, 0]
    b_xx = s[:, 11] - wpx * qs[:, 1]
    rel = v - ps  # v - p*
    out = rel + qs  # the translation fallback v - p* + q*

    if mode == "affine":
        det = a_yy * a_xx - a_yx * a_yx
        ok = det > _SINGULAR_RTOL * (a_yy + a_xx) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_yy, inv_yx, inv_xx = a_xx / det, -a_yx / det, a_yy / det
            # row vector (v - p*) @ A⁻¹ @ B
            t_y = rel[:, 0] * inv_yy + rel[:, 1] * inv_yx
            t_x = rel[:, 0] * inv_yx + rel[:, 1] * inv_xx
            fy = t_y * b_yy + t_x * b_xy + qs[:, 0]
            fx = t_y * b_yx + t_x * b_xx + qs[:, 1]
    else:
        # c = Σ w conj(p̂) q̂ with z = y + i x: Re c = tr(B), Im c = B_yx - B_xy.
        c_re = b_yy + b_xx
        c_im = b_yx - b_xy
        if mode == "similarity":
            scale = a_yy + a_xx  # μ_s = Σ w |p̂|²
            ok = scale > 0
        else:
            scale = np.sqrt(c_re * c_re + c_im * c_im)  # |c|
            ok = scale > _SINGULAR_RTOL * (a_yy + a_xx)
        with np.errstate(divide="ignore", invalid="ignore"):
            c_re, c_im = c_re / scale, c_im / scale
            fy = rel[:, 0] * c_re - rel[:, 1] * c_im + qs[:, 0]
            fx = rel[:, 0] * c_im + rel[:, 1] * c_re + qs[:, 1]
    if ok.all():
        out = np.stack([fy, fx], axis=1)
    else:
        out[ok, 0], out[ok, 1] = fy[ok], fx[ok]

    if hit_rows.any():
        out[hit_rows] = q[on_handle[hit_rows].argmax(axis=1)]
    return out + origin


def _moments(w: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Σ_i w[:, i] · feats[i], (M, F) float64, summed in handle order (i = 0, 1, ...).

    ``w @ feats`` without BLAS: the same bits whatever the CPU and the thread count.
    """
    s = np.zeros((feats.shape[1], w.shape[0]))  # (F, M): each handle adds F contiguous rows
    term = np.empty_like(s)
    wt = np.ascontiguousarray(w.T)
    for i in range(w.shape[1]):
        np.multiply(feats[i][:, None], wt[i][None, :], out=term)
        s += term
    return s.T


def mls_points_reference(p: np.ndarray, q: np.ndarray, v: np.ndarray, mode: Mode = "rigid",
                         alpha: float = 1.0) -> np.ndarray:
    """The formulas of the paper as they read, vectorised over points, looping over handles.

    The plain reference for tests and the benchmark (~50x slower than :func:`mls_points`).
    Points exactly on a handle get eps = 1e-8 added to the squared distance (Jarvis73's
    choice), so they land within ~1e-6 px of q_k.
    """
    p, q = _check_handles(p, q)
    _check_mode(mode)
    v = np.asarray(v, dtype=np.float64).reshape(-1, 2)
    n = p.shape[0]
    w = np.stack([1.0 / (((v - p[i]) ** 2).sum(axis=1) + 1e-8) ** alpha for i in range(n)], axis=1)
    wsum = w.sum(axis=1)
    ps = (w @ p) / wsum[:, None]
    qs = (w @ q) / wsum[:, None]
    rel = v - ps

    def perp(a: np.ndarray) -> np.ndarray:  # (y, x)^⊥ = (-x, y): a fixed 90° rotation
        return np.stack([-a[..., 1], a[..., 0]], axis=-1)

    if mode == "affine":
        a_mat = np.zeros((len(v), 2, 2))
        b_mat = np.zeros((len(v), 2, 2))
        for i in range(n):
            ph, qh = p[i] - ps, q[i] - qs
            a_mat += w[:, i, None, None] * ph[:, :, None] * ph[:, None, :]
            b_mat += w[:, i, None, None] * ph[:, :, None] * qh[:, None, :]
        det = np.linalg.det(a_mat)
        ok = np.abs(det) > _SINGULAR_RTOL * np.trace(a_mat, axis1=1, axis2=2) ** 2
        out = rel + qs
        m = np.einsum("mi,mij,mjk->mk", rel[ok], np.linalg.inv(a_mat[ok]), b_mat[ok])
        out[ok] = m + qs[ok]
        return out
    f = np.zeros_like(v)
    mu = np.zeros(len(v))
    right = np.stack([rel, -perp(rel)], axis=-1)  # columns v - p*, -(v - p*)^⊥: (M, 2, 2)
    for i in range(n):
        ph, qh = p[i] - ps, q[i] - qs
        left = np.stack([ph, -perp(ph)], axis=1)  # rows p̂_i, -p̂_i^⊥: (M, 2, 2)
        a_i = w[:, i, None, None] * (left @ right)
        f += np.einsum("mj,mjk->mk", qh, a_i)
        mu += w[:, i] * (ph**2).sum(axis=1)
    if mode == "similarity":
        return f / mu[:, None] + qs
    norm = np.linalg.norm(f, axis=1)
    out = rel + qs
    ok = norm > 0
    out[ok] = np.linalg.norm(rel[ok], axis=1)[:, None] * f[ok] / norm[ok, None] + qs[ok]
    return out


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
