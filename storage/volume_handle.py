"""A volume opened for reading (:class:`Volume`) or writing (:class:`VolumeWriter`).

:func:`open_volume` refuses a missing store, a non-volume, an incomplete one, and a complete
one that lost level-0 chunk files (:func:`verify_stored`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr

from storage.errors import DamagedStoreError, IncompleteStoreError, StoreNotFoundError
from storage.ome import VoxelSize
from storage.zarr_store import (
    LEVEL0,
    STORED_OBJECTS_KEY,
    _expected_objects,
    _grid,
    _path_str,
    _stored_objects,
    group_array,
    group_attr,
)


@dataclass
class Volume:
    """A complete (or, with ``require_complete=False``, any) volume opened for reading.

    ``array`` is level 0, shape (z, y, x). ``voxel_size`` is in nm.
    """

    path: str
    group: zarr.Group
    array: zarr.Array

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)  # type: ignore[arg-type]

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(self.array.chunks)  # type: ignore[return-value]

    @property
    def write_block_shape(self) -> tuple[int, int, int]:
        """The unit a parallel writer must align to: the shard if sharded, else the chunk."""
        shards = self.array.shards
        return tuple(shards if shards is not None else self.array.chunks)  # type: ignore[return-value]

    @property
    def attrs(self) -> dict[str, Any]:
        return group_attr(self.group, "emseg")

    @property
    def is_complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def voxel_size(self) -> VoxelSize:
        ds = self._datasets()[0]
        return VoxelSize.of(ds["coordinateTransformations"][0]["scale"])

    def _datasets(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], group_attr(self.group, "ome")["multiscales"][0]["datasets"])

    @property
    def levels(self) -> list[str]:
        return [str(d["path"]) for d in self._datasets()]

    def level(self, index: int) -> zarr.Array:
        return group_array(self.group, self.levels[index])

    def read(self, z: slice, y: slice = slice(None), x: slice = slice(None)) -> np.ndarray:
        """Read a region of level 0 into memory, axes (z, y, x)."""
        return np.asarray(self.array[z, y, x])

    def summary(self) -> dict[str, Any]:
        """Small JSON-able description (for logs, artifacts and the CLI)."""
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "voxel_size_nm": list(self.voxel_size.as_tuple()),
            "chunks": list(self.chunks),
            "shards": list(self.array.shards) if self.array.shards else None,
            "levels": self.levels,
            "complete": self.is_complete,
            "kind": self.attrs.get("kind"),
        }


class VolumeWriter(Volume):
    """A volume being written. Level 0 is open read-write; nothing reads it as done yet."""

    def write(self, z0: int, data: np.ndarray, y0: int = 0, x0: int = 0) -> None:
        """Write ``data`` (z, y, x) at offset (z0, y0, x0), refusing a region that overruns.

        zarr silently crops an oversized value, so the shape is checked here.
        """
        if data.ndim != 3:
            raise ValueError(f"data must be 3-D (z, y, x), got shape {data.shape}")
        end = (z0 + data.shape[0], y0 + data.shape[1], x0 + data.shape[2])
        if any(e > s for e, s in zip(end, self.shape, strict=True)) or min(z0, y0, x0) < 0:
            raise ValueError(
                f"region at {(z0, y0, x0)} of shape {data.shape} does not fit in {self.shape}"
            )
        self.array[z0 : end[0], y0 : end[1], x0 : end[2]] = data

    def update_attrs(self, **values: Any) -> None:
        """Merge ``values`` into the ``emseg`` attributes (coordinator only: not concurrency-safe)."""
        attrs = self.attrs
        attrs.update(values)
        self.group.attrs["emseg"] = attrs

    def mark_complete(self) -> Volume:
        """Mark the store finished. Call last, after every write (and the pyramid).

        When every level-0 chunk (or shard) file was written, their number is recorded, so
        a reader can tell a file lost later from a region that was never written.
        """
        stored = _stored_objects(self.path)
        values: dict[str, Any] = {"complete": True}
        if stored is not None and len(stored) == _expected_objects(self.array):
            values[STORED_OBJECTS_KEY] = len(stored)
        self.update_attrs(**values)
        return Volume(self.path, self.group, self.array)


def open_volume(path: str | os.PathLike[str], *, require_complete: bool = True) -> Volume:
    """Open a volume for reading. Refuses a missing store, a non-volume, or an incomplete one."""
    p = _path_str(path)
    try:
        group = zarr.open_group(p, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreNotFoundError(f"no volume at {p}") from e
    if "ome" not in group.attrs or LEVEL0 not in group:
        raise StoreNotFoundError(f"{p} is a Zarr group but not an emseg/OME-Zarr volume")
    vol = Volume(p, group, group[LEVEL0])  # type: ignore[arg-type]
    if require_complete and not vol.is_complete:
        raise IncompleteStoreError(
            f"{p} is incomplete: its writer did not finish (killed, failed or still running); "
            "re-run the step that writes it"
        )
    if require_complete:
        verify_stored(vol)
    return vol


def verify_stored(volume: Volume) -> None:
    """Raise :class:`DamagedStoreError` when a complete volume lacks level-0 chunk files it was
    written with (zarr would read the gap as zeros, silently). Volumes whose writer did not
    record the count (remote stores, sparse writers) are not checked."""
    recorded = volume.attrs.get(STORED_OBJECTS_KEY)
    if not isinstance(recorded, int):
        return
    stored = _stored_objects(volume.path)
    if stored is None or len(stored) >= recorded:
        return
    missing = sorted({"/".join(map(str, i)) for i in np.ndindex(*_grid(volume.array))} - stored)
    unit = "shard" if volume.array.shards is not None else "chunk"
    raise DamagedStoreError(
        f"{volume.path} is damaged: {recorded - len(stored)} of its {recorded} level-0 {unit} files are "
        f"missing (first: {LEVEL0}/c/{missing[0] if missing else '?'}); that data would read as zeros. "
        "Restore the store or re-run the step that wrote it with --overwrite")


def open_volume_for_update(path: str | os.PathLike[str]) -> VolumeWriter:
    """Re-open an existing (typically incomplete) volume read-write, e.g. to resume writing."""
    p = _path_str(path)
    try:
        group = zarr.open_group(p, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreNotFoundError(f"no volume at {p}") from e
    if LEVEL0 not in group:
        raise StoreNotFoundError(f"{p} is a Zarr group but not an emseg/OME-Zarr volume")
    return VolumeWriter(p, group, dense_writes(group[LEVEL0]))  # type: ignore[arg-type]


def dense_writes(array: zarr.Array) -> zarr.Array:
    """The array with zarr's "skip chunks equal to the fill value" check switched off.

    EM images and probability maps are dense, so the check (a full comparison pass over
    every chunk written, about a fifth of an ingest's CPU time) almost never skips a chunk.
    ``zarr.open_array(..., config=...)`` ignores the setting for an existing array (zarr
    3.1.6); ``Array.with_config`` applies it.
    """
    return array.with_config({"write_empty_chunks": True})
