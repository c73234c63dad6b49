"""What a volume's raw voxel values mean: its intensity range, recorded at ingest.

The model sees intensities on the 0..255 scale of 8-bit EM (:data:`unet.predictor.INPUT_SCALE`).
Stacks also come as 12- or 16-bit integers or as floats; dividing those by 255 (or casting them
to uint8, which wraps 12-bit data modulo 256) silently mis-scales them. So ingest records the
range ``(lo, hi)`` that maps to 0..255, every stage maps through it, and a volume without one
whose dtype does not say it (anything but uint8) is refused rather than guessed:

* unsigned integers: ``(0, 2**bits - 1)`` for the fewest bits (at least 8) holding the data's
  maximum, so 12-bit data stored in uint16 maps 4095 → 255 and full-range 16-bit 65535 → 255;
* floats: ``(0, 1)`` when the data lies in [0, 1], else its minimum and maximum;
* signed integers: the data's minimum and maximum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage.errors import InputError

ATTR = "intensity_range"
UINT8_RANGE = (0.0, 255.0)


def range_for(dtype: Any, lo: float, hi: float) -> tuple[float, float]:
    """The intensity range of data of ``dtype`` whose values span [lo, hi] (see the module doc)."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return UINT8_RANGE
    if np.issubdtype(dt, np.unsignedinteger):
        bits = max(8, int(hi).bit_length())
        return 0.0, float(2**bits - 1)
    if np.issubdtype(dt, np.floating) and 0.0 <= lo and hi <= 1.0:
        return 0.0, 1.0
    if hi <= lo:  # a constant volume: any non-empty range maps it somewhere sensible
        return float(lo), float(lo) + 1.0
    return float(lo), float(hi)


def volume_range(attrs: dict[str, Any], dtype: Any, path: str) -> tuple[float, float]:
    """A volume's recorded range; uint8 needs none; anything else unrecorded is an InputError."""
    recorded = attrs.get(ATTR)
    if recorded is not None:
        lo, hi = (float(v) for v in recorded)
        return lo, hi
    if np.dtype(dtype) == np.uint8:
        return UINT8_RANGE
    raise InputError(f"{path} holds {np.dtype(dtype)} voxels but records no intensity range, so they "
                     "cannot be mapped to the model's 0..255 scale; ingest the stack with `emseg ingest` "
                     "(which records it)")


def scale_offset(rng: tuple[float, float]) -> tuple[float, float]:
    """(scale, offset) with ``x * scale + offset`` mapping ``rng`` onto 0..255."""
    lo, hi = rng
    scale = 255.0 / (hi - lo)
    return scale, -lo * scale


def to_uint8(data: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
    """``data`` mapped through ``rng`` to uint8 0..255 (rounded, clipped); uint8 data in 0..255 as is."""
    if data.dtype == np.uint8 and rng == UINT8_RANGE:
        return data
    scale, offset = scale_offset(rng)
    out = data.astype(np.float32) * np.float32(scale) + np.float32(offset)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
