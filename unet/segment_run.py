"""Blockwise, resumable segmentation of a probability volume larger than memory.

Three passes over the blocks of :func:`unet.segment_blocks.plan_segment_blocks`, each
recorded in the store (:mod:`storage.segmentation`) so a killed run resumes where it
stopped and writes the same bytes:

1. :func:`seed_blocks`: per block, seeds from the block and its halo (the distance
   transform needs the context), their components in the write region only, stored as
   block-unique ids with their voxel counts (ledger ``seeds_done``);
2. :func:`merge`: components touching across block faces are joined (union-find over the
   whole volume, :func:`unet.segment_blocks.merge_seeds`), small ones dropped, the rest
   numbered 1..n (one small table; recomputed whole if a run stopped inside it);
3. :func:`label_blocks`: per block, the watershed of the block and its halo from the
   numbered seeds, cropped to the write region and written (ledger ``labels_done``).

Blocks of passes 1 and 3 are independent: any process (a Dask worker too) can run any
group of them through a picklable :class:`SegmentJob`. Axes (z, y, x), sizes in voxels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fastremap
import numpy as np

from storage.errors import InputError
from storage.segmentation import (
    SegmentationStore,
    create_or_resume_segmentation,
    open_segmentation_for_blocks,
)
from storage.volume import Volume, open_volume
from storage.workspace import same_local_path
from unet.segment import grow, label_seeds, seed_mask
from unet.segment_blocks import CAP, SegPlan, face_pairs, face_planes, merge_seeds, plan_segment_blocks
from unet.segment_config import SegmentConfig

Progress = Callable[[int, int], None]
# Volumes whose values cannot be membrane probabilities, refused before anything is written.
_NOT_PROBABILITY_KINDS = ("label", "segmentation")


@dataclass(frozen=True)
class SegmentJob:
    """Everything a worker needs to run blocks: two paths and the config (small, picklable)."""

    probability: str
    segmentation: str
    config: SegmentConfig

    def plan(self, shape: Sequence[int]) -> SegPlan:
        return plan_segment_blocks(shape, self.config.block_shape, self.config.halo)


@dataclass(frozen=True)
class SegmentRun:
    """A prepared run: the job, its block count, what is still pending, the volume size."""

    job: SegmentJob
    n_blocks: int
    pending_seeds: list[int]
    pending_labels: list[int]
    merged: bool
    voxels: int


def open_probability(path: str) -> Volume:
    """The source volume, refused unless it holds uint8 membrane probabilities (0..255)."""
    vol = open_volume(path)
    kind = vol.attrs.get("kind")
    if kind in _NOT_PROBABILITY_KINDS:
        raise InputError(f"{path} is a {kind} volume, not a membrane probability map; segment a prediction "
                         "(predictions/<name>.zarr) or an ingested uint8 probability stack")
    if vol.dtype != np.uint8:
        raise InputError(f"{path} holds {vol.dtype}, not uint8 membrane probabilities 0..255 (predictions "
                         "store probability * 255; convert float maps in [0, 1] before segmenting)")
    return vol


def prepare(probability: str, segmentation: str, config: SegmentConfig, overwrite: bool = False
            ) -> SegmentRun:
    """Check the source, then create (or resume) the segmentation store; returns what is pending."""
    cfg = config
    if same_local_path(probability, segmentation):
        raise ValueError(f"the segmentation {segmentation} would overwrite its own source")
    src = open_probability(probability)
    job = SegmentJob(probability, segmentation, cfg)
    plan = job.plan(src.shape)
    identity = {"source": probability, "source_shape": list(src.shape), "config": cfg.identity()}
    store = create_or_resume_segmentation(
        segmentation, shape=src.shape, voxel_size=src.voxel_size, dtype=cfg.dtype, chunks=cfg.chunks,
        shards=cfg.block_shape, n_blocks=len(plan.blocks), identity=identity,
        pyramid_levels=cfg.levels_for(src.shape), overwrite=overwrite)
    return SegmentRun(job, len(plan.blocks), store.seeds_ledger.pending(), store.labels_ledger.pending(),
                      store.merged, int(np.prod(src.shape)))


def seed_blocks(job: SegmentJob, block_ids: Sequence[int], on_block: Callable[[int], None] | None = None
                ) -> int:
    """Pass 1 for ``block_ids`` (skipping finished ones); returns the number of blocks run."""
    cfg, src = job.config, open_volume(job.probability)
    store = open_segmentation_for_blocks(job.segmentation)
    plan, done = job.plan(src.shape), store.seeds_ledger.done_mask()
    ran = 0
    for i in block_ids:
        if done[i]:
            continue
        b = plan.blocks[i]
        mask = seed_mask(np.asarray(src.array[b.read_slices]), cfg.threshold, cfg.seed_distance)
        local, n = label_seeds(mask[b.write_in_read], cfg.link_slices)
        sizes = np.bincount(local.ravel(), minlength=n + 1)[1:]
        ids = np.where(local > 0, local.astype(np.uint64) + np.uint64(i) * CAP, np.uint64(0))
        store.write_seeds(i, [w[0] for w in b.write], ids, sizes)
        ran += 1
        if on_block is not None:
            on_block(i)
    return ran


def merge(job: SegmentJob) -> int:
    """Pass 2 (coordinator, once all seeds are stored): join, drop small, number. Returns the cell count."""
    store = open_segmentation_for_blocks(job.segmentation)
    if store.merged:
        return int(store.writer.attrs.get("n_cells", 0))
    pending = store.seeds_ledger.pending()
    if pending:
        raise RuntimeError(f"cannot merge {job.segmentation}: seeds of {len(pending)} blocks are missing")
    plan = job.plan(store.writer.shape)
    sizes = [store.read_sizes(b.index) for b in plan.blocks]
    axes = (0, 1, 2) if job.config.link_slices else (1, 2)
    found = [face_pairs(store.read_seeds(last), store.read_seeds(first))
             for last, first in (face_planes(a, b, axis) for a, b, axis in plan.faces(axes))]
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.uint64)
    keys, values, n_cells = merge_seeds(sizes, pairs, job.config.min_seed_size)
    if n_cells > np.iinfo(np.dtype(job.config.dtype)).max:
        raise ValueError(f"{n_cells} cells do not fit in {job.config.dtype}; use dtype uint64")
    store.write_lut(keys, values, n_cells)
    return n_cells


def _cells_of(seeds: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Seed ids (block-unique) → cell ids (uint64), through the merge's sorted table."""
    ids = fastremap.unique(seeds)
    ids = ids[ids != 0]
    if len(ids) == 0:
        return np.zeros(seeds.shape, np.uint64)
    at = np.searchsorted(keys, ids)
    if np.any(at >= len(keys)) or np.any(keys[np.minimum(at, len(keys) - 1)] != ids):
        raise RuntimeError("seed ids missing from the merge table (the store was modified mid-run?)")
    mapping = {int(k): int(v) for k, v in zip(ids, values[at], strict=True)}
    mapping[0] = 0
    return np.asarray(fastremap.remap(seeds.astype(np.uint64), mapping, preserve_missing_labels=False),
                      np.uint64)


def label_blocks(job: SegmentJob, block_ids: Sequence[int], on_block: Callable[[int], None] | None = None
                 ) -> int:
    """Pass 3 for ``block_ids`` (skipping finished ones); returns the number of blocks run."""
    src = open_volume(job.probability)
    store = open_segmentation_for_blocks(job.segmentation)
    if not store.merged:
        raise RuntimeError(f"{job.segmentation}: seeds are not merged yet; run merge() first")
    done = store.labels_ledger.done_mask()
    if all(done[i] for i in block_ids):  # nothing to do (the table may be gone: only finish() is left)
        return 0
    keys, values = store.read_lut()
    plan = job.plan(src.shape)
    dtype = np.dtype(job.config.dtype)
    ran = 0
    for i in block_ids:
        if done[i]:
            continue
        b = plan.blocks[i]
        cells = _cells_of(store.read_seeds(b.read_slices), keys, values)
        grown = grow(np.asarray(src.array[b.read_slices]), cells)[b.write_in_read]
        store.write_labels(i, [w[0] for w in b.write], grown.astype(dtype))
        ran += 1
        if on_block is not None:
            on_block(i)
    return ran


def finish(job: SegmentJob, **attrs: Any) -> Volume:
    """Mark the segmentation complete (pyramid, image-label metadata); call once, last."""
    store: SegmentationStore = open_segmentation_for_blocks(job.segmentation)
    return store.finish(source=job.probability, **attrs)


def segment_blockwise(probability: str, segmentation: str, config: SegmentConfig | None = None, *,
                      overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """All passes in this process: probability volume → complete segmentation store.

    ``progress(done, total)`` counts block passes (2 per block). Returns the path, the
    number of cells and of blocks.
    """
    run = prepare(probability, segmentation, config or SegmentConfig(), overwrite)
    total = 2 * run.n_blocks
    done = [total - len(run.pending_seeds) - len(run.pending_labels)]

    def tick(_: int) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    seed_blocks(run.job, run.pending_seeds, tick)
    n_cells = merge(run.job)
    label_blocks(run.job, run.pending_labels, tick)
    vol = finish(run.job)
    return {"segmentation": vol.path, "n_cells": n_cells, "blocks": run.n_blocks, "voxels": run.voxels}
