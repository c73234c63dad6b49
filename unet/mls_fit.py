"""The Moving Least Squares fit (Schaefer, McPhail & Warren 2006) at points.

Points are (y, x) row vectors in pixels. A deformation is given by control points
(handles) ``p`` (N, 2) that move to ``q`` (N, 2). Each evaluation point v gets its own best
affine / similarity / rigid map, fitted with weights ``w_i = 1 / |p_i - v|^(2 alpha)``.
Warping images with it: :mod:`unet.mls`.

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
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from unet import exactmath

Mode = Literal["affine", "similarity", "rigid"]
MODES: tuple[Mode, ...] = ("affine", "similarity", "rigid")

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

