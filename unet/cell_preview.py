"""Preview images of a segmentation for people: raw with cell outlines | cells in random colours.

Plain numpy on one z slice, (H, W) in and (H, W', 3) uint8 RGB out. A cell's colour
depends only on its ID (a hash), so the same cell has the same colour in every slice,
every preview and every run; ID 0 (no cell) stays black.
"""

from __future__ import annotations

import numpy as np

OUTLINE_RGB = (255, 220, 0)


def cell_colours(cells: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: each cell ID hashed to a bright colour, 0 black."""
    ids = cells.astype(np.uint64)
    h = ids * np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads consecutive IDs apart
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 8, 16)], axis=-1).astype(np.uint8)
    rgb = (64 + (rgb.astype(np.uint16) * 191) // 255).astype(np.uint8)  # no near-black cells
    rgb[cells == 0] = 0
    return rgb


def cell_outlines(cells: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another cell (1 px lines)."""
    edge = np.zeros(cells.shape, bool)
    edge[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    edge[:-1, :] |= cells[:-1, :] != cells[1:, :]
    return edge


def segmentation_preview(raw: np.ndarray, cells: np.ndarray, gap: int = 4, tint: float = 0.65) -> np.ndarray:
    """Side by side (H, 2 W + gap, 3) uint8: ``raw`` (uint8 grey) with the cells' outlines, and
    the cells in random colours mixed with ``tint`` of colour over the raw image."""
    if raw.shape != cells.shape or raw.ndim != 2:
        raise ValueError(f"raw and cells must be 2-D slices of one shape, got {raw.shape} and {cells.shape}")
    grey = np.repeat(raw.astype(np.float32)[..., None], 3, axis=-1)
    outlined = grey.copy()
    outlined[cell_outlines(cells)] = OUTLINE_RGB
    coloured = (1 - tint) * grey + tint * cell_colours(cells).astype(np.float32)
    sep = np.full((raw.shape[0], gap, 3), 255, np.float32)
    return np.concatenate([outlined, sep, coloured], axis=1).round().astype(np.uint8)
