"""exp, log and pow that give the same bits on every machine (float64 arrays).

numpy's ``exp`` / ``log`` / ``power`` pick an implementation by CPU (AVX-512, AVX2 + FMA or
plain libm), and these differ in the last bits: the border weight maps of a training set
changed with ``NPY_DISABLE_CPU_FEATURES``. A training set's bytes must be a function of its
parameters, so the augmentation uses these instead: range reduction plus a fixed
polynomial, written only with operations IEEE 754 rounds exactly (+, -, *, /, rint, ldexp,
frexp), which every machine computes alike. About 1-2 ulp from the true value, far below
what the float32 / float16 outputs keep.
"""

from __future__ import annotations

import numpy as np

# ln 2 split so that k * _LN2_HI is exact for |k| < 2**11 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_SQRT_HALF = 0.70710678118654752440
# exp(r) for |r| <= ln(2)/2: Taylor to r**13 (next term < 5e-18).
_EXP_COEFFS = tuple(1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64))) for n in range(14))
# 2 atanh(s) = log((1 + s) / (1 - s)) for |s| <= 0.172: odd powers to s**21 (next term < 5e-18).
_LOG_COEFFS = tuple(2.0 / (2 * n + 1) for n in range(11))


def exp(x: np.ndarray | float) -> np.ndarray:
    """e**x, float64, elementwise; 0 below -745 (and for -inf), inf above 709.78."""
    x = np.clip(np.asarray(x, dtype=np.float64), -746.0, 710.0)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_COEFFS[-1])
    for c in reversed(_EXP_COEFFS[:-1]):
        p = p * r + c
    return np.ldexp(p, k.astype(np.int64))


def log(x: np.ndarray | float) -> np.ndarray:
    """Natural logarithm of x > 0, float64, elementwise (ValueError on x <= 0 or non-finite x)."""
    x = np.asarray(x, dtype=np.float64)
    if not (np.isfinite(x).all() and (x > 0).all()):
        raise ValueError("log needs finite x > 0")
    m, e = np.frexp(x)  # x = m * 2**e, m in [0.5, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)  # m in [sqrt(1/2), sqrt(2))
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = np.full_like(s, _LOG_COEFFS[-1])
    for c in reversed(_LOG_COEFFS[:-1]):
        p = p * s2 + c
    return e * _LN2_HI + (e * _LN2_LO + s * p)


def power(x: np.ndarray | float, y: float) -> np.ndarray:
    """x**y for x >= 0 (0**y = 0 for y > 0), float64, elementwise."""
    x = np.asarray(x, dtype=np.float64)
    if (x < 0).any() or (y <= 0 and (x == 0).any()):
        raise ValueError(f"power needs x >= 0 (x > 0 for y <= 0), got y={y}")
    positive = x > 0
    out = np.zeros_like(x)
    out[positive] = exp(y * log(x[positive]))
    return out
