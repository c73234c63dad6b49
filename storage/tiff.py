"""TIFF sources of EM stacks: open, validate from headers only, read in slabs of slices.

A *source* is one of

* a multi-page TIFF, BigTIFF, OME-TIFF or ImageJ hyperstack (one file, one page per slice);
* a folder, a glob pattern, or a list of single-slice TIFFs (natural sort: 2.tif before 10.tif).

:func:`open_source` checks every header before any pixel is read (truncated files, corrupt
IFDs, missing codecs, RGB or multichannel pages without a chosen ``channel``, slices of
different shapes or dtypes, empty folders, files that are not TIFFs) and raises
:class:`storage.errors.InputError` naming the file (and page) and the problem. Pixels are
then read slab by slab with :meth:`SlabReader.read`; a decode failure is re-raised naming
the file and the pages. Beside it: :mod:`storage.tiff_files` (which files),
:mod:`storage.tiff_headers` (the header checks), :mod:`storage.tiff_meta` (voxel size).

Geometry is always (z, y, x) in voxels; voxel sizes are (z, y, x) in nanometres, ``None``
where the file does not say. Inputs are only ever opened read-only (``tifffile.memmap``
defaults to a writable ``r+`` mapping and is never used here).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import tifffile

from storage.errors import InputError
from storage.tiff_files import TIFF_SUFFIXES, PathLike, resolve_files
from storage.tiff_headers import SUPPORTED_DTYPES, StackLayout, inspect_stack, slice_signature
from storage.tiff_meta import VoxelNm, voxel_size_nm

__all__ = ["SUPPORTED_DTYPES", "TIFF_SUFFIXES", "PathLike", "SlabReader", "TiffSource", "VoxelNm",
           "open_source", "resolve_files", "voxel_size_nm"]


@dataclass(frozen=True)
class TiffSource:
    """A validated TIFF source. ``shape`` is (z, y, x) in voxels after channel selection,
    ``voxel_nm`` is (z, y, x) in nm with None where the files do not say."""

    kind: Literal["stack", "slices"]
    files: tuple[str, ...]
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    voxel_nm: VoxelNm
    channel: int | None
    _layout: StackLayout = field(repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> dict[str, Any]:
        """JSON-able description (recorded in the volume's attributes)."""
        return {"kind": self.kind, "files": list(self.files), "shape": list(self.shape),
                "dtype": str(self.dtype), "channel": self.channel,
                "voxel_size_nm": list(self.voxel_nm)}

    def fingerprint(self) -> list[dict[str, Any]]:
        """Path, size and modification time of every file: tells whether inputs changed."""
        out = []
        for f in self.files:
            st = os.stat(f)
            out.append({"path": f, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    def reader(self) -> SlabReader:
        return SlabReader(self)


def open_source(sources: PathLike | Sequence[PathLike], *, channel: int | None = None) -> TiffSource:
    """Validate a TIFF source from its headers only (no pixel data read) and describe it.

    Raises :class:`InputError` naming the file (and page) for every problem found.
    """
    if channel is not None and channel < 0:
        raise InputError(f"channel must be >= 0, got {channel}")
    kind, files = resolve_files(sources)
    if kind == "stack":
        layout, shape, dtype, voxel = inspect_stack(files[0], channel)
        return TiffSource("stack", (files[0],), shape, dtype, voxel, channel, layout)
    first_yx, first_dtype, layout, voxel = slice_signature(files[0], channel)
    for f in files[1:]:
        yx, dtype, this_layout, _ = slice_signature(f, channel)
        if yx != first_yx:
            raise InputError(f"{f}: slice shape {yx} differs from {first_yx} of {files[0]}")
        if dtype != first_dtype:
            raise InputError(f"{f}: pixel type {dtype} differs from {first_dtype} of {files[0]}")
        if this_layout != layout:
            raise InputError(f"{f}: channel/sample layout differs from that of {files[0]}")
    # Slices carry no z spacing; y, x come from the first file's resolution tags.
    return TiffSource("slices", tuple(files), (len(files), *first_yx), first_dtype,
                      (None, voxel[1], voxel[2]), channel, layout)


class SlabReader:
    """Reads slabs of whole slices from a :class:`TiffSource`, safely from many threads.

    Each thread gets its own open file handle (a tifffile handle is not safe to share:
    seeks and lazy IFD loading race). Pickles as its source only, so it can travel to
    worker processes, which reopen the files themselves. Close it when done.
    """

    def __init__(self, source: TiffSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._handles: dict[int, tifffile.TiffFile] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"])  # type: ignore[misc]

    def __enter__(self) -> SlabReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            h.close()

    def _handle(self) -> tifffile.TiffFile:
        key = threading.get_ident()
        with self._lock:
            tif = self._handles.get(key)
        if tif is None:
            tif = tifffile.TiffFile(self.source.files[0])
            with self._lock:
                self._handles[key] = tif
        return tif

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices [z0, z1) as an array (z, y, x) of the source dtype."""
        src = self.source
        if not 0 <= z0 < z1 <= src.shape[0]:
            raise ValueError(f"slab [{z0}, {z1}) is not inside 0..{src.shape[0]}")
        if src.kind == "slices":
            out = np.empty((z1 - z0, *src.shape[1:]), dtype=src.dtype)
            for z in range(z0, z1):
                try:
                    with tifffile.TiffFile(src.files[z]) as tif:
                        page = tif.pages[src._layout.page_of_z[0]]
                        out[z - z0] = self._select_sample(page.asarray())
                except Exception as e:  # any decode failure: re-raise naming the file
                    raise InputError(f"{src.files[z]}: cannot read slice {z}: {e!r}") from e
            return out
        pages = src._layout.page_of_z[z0:z1]
        try:
            tif = self._handle()
            if src._layout.single_ifd:
                data = self._read_single_ifd(tif, pages)
            else:
                data = tif.series[0].asarray(key=list(pages))
                first: Any = tif.series[0].pages[0]
                data = data.reshape((len(pages), *first.shape))
            return self._select_sample(data, stacked=True)
        except Exception as e:  # any decode failure: re-raise naming the file and pages
            raise InputError(f"{src.files[0]}: cannot read slices {z0}..{z1 - 1} "
                             f"(pages {pages[0]}..{pages[-1]}): {e!r}") from e

    def _read_single_ifd(self, tif: tifffile.TiffFile, pages: Sequence[int]) -> np.ndarray:
        # ImageJ files > 4 GB have one IFD, so series.asarray(key=...) cannot index pages;
        # tifffile's Zarr view computes each frame's offset from the contiguous layout.
        import zarr

        series = tif.series[0]
        lead = tuple(n for a, n in zip(series.axes, series.shape, strict=True) if a not in "YXS")
        store = tif.aszarr(series=0)
        try:
            arr = zarr.open_array(store, mode="r")
            if len(lead) == 1 and list(pages) == list(range(pages[0], pages[-1] + 1)):
                return np.asarray(arr[pages[0]: pages[-1] + 1])
            return np.stack([np.asarray(arr[tuple(int(i) for i in np.unravel_index(p, lead))])
                             for p in pages])
        finally:
            store.close()

    def _select_sample(self, data: np.ndarray, stacked: bool = False) -> np.ndarray:
        layout = self.source._layout
        if layout.sample_axis is None or layout.sample is None:
            return data
        return np.take(data, layout.sample, axis=layout.sample_axis + (1 if stacked else 0))

    def iter_slabs(self, slab_z: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (z0, slab) for consecutive slabs of ``slab_z`` slices (serial reading)."""
        for z0 in range(0, self.source.shape[0], slab_z):
            yield z0, self.read(z0, min(z0 + slab_z, self.source.shape[0]))
