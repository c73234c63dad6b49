"""TIFF sources of EM stacks: open, validate from headers only, read in slabs of slices.

A *source* is one of

* a multi-page TIFF, BigTIFF, OME-TIFF or ImageJ hyperstack (one file, one page per slice);
* a folder, a glob pattern, or a list of single-slice TIFFs (natural sort: 2.tif before 10.tif).

:func:`open_source` checks every header before any pixel is read (truncated files, corrupt
IFDs, missing codecs, RGB or multichannel pages without a chosen ``channel``, slices of
different shapes or dtypes, empty folders, files that are not TIFFs) and raises
:class:`storage.errors.InputError` naming the file (and page) and the problem. Pixels are
then read slab by slab with :meth:`SlabReader.read`; a decode failure is re-raised naming
the file and the pages.

Geometry is always (z, y, x) in voxels; voxel sizes are (z, y, x) in nanometres, ``None``
where the file does not say. Inputs are only ever opened read-only (``tifffile.memmap``
defaults to a writable ``r+`` mapping and is never used here).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import struct
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import tifffile

from storage.errors import InputError

SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
TIFF_SUFFIXES = (".tif", ".tiff")
# Length units found in OME (PhysicalSize*Unit) and ImageJ ("unit") metadata, in nm. Fiji
# writes micron as "micron" or as a literal backslash-u escape, which tifffile returns as is.
_TO_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3,
          "\\u00B5m": 1e3, "micrometer": 1e3, "mm": 1e6, "millimeter": 1e6, "Å": 0.1,
          "angstrom": 0.1, "cm": 1e7, "m": 1e9}
# TIFF ResolutionUnit: 2 inch, 3 centimetre (baseline); 4 mm and 5 µm are tifffile's own.
_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}
_OPEN_ERRORS = (OSError, tifffile.TiffFileError, struct.error, ValueError, KeyError, IndexError)

PathLike = str | os.PathLike[str]
VoxelNm = tuple[float | None, float | None, float | None]


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _tiffs_in(folder: str) -> list[str]:
    names = [n for n in os.listdir(folder)
             if n.lower().endswith(TIFF_SUFFIXES) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def resolve_files(sources: PathLike | Sequence[PathLike]) -> tuple[Literal["stack", "slices"], list[str]]:
    """Expand a source description into ("stack", [file]) or ("slices", [files in z order]).

    One existing file is a stack. A folder (its *.tif / *.tiff, not recursive), a glob
    pattern, or several paths are single-slice files in natural sort order; several
    paths are sorted too, because a shell expands ``slices/*.tif`` in plain lexical order.
    """
    items = [os.fspath(sources)] if isinstance(sources, str | os.PathLike) else [
        os.fspath(s) for s in sources]
    if not items:
        raise InputError("no input given: pass a TIFF file, a folder, a glob pattern or a list of files")
    files: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = _tiffs_in(item)
            if not found:
                raise InputError(f"{item}: folder contains no .tif/.tiff files")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        elif _is_glob(item):
            found = [f for f in glob.glob(item) if os.path.isfile(f)]
            if not found:
                raise InputError(f"{item}: glob pattern matches no files")
            files.extend(found)
        else:
            raise InputError(f"{item}: no such file or folder")
    if len(items) == 1 and os.path.isfile(items[0]):
        return "stack", [os.path.abspath(items[0])]
    ordered = tifffile.natural_sorted([os.path.abspath(f) for f in files])
    duplicates = {f for f in ordered if ordered.count(f) > 1} if len(set(ordered)) != len(ordered) else set()
    if duplicates:
        raise InputError(f"the same file is given twice: {sorted(duplicates)[0]}")
    return "slices", ordered


class _LogCollector(logging.Handler):
    """Collects tifffile's warnings: it only *logs* some corruption (bad page offsets,
    invalid ImageJ metadata) and silently returns fewer pages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_tifffile_warnings() -> Iterator[_LogCollector]:
    handler = _LogCollector()
    log = logging.getLogger("tifffile")
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def _ratio_nm(value: Any, factor: float) -> float | None:
    """Pixel size from a (num, den) pixels-per-unit rational tag, in nm."""
    try:
        num, den = value
        return float(den) / float(num) * factor if num and den else None
    except (TypeError, ValueError):
        return None


def voxel_size_nm(tif: tifffile.TiffFile) -> VoxelNm:
    """Voxel size (z, y, x) in nm from OME, ImageJ or resolution-tag metadata; None = unknown."""
    page = tif.pages.first
    try:
        if tif.is_ome and tif.ome_metadata:
            pixels = ET.fromstring(tif.ome_metadata).find(".//{*}Pixels")
            if pixels is not None:
                a = pixels.attrib
                out: list[float | None] = []
                for k in "ZYX":
                    size, unit = a.get(f"PhysicalSize{k}"), a.get(f"PhysicalSize{k}Unit", "µm")
                    out.append(float(size) * _TO_NM[unit] if size and unit in _TO_NM else None)
                return (out[0], out[1], out[2])
        if tif.is_imagej and tif.imagej_metadata:
            ij = tif.imagej_metadata
            f = _TO_NM.get(str(ij.get("unit", "")))
            if f is None:
                return (None, None, None)
            z = ij.get("spacing")
            return (float(z) * f if z else None,
                    _ratio_nm(page.tags.valueof("YResolution"), f),
                    _ratio_nm(page.tags.valueof("XResolution"), f))
        f2 = _RESUNIT_NM.get(int(page.resolutionunit))
        if f2 is None:
            return (None, None, None)
        return (None, _ratio_nm(page.tags.valueof("YResolution"), f2),
                _ratio_nm(page.tags.valueof("XResolution"), f2))
    except (ET.ParseError, ValueError, TypeError, KeyError):
        # Metadata that cannot be parsed is treated as absent: the voxel size can be given.
        return (None, None, None)


def _check_pages_within_file(path: str, tif: tifffile.TiffFile) -> None:
    size = tif.filehandle.size
    for i, page in enumerate(tif.pages):
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if not ends or max(ends) > size:
            raise InputError(f"{path}: page {i}: pixel data truncated (file ends at byte {size})")


def _check_codec(path: str, page: Any) -> None:
    if page.compression not in tifffile.TIFF.DECOMPRESSORS:
        raise InputError(f"{path}: compression {page.compression!r} cannot be decoded here "
                         "(is the 'imagecodecs' package installed?)")


def _check_dtype(path: str, dtype: np.dtype[Any]) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{path}: pixel type {dtype} is not supported "
                         f"(use one of {', '.join(str(d) for d in SUPPORTED_DTYPES)})")


@dataclass(frozen=True)
class _StackLayout:
    """How a stack file's series maps to z slices: page index per z, and which sample of a
    multi-sample (RGB) page to keep."""

    page_of_z: tuple[int, ...]
    sample_axis: int | None  # axis of samples in one page's array (0 planar, 2 contiguous)
    sample: int | None
    single_ifd: bool  # ImageJ > 4 GB: one IFD for all frames, read via aszarr


Shape3 = tuple[int, int, int]


def _stack_layout(path: str, tif: tifffile.TiffFile, channel: int | None) -> tuple[_StackLayout, Shape3]:
    series = tif.series[0]
    page: Any = series.pages[0] if len(series.pages) else tif.pages.first
    axes, shape = series.axes, series.shape
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"{path}: series has axes {axes} and shape {shape}, no Y and X image axes")
    y, x = shape[axes.index("Y")], shape[axes.index("X")]
    n_samples = shape[axes.index("S")] if "S" in axes else 1
    lead = [(a, n) for a, n in zip(axes, shape, strict=True) if a not in "YXS"]
    n_frames = math.prod(n for _, n in lead)
    channels = dict(lead).get("C", 1) if len([a for a, _ in lead if a == "C"]) == 1 else 1
    desc = f"axes {axes}, shape {shape}"
    sample_axis = sample = None
    page_idx = np.arange(n_frames).reshape([n for _, n in lead] or [1])
    if n_samples > 1:
        if channel is None:
            raise InputError(f"{path}: pages are RGB/multichannel ({n_samples} samples per pixel, {desc}); "
                             "choose one with channel=N (--channel N)")
        if channels > 1:
            raise InputError(f"{path}: both channel pages and samples per pixel ({desc}) are not supported")
        if not 0 <= channel < n_samples:
            raise InputError(f"{path}: channel {channel} out of range, pages have {n_samples} samples")
        sample_axis = page.axes.index("S")
        sample = channel
    elif channels > 1:
        if channel is None:
            raise InputError(f"{path}: image has {channels} channels ({desc}); "
                             "choose one with channel=N (--channel N)")
        if not 0 <= channel < channels:
            raise InputError(f"{path}: channel {channel} out of range, image has {channels} channels")
        c_dim = [a for a, _ in lead].index("C")
        page_idx = np.take(page_idx, channel, axis=c_dim)
    elif channel not in (None, 0):
        raise InputError(f"{path}: channel {channel} chosen but the image has a single channel ({desc})")
    if sum(1 for n in page_idx.shape if n > 1) > 1:
        raise InputError(f"{path}: more than one stack axis ({desc}); only z stacks (one axis "
                         "besides Y, X and the channel) are supported")
    if page.ndim - (1 if n_samples > 1 else 0) != 2 or getattr(page, "imagedepth", 1) > 1:
        raise InputError(f"{path}: pages of shape {page.shape} are not 2-D images")
    single_ifd = len(series.pages) < n_frames
    if single_ifd and not (tif.is_imagej and series.dataoffset is not None):
        raise InputError(f"{path}: series has {n_frames} frames but only {len(series.pages)} pages "
                         "were found (truncated or corrupt file?)")
    if single_ifd and int(series.dataoffset or 0) + series.nbytes > tif.filehandle.size:
        raise InputError(f"{path}: pixel data truncated (file ends at byte {tif.filehandle.size})")
    order = tuple(int(i) for i in page_idx.ravel())
    return _StackLayout(order, sample_axis, sample, single_ifd), (len(order), int(y), int(x))


@contextmanager
def _tiff(path: str) -> Iterator[tifffile.TiffFile]:
    """Open ``path`` read-only, turning every failure to parse it into an InputError."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError as e:
        raise InputError(f"{path}: not a TIFF file or corrupt header ({e})") from e
    except _OPEN_ERRORS as e:
        raise InputError(f"{path}: cannot open as TIFF ({e!r})") from e
    try:
        yield tif
    finally:
        tif.close()


def _inspect_stack(path: str, channel: int | None) -> tuple[_StackLayout, Shape3, np.dtype[Any], VoxelNm]:
    with _collect_tifffile_warnings() as log, _tiff(path) as tif:
        try:
            n_pages = len(tif.pages)
            series = tif.series[0] if tif.series else None
            if series is None or n_pages == 0:
                raise InputError(f"{path}: contains no images")
            layout, shape = _stack_layout(path, tif, channel)
            if not layout.single_ifd:
                _check_pages_within_file(path, tif)
            page = tif.pages.first
            _check_codec(path, page)
        except InputError:
            raise
        except _OPEN_ERRORS as e:
            raise InputError(f"{path}: corrupt TIFF structure ({e!r})") from e
        if log.messages:
            raise InputError(f"{path}: corrupt or truncated TIFF: {'; '.join(log.messages[:3])}")
        dtype = np.dtype(series.dtype)
        _check_dtype(path, dtype)
        return layout, shape, dtype, voxel_size_nm(tif)


def _slice_signature(path: str, channel: int | None) -> tuple[tuple[int, int], np.dtype[Any], Any, VoxelNm]:
    """(shape (y, x), dtype, layout, voxel size) of one single-slice file, from its header."""
    layout, shape, dtype, voxel = _inspect_stack(path, channel)
    if shape[0] != 1:
        raise InputError(f"{path}: holds {shape[0]} slices; files of a folder/glob/list must hold "
                         "one slice each (pass a multi-page file on its own)")
    return (shape[1], shape[2]), dtype, layout, voxel


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
    _layout: _StackLayout = field(repr=False)

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
        layout, shape, dtype, voxel = _inspect_stack(files[0], channel)
        return TiffSource("stack", (files[0],), shape, dtype, voxel, channel, layout)
    first_yx, first_dtype, layout, voxel = _slice_signature(files[0], channel)
    for f in files[1:]:
        yx, dtype, this_layout, _ = _slice_signature(f, channel)
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
