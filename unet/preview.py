"""Preview images for people: side-by-side strips of raw | prediction | label slices (uint8, H x W).

Membranes are drawn white in both the prediction (its probability, 0..255) and the label (a
membrane mask, whatever the label's polarity), so the two panels compare at a glance; a caption
band above each panel says what it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unet.labels import Polarity, membrane_mask

CAPTION_PX = 14
PANEL_CAPTIONS = ("raw", "membrane probability", "label: membrane")


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


def label_panel(label: np.ndarray, polarity: Polarity) -> np.ndarray:
    """A label slice (H, W) as its membrane mask, membrane 255 and the rest 0, for either polarity."""
    return np.where(membrane_mask(label, polarity), np.uint8(255), np.uint8(0))


def caption_band(text: str, width: int, height: int = CAPTION_PX) -> np.ndarray:
    """A (height, width) uint8 band, black text on white (PIL's built-in bitmap font), cut to fit."""
    from PIL import Image, ImageDraw

    band = Image.new("L", (width, height), 255)
    ImageDraw.Draw(band).text((2, 1), text, fill=0)
    return np.asarray(band, dtype=np.uint8)


def preview_strip(raw: np.ndarray, prediction: np.ndarray | None, label: np.ndarray | None,
                  gap: int = 4, captions: Sequence[str] | None = None) -> np.ndarray:
    """Side-by-side uint8 image (H, W') of the given (H, W) slices with white gaps between.

    ``captions`` (one per panel given, in order raw, prediction, label) add a caption band of
    :data:`CAPTION_PX` rows above the panels. Pass the label as :func:`label_panel` to draw
    membranes white as in the prediction."""
    panels = [to_u8(p) for p in (raw, prediction, label) if p is not None]
    h = panels[0].shape[0]
    for p in panels:
        if p.shape[0] != h:
            raise ValueError(f"preview panels must share their height, got {[q.shape for q in panels]}")
    if captions is not None and len(captions) != len(panels):
        raise ValueError(f"{len(captions)} captions for {len(panels)} preview panels")
    rows = h + (CAPTION_PX if captions is not None else 0)
    sep = np.full((rows, gap), 255, np.uint8)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if captions is not None:
            p = np.concatenate([caption_band(captions[i], p.shape[1]), p], axis=0)
        parts.extend([p, sep])
    return np.concatenate(parts[:-1], axis=1)
