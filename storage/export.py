"""Export any volume (image, labels, prediction, segmentation) to a TIFF stack with its voxel size.

Two formats, both written with tifffile, one page per z slice, axes (z, y, x):

* ``ome`` (default): OME-TIFF, BigTIFF when the data passes 2 GiB; ``PhysicalSize{Z,Y,X}`` in
  nm. Any dtype emseg stores, including uint32/uint64 cell IDs. Fiji (Bio-Formats), napari
  (``tifffile``), QuPath and ``emseg ingest`` read the voxel size back.
* ``imagej``: an ImageJ hyperstack (``spacing`` and resolution tags with ``unit=nm``), which
  plain ImageJ opens by drag and drop. ImageJ knows uint8, uint16 and float32 only, so a
  segmentation (uint32/uint64) is refused: export it as OME-TIFF.

The volume is streamed slab by slab (a slab is one write block of z slices, capped at
:data:`SLAB_BYTES`): a volume larger than memory exports in bounded memory. The file is
written under a hidden temporary name beside the target and renamed into place only when
complete, so a killed export never leaves a truncated TIFF under the target's name. An
existing target is never replaced unless ``overwrite=True``. Axes whose voxel size the
volume does not know (``voxel_size_unknown``, see :mod:`storage.ingest`) are left out of the
metadata rather than written as the 1 nm placeholder. Local paths only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tifffile

from storage.errors import InputError, StoreExistsError, writing
from storage.volume import Volume, open_volume

TiffFormat = Literal["ome", "imagej"]
FORMATS: tuple[str, ...] = ("ome", "imagej")
IMAGEJ_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
SLAB_BYTES = 256 * 2**20  # at most this much of the volume in memory at once
BIGTIFF_BYTES = 2 * 2**30  # classic TIFF offsets are 32-bit: switch to BigTIFF well before 4 GiB
Progress = Callable[..., None]


@dataclass(frozen=True)
class ExportResult:
    """What was written: the TIFF, its geometry (z, y, x), dtype and voxel size (nm, None = unknown)."""

    path: str
    source: str
    format: str
    shape: tuple[int, int, int]
    dtype: str
    voxel_size_nm: tuple[float | None, float | None, float | None]
    bytes: int

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "source": self.source, "format": self.format, "shape": list(self.shape),
                "dtype": self.dtype, "voxel_size_nm": list(self.voxel_size_nm), "bytes": self.bytes}


def known_voxel_size(volume: Volume) -> tuple[float | None, float | None, float | None]:
    """The volume's voxel size (z, y, x) in nm, with None for the axes recorded as unknown."""
    unknown = set(volume.attrs.get("voxel_size_unknown", ()))
    z, y, x = volume.voxel_size.as_tuple()
    return (None if "z" in unknown else z, None if "y" in unknown else y, None if "x" in unknown else x)


def slab_depth(volume: Volume, budget: int = SLAB_BYTES) -> int:
    """Slices read at once: whole write blocks (shards) in z when they fit in ``budget``, else fewer."""
    _, h, w = volume.shape
    per_slice = max(h * w * volume.dtype.itemsize, 1)
    return max(1, min(volume.write_block_shape[0], budget // per_slice, volume.shape[0]))


def _pages(volume: Volume, depth: int, progress: Progress | None) -> Iterator[np.ndarray]:
    n = volume.shape[0]
    for z0 in range(0, n, depth):
        slab = volume.read(slice(z0, min(z0 + depth, n)))
        yield from slab
        if progress is not None:
            progress(min(z0 + depth, n), n)


def _write_options(fmt: TiffFormat, voxel: tuple[float | None, float | None, float | None],
                   nbytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TiffWriter options, write() options) carrying the voxel size in the format's metadata."""
    z, y, x = voxel
    if fmt == "ome":
        meta: dict[str, Any] = {"axes": "ZYX"}
        for axis, size in zip("ZYX", voxel, strict=True):
            if size is not None:
                meta[f"PhysicalSize{axis}"] = float(size)
                meta[f"PhysicalSize{axis}Unit"] = "nm"
        return {"bigtiff": nbytes > BIGTIFF_BYTES, "ome": True}, {"metadata": meta}
    ij: dict[str, Any] = {"axes": "ZYX", "unit": "nm"}
    if z is not None:
        ij["spacing"] = float(z)
    options: dict[str, Any] = {"metadata": ij}
    if y is not None and x is not None:
        options["resolution"] = (1.0 / x, 1.0 / y)  # pixels per nm, (x, y) as TIFF orders them
    # Over 4 GiB tifffile writes ImageJ's own contiguous layout, which ImageJ reads (no BigTIFF).
    return {"imagej": True}, options


def export_volume(volume: Volume, target: str | os.PathLike[str], *, fmt: TiffFormat = "ome",
                  overwrite: bool = False, progress: Progress | None = None,
                  slab_bytes: int = SLAB_BYTES) -> ExportResult:
    """Write ``volume`` (level 0, z, y, x) to the TIFF ``target``, streaming slab by slab.

    Refuses an existing ``target`` without ``overwrite`` (before and after writing: the
    temporary file is linked into place, which fails if another writer got there first),
    an unknown ``fmt``, and a dtype the format cannot hold.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "imagej" and volume.dtype not in IMAGEJ_DTYPES:
        raise InputError(f"{volume.path}: ImageJ TIFF cannot hold {volume.dtype} (only uint8, uint16, "
                         "float32); export it as OME-TIFF (format 'ome')")
    final = os.path.abspath(os.fspath(target))
    if os.path.isdir(final):
        raise InputError(f"{final} is a folder; give the TIFF file to write (e.g. {final}/out.ome.tif)")
    if not overwrite and os.path.lexists(final):
        raise StoreExistsError(f"{final} already exists; pass --overwrite (overwrite=True from Python) "
                               "to replace it")
    directory = os.path.dirname(final)
    voxel = known_voxel_size(volume)
    shape = volume.shape
    nbytes = int(np.prod(shape)) * volume.dtype.itemsize
    writer_opts, write_opts = _write_options(fmt, voxel, nbytes)
    with writing(final):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".exporting", dir=directory)
        os.close(fd)
        try:
            with tifffile.TiffWriter(tmp, **writer_opts) as tw:
                tw.write(_pages(volume, slab_depth(volume, slab_bytes), progress), shape=shape,
                         dtype=volume.dtype, photometric="minisblack", **write_opts)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _publish_file(tmp, final, overwrite)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ExportResult(path=final, source=volume.path, format=fmt, shape=shape, dtype=str(volume.dtype),
                        voxel_size_nm=voxel, bytes=os.path.getsize(final))


def _publish_file(tmp: str, final: str, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``final``: replace it if ``overwrite``, else a hard link that
    fails when ``final`` appeared meanwhile (a plain rename would silently replace it)."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise StoreExistsError(f"{final} already exists (written while exporting); pass --overwrite "
                               "(overwrite=True from Python) to replace it") from None
    except OSError:  # no hard links here (some network or FAT file systems): check, then rename
        if os.path.lexists(final):
            raise StoreExistsError(f"{final} already exists; pass --overwrite (overwrite=True from "
                                   "Python) to replace it") from None
        os.rename(tmp, final)
        return
    os.unlink(tmp)


def export_tiff(source: str | os.PathLike[str], target: str | os.PathLike[str], *, fmt: TiffFormat = "ome",
                overwrite: bool = False, progress: Progress | None = None) -> ExportResult:
    """Export the complete OME-Zarr volume at ``source`` (any kind) to the TIFF ``target``."""
    return export_volume(open_volume(source), target, fmt=fmt, overwrite=overwrite, progress=progress)
