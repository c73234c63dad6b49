"""Small TIFF inputs of every kind the ingest accepts, written with tifffile for the tests.

Each writer returns the path (or glob/folder) to pass to ingest, and the data are (z, y, x).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import tifffile

KINDS = ("multipage", "bigtiff", "ome", "imagej", "folder", "glob")


def make_stack(dtype: str = "uint8", shape: tuple[int, int, int] = (12, 40, 56), seed: int = 0) -> np.ndarray:
    """Random (z, y, x) data spanning the dtype's range (floats include negatives)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 100, shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def write_kind(kind: str, data: np.ndarray, folder: Path) -> str:
    """Write ``data`` as a TIFF source of ``kind`` under ``folder``; return what to ingest."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "multipage":
        path = folder / "stack.tif"
        tifffile.imwrite(path, data, photometric="minisblack")
    elif kind == "bigtiff":
        path = folder / "stack_big.tif"
        tifffile.imwrite(path, data, bigtiff=True, photometric="minisblack")
    elif kind == "ome":
        path = folder / "stack.ome.tif"
        # Y, X without a unit are in micrometres (the OME default): 4 nm and 5 nm.
        tifffile.imwrite(path, data, metadata={"axes": "ZYX", "PhysicalSizeZ": 50.0,
                                               "PhysicalSizeZUnit": "nm",
                                               "PhysicalSizeY": 0.004, "PhysicalSizeX": 0.005})
    elif kind == "imagej":
        path = folder / "stack_ij.tif"
        tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                         metadata={"axes": "ZYX", "spacing": 0.04, "unit": "um"})
    elif kind in ("folder", "glob"):
        slices = folder / "slices"
        slices.mkdir(exist_ok=True)
        # Names that sort wrongly in plain lexical order (s10 before s2) test natural sorting.
        for z in range(data.shape[0]):
            tifffile.imwrite(slices / f"s{z}.tif", data[z])
        (slices / "notes.txt").write_text("not an image; ignored by folder and glob")
        return str(slices) if kind == "folder" else str(slices / "s*.tif")
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return str(path)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 and mtime of every file under ``root``: proof that inputs were not modified."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
    return out
