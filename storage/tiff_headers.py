"""Checking a TIFF from its headers only: how its pages map to z slices, codec, dtype, corruption.

Every problem is an :class:`storage.errors.InputError` naming the file (and page). No
pixel data is read here (the slab reader is :class:`storage.tiff.SlabReader`).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile

from storage.errors import InputError
from storage.tiff_meta import VoxelNm, voxel_size_nm

SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
_OPEN_ERRORS = (OSError, tifffile.TiffFileError, struct.error, ValueError, KeyError, IndexError)


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
class StackLayout:
    """How a stack file's series maps to z slices: page index per z, and which sample of a
    multi-sample (RGB) page to keep."""

    page_of_z: tuple[int, ...]
    sample_axis: int | None  # axis of samples in one page's array (0 planar, 2 contiguous)
    sample: int | None
    single_ifd: bool  # ImageJ > 4 GB: one IFD for all frames, read via aszarr


Shape3 = tuple[int, int, int]


def _stack_layout(path: str, tif: tifffile.TiffFile, channel: int | None) -> tuple[StackLayout, Shape3]:
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
    return StackLayout(order, sample_axis, sample, single_ifd), (len(order), int(y), int(x))


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


def inspect_stack(path: str, channel: int | None) -> tuple[StackLayout, Shape3, np.dtype[Any], VoxelNm]:
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


def slice_signature(path: str, channel: int | None) -> tuple[tuple[int, int], np.dtype[Any], Any, VoxelNm]:
    """(shape (y, x), dtype, layout, voxel size) of one single-slice file, from its header."""
    layout, shape, dtype, voxel = inspect_stack(path, channel)
    if shape[0] != 1:
        raise InputError(f"{path}: holds {shape[0]} slices; files of a folder/glob/list must hold "
                         "one slice each (pass a multi-page file on its own)")
    return (shape[1], shape[2]), dtype, layout, voxel
