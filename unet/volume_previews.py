"""Preview PNGs of volumes, for people: strips ``raw | prediction | label`` of a few z slices.

Slices are read at the finest pyramid level at most :data:`PREVIEW_MAX_WIDTH` pixels wide that
every volume has alike, so a preview of a 20,000² volume reads a few megabytes and fits a screen.
Each strip is saved as a PNG and returned with a small thumbnail (a ``data:`` URI) for markdown
artifacts. Prefect-free: the CLI's direct path (``emseg infer``) and the flows' tasks
(:mod:`tasks.observe`) both write previews with it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from storage.files import remove_stale, write_png_in
from storage.volume import Volume, open_volume
from unet.cell_preview import segmentation_preview
from unet.labels import polarity_of_dataset
from unet.preview import PANEL_CAPTIONS, evenly_spaced, label_panel, preview_strip, to_u8

THUMB_WIDTH = 384  # pixels of the thumbnail embedded in a markdown artifact
PREVIEW_MAX_WIDTH = 2048  # pixels of one panel: a screen's width, and megabytes rather than gigabytes to read


def preview_level(volumes: Sequence[Volume], max_width: int = PREVIEW_MAX_WIDTH) -> int:
    """The finest pyramid level (0 = full resolution) at most ``max_width`` wide that every volume
    has with the same shape; the coarsest such common level when none is that narrow."""
    best = 0
    for level in range(min(len(v.levels) for v in volumes)):
        shapes = {tuple(v.level(level).shape) for v in volumes}
        if len(shapes) != 1:
            break
        best = level
        if next(iter(shapes))[2] <= max_width:
            break
    return best


def thumbnail_data_uri(image: np.ndarray) -> str:
    """A small PNG of ``image`` as a ``data:`` URI, for markdown artifacts."""
    from PIL import Image

    pil = Image.fromarray(image)
    if pil.width > THUMB_WIDTH:
        pil = pil.resize((THUMB_WIDTH, max(1, round(pil.height * THUMB_WIDTH / pil.width))))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def save_previews(raw_path: str, out_dir: str, prediction_path: str | None = None,
                  label_path: str | None = None, n_slices: int = 3,
                  segmentation_path: str | None = None, *, prefix: str = "preview",
                  max_width: int = PREVIEW_MAX_WIDTH) -> list[dict[str, Any]]:
    """Write preview strips ``<prefix>-z<z>.png`` of ``n_slices`` evenly spaced z slices; return
    [{z, path, thumb, level}].

    Paths are OME-Zarr volumes of the same shape (z, y, x); missing ones are left out of
    the strip. With a segmentation, each slice also gets ``segmentation-z<z>.png`` (raw with
    cell outlines | cells in random colours; keys ``segmentation_path``, ``segmentation_thumb``).
    Reads only the chosen slices, at :func:`preview_level`, so it is cheap on any volume size.
    Other ``<prefix>-z*.png`` and ``segmentation-z*.png`` files in ``out_dir`` (an earlier run's)
    are removed.
    """
    raw = open_volume(raw_path)
    pred = open_volume(prediction_path) if prediction_path else None
    lab = open_volume(label_path) if label_path else None
    seg = open_volume(segmentation_path) if segmentation_path else None
    for other in (pred, lab, seg):
        if other is not None and other.shape != raw.shape:
            raise ValueError(f"{other.path} has shape {other.shape}, {raw.path} has {raw.shape}")
    polarity = polarity_of_dataset(dict(lab.attrs) if lab is not None else {})
    level = preview_level([v for v in (raw, pred, lab, seg) if v is not None], max_width)
    scale = f" (1/{2 ** level})" if level else ""
    nz = raw.shape[0]
    zs = evenly_spaced(0, nz, n_slices)
    out: list[dict[str, Any]] = []
    names_written: list[str] = []
    cells_written: list[str] = []
    for z in zs:
        def one(v: Volume | None, z: int = z) -> np.ndarray | None:
            return None if v is None else np.asarray(v.level(level)[z])
        label = one(lab)
        panels = (one(raw), one(pred), None if label is None else label_panel(label, polarity))
        names = (f"raw z={z}{scale}", *PANEL_CAPTIONS[1:])
        captions = [c for c, v in zip(names, panels, strict=True) if v is not None]
        strip = preview_strip(*panels, captions=captions)  # type: ignore[arg-type]
        names_written.append(f"{prefix}-z{z:04d}.png")
        path = write_png_in(out_dir, names_written[-1], strip)
        out.append({"z": z, "path": path, "thumb": thumbnail_data_uri(strip), "level": level})
        if seg is not None:
            cells = segmentation_preview(to_u8(one(raw)), one(seg))  # type: ignore[arg-type]
            cells_written.append(f"segmentation-z{z:04d}.png")
            seg_png = write_png_in(out_dir, cells_written[-1], cells)
            out[-1].update(segmentation_path=seg_png, segmentation_thumb=thumbnail_data_uri(cells))
    # Previews of an earlier volume (other depth, other slices) must not sit beside these.
    remove_stale(out_dir, f"{prefix}-z*.png", names_written)
    remove_stale(out_dir, "segmentation-z*.png", cells_written)
    return out


