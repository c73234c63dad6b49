"""Preview images for people: side-by-side strips of raw | prediction | label slices (uint8, H x W)."""

from __future__ import annotations

import numpy as np


def to_u8(slice2d: np.ndarray) -> np.ndarray:
    """A 2-D slice as uint8: as is if already uint8, else its min..max stretched to 0..255."""
    if slice2d.dtype == np.uint8:
        return slice2d
    a = slice2d.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def evenly_spaced(z0: int, z1: int, n: int) -> list[int]:
    """At most ``n`` distinct slice indices spread evenly over [z0, z1), both ends included."""
    return sorted({int(round(z)) for z in np.linspace(z0, z1 - 1, num=min(n, z1 - z0))})


def preview_strip(raw: np.ndarray, prediction: np.ndarray | None, label: np.ndarray | None,
                  gap: int = 4) -> np.ndarray:
    """Side-by-side uint8 image (H, W') of the given (H, W) slices with white gaps between."""
    panels = [to_u8(p) for p in (raw, prediction, label) if p is not None]
    h = panels[0].shape[0]
    for p in panels:
        if p.shape[0] != h:
            raise ValueError(f"preview panels must share their height, got {[q.shape for q in panels]}")
    sep = np.full((h, gap), 255, np.uint8)
    parts: list[np.ndarray] = []
    for p in panels:
        parts.extend([p, sep])
    return np.concatenate(parts[:-1], axis=1)
