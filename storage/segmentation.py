"""Segmentation stores: cell labels (uint32/uint64) written block by block, resumably.

A segmentation is an OME-Zarr 0.5 **image-label** (:mod:`storage.volume`,
``kind="segmentation"``): a multiscale image whose ``ome`` attributes also hold
``image-label``, so napari and ome-zarr-py open it as labels. Axes (z, y, x), voxel size
in nm, the source's geometry. While it is written it also holds the blockwise work::

    segmentations/<name>.zarr/
        zarr.json       attributes["ome"] = {multiscales, "image-label" (added when complete)}
                        attributes["emseg"] = {"complete", "kind": "segmentation",
                                               "segment": {source, config}, "n_cells", ...}
        s0/             cell ids, sharded so one write block = one shard
        s1/ ...         optional pyramid (nearest), filled at the end
        seeds_done/     ledger: seeds of block i labelled and stored
        labels_done/    ledger: cells of block i written to s0
        work/seeds      seed ids (uint64, block * 2**32 + local id), same layout as s0
        work/sizes/<i>  voxel count per local seed id of block i
        work/lut_keys, work/lut_values   seed id -> cell id, after the merge

``work/`` is deleted when the store is marked complete. The ``segment`` attributes
identify the run (source and every parameter that changes the bytes): an unfinished
store resumes only with the same identity (else :class:`SegmentationMismatchError`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr

from storage.errors import StorageError, StoreExistsError, StoreNotFoundError
from storage.ledger import Ledger
from storage.ome import write_image_label
from storage.resumable import check_resumable, normalised
from storage.volume import (
    Volume,
    VolumeWriter,
    VoxelSize,
    build_pyramid,
    create_volume,
    group_array,
    open_volume,
    open_volume_for_update,
    store_exists,
)

KIND = "segmentation"
IDENTITY_KEY = "segment"
SEEDS_LEDGER, LABELS_LEDGER, WORK = "seeds_done", "labels_done", "work"


class SegmentationMismatchError(StorageError, ValueError):
    """An unfinished segmentation exists but was started from another source or other parameters."""


@dataclass
class SegmentationStore:
    """An open, not yet complete segmentation: level 0 and the work arrays writable, two ledgers."""

    writer: VolumeWriter
    seeds_ledger: Ledger
    labels_ledger: Ledger

    @property
    def path(self) -> str:
        return self.writer.path

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.writer.attrs.get(IDENTITY_KEY, {}))

    def _work(self) -> zarr.Group:
        return cast(zarr.Group, self.writer.group[WORK])

    # --- pass 1: seeds -------------------------------------------------------------------

    def write_seeds(self, block: int, start: Sequence[int], seeds: np.ndarray, sizes: np.ndarray) -> None:
        """Store one block's seed ids (z, y, x uint64) at ``start`` and its per-id voxel counts,
        then mark the block's seeds done (data first, so a kill leaves it pending)."""
        if seeds.dtype != np.uint64:
            raise ValueError(f"seed ids must be uint64, got {seeds.dtype}")
        arr = group_array(self._work(), "seeds")
        stop = tuple(int(s) + n for s, n in zip(start, seeds.shape, strict=True))
        if any(e > n for e, n in zip(stop, arr.shape, strict=True)):
            raise ValueError(f"seeds at {tuple(start)} of shape {seeds.shape} do not fit in {arr.shape}")
        arr[tuple(slice(int(a), b) for a, b in zip(start, stop, strict=True))] = seeds
        sizes_group = cast(zarr.Group, self._work()["sizes"])
        n = max(len(sizes), 1)  # zarr arrays need a non-empty chunk; an empty block stores [0] + count 0
        out = sizes_group.create_array(str(block), shape=(n,), chunks=(n,), dtype="uint64",
                                       fill_value=0, overwrite=True)
        out[:] = np.asarray(sizes, np.uint64) if len(sizes) else np.zeros(1, np.uint64)
        out.attrs["count"] = int(len(sizes))
        self.seeds_ledger.mark_done(block)

    def read_seeds(self, region: Sequence[slice]) -> np.ndarray:
        return np.asarray(group_array(self._work(), "seeds")[tuple(region)])

    def read_sizes(self, block: int) -> np.ndarray:
        arr = group_array(cast(zarr.Group, self._work()["sizes"]), str(block))
        return np.asarray(arr[:], np.uint64)[: int(cast(int, arr.attrs["count"]))]

    # --- merge ---------------------------------------------------------------------------

    def write_lut(self, keys: np.ndarray, values: np.ndarray, n_cells: int) -> None:
        """Store the seed id -> cell id table, then record that the merge is done (coordinator only)."""
        for name, data in (("lut_keys", keys), ("lut_values", values)):
            n = max(len(data), 1)
            arr = self._work().create_array(name, shape=(n,), chunks=(min(n, 1 << 20),), dtype="uint64",
                                            fill_value=0, overwrite=True)
            arr[:] = np.asarray(data, np.uint64) if len(data) else np.zeros(1, np.uint64)
        self.writer.update_attrs(merged=True, n_cells=int(n_cells), n_seeds=int(len(keys)))

    @property
    def merged(self) -> bool:
        return bool(self.writer.attrs.get("merged", False))

    def read_lut(self) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.writer.attrs.get("n_seeds", 0))
        keys = np.asarray(group_array(self._work(), "lut_keys")[:], np.uint64)[:n]
        values = np.asarray(group_array(self._work(), "lut_values")[:], np.uint64)[:n]
        return keys, values

    # --- pass 2: cells -------------------------------------------------------------------

    def write_labels(self, block: int, start: Sequence[int], labels: np.ndarray) -> None:
        """Write one block's cell ids (z, y, x) at ``start``, then mark it done."""
        if labels.dtype != self.writer.dtype:
            raise ValueError(f"labels must be {self.writer.dtype}, got {labels.dtype}")
        z0, y0, x0 = (int(s) for s in start)
        self.writer.write(z0, labels, y0, x0)
        self.labels_ledger.mark_done(block)

    def finish(self, source: str | None = None, **attrs: Any) -> Volume:
        """Drop the work arrays, build the pyramid, add the image-label metadata, mark complete."""
        for ledger, what in ((self.seeds_ledger, "seeds"), (self.labels_ledger, "labels")):
            pending = ledger.pending()
            if pending:
                raise StorageError(f"{self.path}: {len(pending)} blocks have no {what} yet (first: "
                                   f"{pending[:5]}); refusing to mark the segmentation complete")
        # The work arrays go last, just before the completion mark: a run killed while the
        # pyramid is built still has them, and one killed after they went resumes to finish
        # (only the ledgers are needed for that).
        if len(self.writer.levels) > 1:
            build_pyramid(self.writer, method="nearest")
        write_image_label(self.writer.group, self.path, source)
        if attrs:
            self.writer.update_attrs(**attrs)
        del self.writer.group[WORK]  # by prefix: also what a kill mid-deletion left
        return self.writer.mark_complete()

    @property
    def only_finish_left(self) -> bool:
        """Every block's seeds and cells are written (the work arrays may be gone already)."""
        return self.seeds_ledger.all_done() and self.labels_ledger.all_done()


def create_or_resume_segmentation(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int],
    voxel_size: VoxelSize | Sequence[float],
    dtype: str,
    chunks: Sequence[int],
    shards: Sequence[int],
    n_blocks: int,
    identity: dict[str, Any],
    pyramid_levels: int = 0,
    overwrite: bool = False,
) -> SegmentationStore:
    """Create a segmentation store, or resume an unfinished one with the same identity.

    shape, chunks and shards are (z, y, x) voxels; shards should equal the write block.
    Raises StoreExistsError for a complete store or a store of another kind (unless
    ``overwrite``), SegmentationMismatchError for an unfinished one of another identity.
    """
    p = os.fspath(path)
    ident = normalised(identity)
    if np.dtype(dtype) not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise ValueError(f"label dtype must be uint32 or uint64, got {dtype}")
    if store_exists(p) and not overwrite:
        check_resumable(p, kind=KIND, noun="segmentation", identity_key=IDENTITY_KEY, identity=ident,
                        shape=shape, mismatch=SegmentationMismatchError,
                        started_with="from another source or with other parameters")
        writer = open_volume_for_update(p)
        store = SegmentationStore(writer, Ledger.open(writer.group, SEEDS_LEDGER),
                                  Ledger.open(writer.group, LABELS_LEDGER))
        if store.seeds_ledger.n_units != n_blocks:
            raise SegmentationMismatchError(f"{p} has a ledger of {store.seeds_ledger.n_units} blocks, "
                                            f"expected {n_blocks}")
        if WORK not in writer.group and not store.only_finish_left:
            raise StorageError(f"{p} is an unfinished segmentation without its work arrays; pass "
                               "--overwrite (overwrite=True from Python) to start again")
        return store

    kind: Any = KIND  # storage.volume types the kinds it names itself; a segmentation is a new one
    writer = create_volume(p, shape, dtype, voxel_size, kind=kind, chunks=chunks, shards=shards,
                           pyramid_levels=pyramid_levels, attrs={IDENTITY_KEY: ident}, overwrite=True)
    work = writer.group.create_group(WORK)
    level0 = writer.array
    work.create_array("seeds", shape=level0.shape, dtype="uint64", chunks=level0.chunks, shards=level0.shards,
                      fill_value=0, dimension_names=("z", "y", "x"))
    work.create_group("sizes")
    return SegmentationStore(writer, Ledger.create(writer.group, n_blocks, SEEDS_LEDGER),
                             Ledger.create(writer.group, n_blocks, LABELS_LEDGER))


def open_segmentation_for_blocks(path: str | os.PathLike[str]) -> SegmentationStore:
    """Re-open an unfinished segmentation created by a coordinator, for a worker to write blocks."""
    writer = open_volume_for_update(path)
    if writer.attrs.get("kind") != KIND or SEEDS_LEDGER not in writer.group:
        raise StoreNotFoundError(f"{writer.path} is not an unfinished segmentation store")
    if writer.is_complete:
        raise StoreExistsError(f"{writer.path} is already complete; nothing to write")
    store = SegmentationStore(writer, Ledger.open(writer.group, SEEDS_LEDGER),
                              Ledger.open(writer.group, LABELS_LEDGER))
    if WORK not in writer.group and not store.only_finish_left:
        raise StoreNotFoundError(f"{writer.path} is an unfinished segmentation without its work arrays")
    return store


def open_segmentation(path: str | os.PathLike[str]) -> Volume:
    """Open a complete segmentation for reading; refuses other kinds of volume."""
    vol = open_volume(path)
    if vol.attrs.get("kind") != KIND:
        raise StoreNotFoundError(f"{vol.path} is a {vol.attrs.get('kind')!r} volume, not a segmentation")
    return vol
