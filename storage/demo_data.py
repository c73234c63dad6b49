"""TIFF stacks of a synthetic EM-like volume, for the demo, the e2e tests and the nightly inbox.

Writes ``<stem>.tif`` (image, uint8, axes z, y, x) and ``<stem>_labels.tif`` (255 = cell
interior, 0 = membrane, the ISBI 2012 polarity) from :mod:`storage.synthetic`. Each file is
written under a temporary name and renamed, so an inbox scanner never sees half a stack.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tifffile

from storage.errors import StoreExistsError
from storage.files import atomic_write_bytes
from storage.synthetic import SyntheticSpec, generate_volume


def _atomic_imwrite(path: str, data: np.ndarray) -> None:
    # Small stacks (demo, tests): encoded in memory, then written with the project's atomic writer.
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="minisblack")
    atomic_write_bytes(path, buf.getvalue())


def write_synthetic_stack(out_dir: str | os.PathLike[str], spec: SyntheticSpec, stem: str = "synthetic",
                          with_labels: bool = True, overwrite: bool = False) -> tuple[str, str | None]:
    """Write the synthetic volume ``spec`` as TIFF stacks; return (image path, labels path or None)."""
    root = os.fspath(out_dir)
    image_path = os.path.join(root, f"{stem}.tif")
    labels_path = os.path.join(root, f"{stem}_labels.tif") if with_labels else None
    for p in (image_path, labels_path):
        if p is not None and os.path.exists(p) and not overwrite:
            raise StoreExistsError(f"{p} already exists; pass "
                                   "--overwrite (overwrite=True from Python) to replace it")
    vol = generate_volume(spec)
    _atomic_imwrite(image_path, vol.image)
    if labels_path is not None:
        _atomic_imwrite(labels_path, vol.labels)
    return image_path, labels_path
