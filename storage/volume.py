"""OME-Zarr 0.5 (Zarr v3) volumes: creation, completion marker, reading, pyramid.

A volume is a Zarr v3 group laid out as an OME-NGFF 0.5 multiscale image::

    <name>.zarr/
        zarr.json        group; attributes["ome"] = NGFF metadata (axes z, y, x in nanometer)
                         attributes["emseg"] = {"complete": bool, "kind": ..., ...}
        s0/              level 0, full resolution, shape (z, y, x)
        s1/, s2/ ...     optional pyramid, 2x downsampled in y, x per level (z kept)

Axis order is always (z, y, x); voxel sizes are in nanometres.

Completion is marked last: a writer creates the group with ``complete: false``,
writes the data, then calls :meth:`VolumeWriter.mark_complete`. :func:`open_volume`
refuses a store that was never marked complete, so a killed writer never leaves a
store that looks finished. Existing stores are never replaced unless
``overwrite=True``.

Creation is atomic on local disks: the group, its arrays, the OME metadata and the
writer's identity attributes are built under ``.<name>.creating-<host>-<pid>-<rand>`` and
renamed into place, so a kill at any moment leaves either nothing (a hidden leftover,
removed by the next creation) or a store that says what it is and who made it. A
complete store records how many level-0 chunk (or shard) files it has; :func:`open_volume`
refuses one that lost any (zarr would read the gap as zeros).

This module is the volumes' public face; the parts: :mod:`storage.ome` (voxel size, NGFF
metadata), :mod:`storage.zarr_store` (the store, its chunk files), :mod:`storage.volume_handle`
(reading, writing, opening), :mod:`storage.volume_create` (atomic creation),
:mod:`storage.pyramid`.
"""

from __future__ import annotations

from storage.ome import VoxelSize, ome_datasets, write_ome_metadata
from storage.pyramid import build_pyramid
from storage.volume_create import DEFAULT_CHUNK_YX, Compression, Kind, create_volume, default_chunks
from storage.volume_handle import (
    Volume,
    VolumeWriter,
    dense_writes,
    open_volume,
    open_volume_for_update,
    verify_stored,
)
from storage.zarr_store import LEVEL0, STORED_OBJECTS_KEY, group_array, group_attr, remove_store, store_exists

__all__ = [
    "DEFAULT_CHUNK_YX", "LEVEL0", "STORED_OBJECTS_KEY", "Compression", "Kind", "Volume", "VolumeWriter",
    "VoxelSize", "build_pyramid", "create_volume", "default_chunks", "dense_writes", "group_array",
    "group_attr", "ome_datasets", "open_volume", "open_volume_for_update", "remove_store", "store_exists",
    "verify_stored", "write_ome_metadata",
]
