"""Creating a volume: an empty, not-yet-complete OME-Zarr store, atomically on local disks.

The group, its arrays, the OME metadata and the writer's identity attributes are built
under ``.<name>.creating-<host>-<pid>-<rand>`` and renamed into place, so a kill at any
moment leaves either nothing (a hidden leftover, removed by the next creation) or a store
that says what it is and who made it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from storage.errors import StoreExistsError, writing
from storage.ome import VoxelSize, write_ome_metadata
from storage.volume_handle import VolumeWriter, dense_writes
from storage.zarr_store import LEVEL0, _is_local, _path_str, remove_store, store_exists

Kind = Literal["image", "label", "prediction"]
Compression = Literal["zstd", "blosc", "none"]
# Chunks of one slice suit the slice-wise 2D model: a write block is one or more whole
# slices, and reading one slice touches only its own chunks.
DEFAULT_CHUNK_YX = 1024


def default_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    """One slice per chunk, at most 1024 x 1024 pixels in y, x."""
    _, y, x = shape
    return (1, max(1, min(y, DEFAULT_CHUNK_YX)), max(1, min(x, DEFAULT_CHUNK_YX)))


def _codecs(compression: Compression) -> Any:
    if compression == "zstd":
        return ZstdCodec(level=1)
    if compression == "blosc":
        return BloscCodec(cname="lz4", clevel=5)
    if compression == "none":
        return None
    raise ValueError(f"compression must be one of zstd, blosc, none; got {compression!r}")


def create_volume(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    voxel_size: VoxelSize | Sequence[float],
    *,
    kind: Kind = "image",
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    compression: Compression = "zstd",
    pyramid_levels: int = 0,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    name: str | None = None,
) -> VolumeWriter:
    """Create an empty, not-yet-complete OME-Zarr volume and return a writer for it.

    shape, chunks and shards are (z, y, x) in voxels; voxel_size is (z, y, x) in nm.
    ``pyramid_levels`` extra levels (s1, s2, ...) are created empty and filled by
    :func:`build_pyramid`. Raises :class:`StoreExistsError` if anything exists at
    ``path`` and ``overwrite`` is False.
    """
    p = _path_str(path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive sizes (z, y, x), got {shape}")
    if pyramid_levels < 0:
        raise ValueError(f"pyramid_levels must be >= 0, got {pyramid_levels}")
    vs = VoxelSize.of(voxel_size)
    chunks = tuple(int(c) for c in (chunks or default_chunks(shape)))
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    if shards is not None:
        shards = tuple(int(s) for s in shards)
        if any(s % c for s, c in zip(shards, chunks, strict=True)):
            raise ValueError(f"shards {shards} must be a multiple of chunks {chunks}")
    if store_exists(p) and not overwrite:
        raise StoreExistsError(f"{p} already exists; pass "
                               "--overwrite (overwrite=True from Python) to replace it")

    meta = {"complete": False, "kind": kind, "dtype": str(np.dtype(dtype))}
    meta.update(attrs or {})
    n_levels = 1 + pyramid_levels
    label = name or os.path.basename(p.rstrip("/"))

    def build(at: str) -> zarr.Group:
        # Identity and "incomplete" go into the group's first zarr.json: a store never exists
        # without them, whatever moment a kill comes at.
        group = zarr.create_group(at, overwrite=True, zarr_format=3, attributes={"emseg": meta})
        for level in range(n_levels):
            lshape = (shape[0], max(1, shape[1] >> level), max(1, shape[2] >> level))
            lchunks = tuple(min(c, s) for c, s in zip(chunks, lshape, strict=True))
            group.create_array(
                f"s{level}",
                shape=lshape,
                dtype=dtype,
                chunks=lchunks,
                shards=shards if level == 0 else level_shards(shards, lchunks, level),
                compressors=_codecs(compression),
                fill_value=0,
                dimension_names=("z", "y", "x"),
            )
        write_ome_metadata(group, vs, n_levels, label)
        return group

    with writing(p):
        if _is_local(p):
            # Built complete with metadata under a temporary name, then renamed into place: the
            # store appears at once, identified, or not at all.
            tmp = _temporary_name(p)
            try:
                build(tmp)
            except BaseException:
                remove_store(tmp)
                raise
            _publish(tmp, p)
            group = zarr.open_group(p, mode="r+", zarr_format=3)
        else:  # object stores cannot rename; identity is written first (above)
            group = build(p)
    return VolumeWriter(p, group, dense_writes(group[LEVEL0]))  # type: ignore[arg-type]


def level_shards(shards: Sequence[int] | None, chunks: Sequence[int], level: int) -> tuple[int, ...] | None:
    """The shard shape (z, y, x) of pyramid level ``level``: level 0's shards halved ``level`` times in
    y and x, so a level-0 shard and its downsampled levels cover the same region (one writer owns
    both, as blockwise inference needs), and a level holds a sixteenth of the files of unsharded
    chunks at level 1 (network file systems suffer from many small files). None (unsharded) where
    that is not a whole number of ``chunks`` (this level's), or is only one chunk."""
    if shards is None:
        return None
    out = []
    for axis, (shard, chunk) in enumerate(zip(shards, chunks, strict=True)):
        factor = 1 if axis == 0 else 1 << level
        if shard % factor or (shard // factor) % chunk:
            return None
        out.append(shard // factor)
    if out[1:] == list(chunks[1:]):
        return None
    return tuple(out)


_TMP_MARK = ".creating-"
_OLD_MARK = ".replaced-"


def _temporary_name(final: str) -> str:
    """``<dir>/.<name>.creating-<host>-<pid>-<random>`` beside ``final``; an earlier killed
    creation's leftovers there (its process is gone) are removed first."""
    import socket
    import uuid

    local = final.removeprefix("file://").rstrip("/")
    directory, base = os.path.split(os.path.abspath(local))
    os.makedirs(directory, exist_ok=True)
    _remove_leftovers(directory, base)
    return os.path.join(directory, f".{base}{_TMP_MARK}{socket.gethostname()}-{os.getpid()}-"
                                   f"{uuid.uuid4().hex[:8]}")


def _remove_leftovers(directory: str, base: str) -> None:
    import shutil
    import socket

    host = socket.gethostname()
    for entry in os.listdir(directory):
        for mark in (_TMP_MARK, _OLD_MARK):
            prefix = f".{base}{mark}{host}-"
            if not entry.startswith(prefix):
                continue
            pid = entry[len(prefix):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: str, final: str) -> None:
    """Rename the store built at ``built`` to ``final``, moving an existing one aside first
    (rename, not delete, so ``final`` never holds a half-deleted store) and deleting it after."""
    import shutil

    local = os.path.abspath(final.removeprefix("file://").rstrip("/"))
    old = None
    try:
        if os.path.lexists(local):
            old = tmp.replace(_TMP_MARK, _OLD_MARK)
            os.rename(local, old)
        os.rename(tmp, local)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)
