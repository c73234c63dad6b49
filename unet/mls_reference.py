"""The MLS formulas as the paper writes them: the plain reference for tests and the benchmark."""

from __future__ import annotations

import numpy as np

from unet.mls_fit import _SINGULAR_RTOL, Mode, _check_handles, _check_mode


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
