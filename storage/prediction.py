"""Prediction stores: membrane probabilities (uint8, 0..255) written block by block, resumably.

A prediction is an OME-Zarr volume (:mod:`storage.volume`, ``kind="prediction"``) with
the input's shape and voxel size, plus a :class:`storage.ledger.Ledger` named
``blocks_done`` with one flag per write block::

    predictions/<name>.zarr/
        zarr.json     attributes["emseg"] = {"complete": ..., "kind": "prediction",
                                             "inference": {model checksum, parameters, ...}}
        s0/           probabilities, axes (z, y, x), sharded so one write block = one shard
        s1/ ...       optional pyramid (filled at the end)
        blocks_done/  ledger: 1 per finished block, written after the block's data

The ``inference`` attributes identify the run (model checksum and every parameter that
changes the bytes). Re-opening an incomplete store with the same identity resumes it;
with another identity it is refused (:class:`PredictionMismatchError`), so a resumed
prediction never mixes two models or two parameter sets. A complete store is never
replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage import locks
from storage.blockio import BlockArray
from storage.errors import StorageError, StoreExistsError, StoreNotFoundError, writing
from storage.ledger import Ledger
from storage.resumable import check_resumable, normalised
from storage.volume import (
    LEVEL0,
    Volume,
    VolumeWriter,
    VoxelSize,
    build_pyramid,
    create_volume,
    open_volume_for_update,
    store_exists,
)

LEDGER_NAME = "blocks_done"
# Pyramid levels 1..n that the block writers fill themselves (the rest are built by finish()).
BLOCKWISE_LEVELS_KEY = "blockwise_pyramid_levels"
IDENTITY_KEY = "inference"


class PredictionMismatchError(StorageError, ValueError):
    """An unfinished prediction exists but was started with another model or other parameters."""


@dataclass
class PredictionStore:
    """An open, not yet complete prediction: level 0 writable, plus its block ledger."""

    writer: VolumeWriter
    ledger: Ledger
    _blocks: dict[str, BlockArray] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> str:
        return self.writer.path

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.writer.attrs.get(IDENTITY_KEY, {}))

    def write_block(self, block: int, start: Sequence[int], data: np.ndarray,
                    pyramid: Sequence[np.ndarray] = ()) -> None:
        """Write one block's probabilities (z, y, x uint8) at ``start``, and its downsampled
        ``pyramid`` levels 1, 2, ... (each at ``start`` >> level in y, x), then mark it done.

        The flag is written after the data: a writer killed in between leaves the block
        pending, and a re-run rewrites the whole block (the same bytes).
        """
        for d in (data, *pyramid):
            if d.dtype != np.uint8:
                raise ValueError(f"prediction data must be uint8, got {d.dtype}")
            if d.ndim != 3:
                raise ValueError(f"data must be 3-D (z, y, x), got shape {d.shape}")
        if len(pyramid) >= len(self.writer.levels):
            raise ValueError(f"{len(pyramid)} pyramid levels given, the store has "
                             f"{len(self.writer.levels) - 1}")
        z0, y0, x0 = (int(s) for s in start)
        for level, d in enumerate((data, *pyramid)):
            self._block_array(self.writer.levels[level]).write((z0, y0 >> level, x0 >> level), d)
        self.ledger.mark_done(block)

    def _block_array(self, name: str = LEVEL0) -> BlockArray:
        # Whole shards at a time from several writer threads: storage.blockio's fast path.
        with self._lock:
            if name not in self._blocks:
                self._blocks[name] = BlockArray(self.path, name, writable=True)
            return self._blocks[name]

    def level_chunks(self) -> list[tuple[int, ...]]:
        """The chunk (or shard) shape of each level, (z, y, x): what concurrent writers must align to."""
        from storage.volume import group_array

        out = []
        for name in self.writer.levels:
            arr = group_array(self.writer.group, name)
            out.append(tuple(int(c) for c in (arr.shards or arr.chunks)))
        return out

    def pending(self) -> list[int]:
        return self.ledger.pending()

    def finish(self) -> Volume:
        """Build the pyramid (if the store has one) and mark the store complete. Call once, last."""
        pending = self.ledger.pending()
        if pending:
            raise StorageError(f"{self.path}: {len(pending)} blocks are not done yet (first: {pending[:5]}); "
                               "refusing to mark the prediction complete")
        written = int(self.writer.attrs.get(BLOCKWISE_LEVELS_KEY, 0))  # levels the blocks wrote
        if len(self.writer.levels) > 1 + written:
            build_pyramid(self.writer, method="mean", first=written + 1)
        volume = self.writer.mark_complete()
        release_prediction_lock(self.path)
        return volume


# Paths whose lock this process took in create_or_resume_prediction and still holds.
_HOLDS: set[str] = set()
_HOLDS_GUARD = threading.Lock()


def hold_prediction_lock(path: str | os.PathLike[str]) -> None:
    """Take ``path``'s write lock for this process's run on it, failing at once if another
    process holds it (a no-op when this process holds it already for a run)."""
    key = os.path.abspath(os.fspath(path))
    with _HOLDS_GUARD:
        if key in _HOLDS:
            return
    locks.acquire(path, timeout_s=0, what="predicted")
    with _HOLDS_GUARD:
        _HOLDS.add(key)


def release_prediction_lock(path: str | os.PathLike[str]) -> None:
    """Give back the hold :func:`hold_prediction_lock` took (no-op if none)."""
    key = os.path.abspath(os.fspath(path))
    with _HOLDS_GUARD:
        if key not in _HOLDS:
            return
        _HOLDS.discard(key)
    locks.release(path)


def create_or_resume_prediction(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int],
    voxel_size: VoxelSize | Sequence[float],
    chunks: Sequence[int],
    shards: Sequence[int],
    n_blocks: int,
    identity: dict[str, Any],
    pyramid_levels: int = 0,
    overwrite: bool = False,
) -> PredictionStore:
    """Create a prediction store, or resume an unfinished one with the same identity.

    shape, chunks and shards are (z, y, x) voxels; shards should equal the write block.
    Raises StoreExistsError for a complete store (unless ``overwrite``),
    PredictionMismatchError for an unfinished one of another identity (unless ``overwrite``).

    The output's lock (``<path>.lock``, :mod:`storage.locks`) is taken first and held by this
    process until :meth:`PredictionStore.finish` (or :func:`release_prediction_lock`, or the
    process's exit): a second run on the same output fails at once with
    :class:`~storage.locks.StoreLockedError` naming the lock and its holder, instead of
    writing the same blocks again. A caller that must wait (the nightly flow) takes the lock
    itself first with :func:`storage.locks.store_lock`; holds are re-entrant per process.
    """
    p = os.fspath(path)
    ident = normalised(identity)
    hold_prediction_lock(p)
    try:
        with writing(p):
            return _create_or_resume(p, shape, voxel_size, chunks, shards, n_blocks, ident, pyramid_levels,
                                     overwrite)
    except BaseException:
        release_prediction_lock(p)
        raise


def _create_or_resume(p: str, shape: Sequence[int], voxel_size: VoxelSize | Sequence[float],
                      chunks: Sequence[int], shards: Sequence[int], n_blocks: int, ident: dict[str, Any],
                      pyramid_levels: int, overwrite: bool) -> PredictionStore:
    if store_exists(p) and not overwrite:
        check_resumable(p, kind="prediction", noun="prediction", identity_key=IDENTITY_KEY, identity=ident,
                        shape=shape, mismatch=PredictionMismatchError,
                        started_with="with another model or other parameters")
        writer = open_volume_for_update(p)
        ledger = (Ledger.open(writer.group, LEDGER_NAME) if LEDGER_NAME in writer.group
                  else Ledger.create(writer.group, n_blocks, LEDGER_NAME))
        if ledger.n_units != n_blocks:
            raise PredictionMismatchError(f"{p} has a ledger of {ledger.n_units} blocks, expected {n_blocks}")
        return PredictionStore(writer, ledger)

    writer = create_volume(p, shape, np.uint8, voxel_size, kind="prediction", chunks=chunks, shards=shards,
                           pyramid_levels=pyramid_levels, attrs={IDENTITY_KEY: ident}, overwrite=True)
    return PredictionStore(writer, Ledger.create(writer.group, n_blocks, LEDGER_NAME))


def open_prediction_for_blocks(path: str | os.PathLike[str]) -> PredictionStore:
    """Re-open an unfinished prediction created by a coordinator, for a worker to write blocks."""
    writer = open_volume_for_update(path)
    if writer.attrs.get("kind") != "prediction" or LEDGER_NAME not in writer.group:
        raise StoreNotFoundError(f"{writer.path} is not a prediction store with a block ledger")
    if writer.is_complete:
        raise StoreExistsError(f"{writer.path} is already complete; nothing to write")
    return PredictionStore(writer, Ledger.open(writer.group, LEDGER_NAME))
