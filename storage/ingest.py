"""Stream a TIFF source into an OME-Zarr volume, slab by slab, in parallel, with bounded memory.

::

    TIFF pages  ──read slab [z0, z1)──▶ numpy (z, y, x) ──write──▶ s0[z0:z1, :, :]
                 (one Dask task per slab; at most `workers` slabs in memory at once)

A slab is a whole number of shards (or chunks when unsharded) in z and spans the whole
slice in y, x, so no two tasks ever write the same shard: Zarr does no locking, and a
partial-shard write is a read-modify-write. Each task reads its slab and writes it before
returning only its byte count, so the scheduler holds no pixel data between tasks and
peak memory is about ``workers`` slabs, whatever the stack size.

Order of events: validate headers (image and labels) -> create the store marked
incomplete -> write slabs -> pyramid -> mark complete. A failure at any point leaves a
store that :func:`storage.volume.open_volume` refuses as incomplete.

The volume's ``attrs["emseg"]`` records ``sources`` (path, size, mtime of every input file),
``source`` (layout, shape, dtype, channel), ``params`` (the settings that shape the output)
and where the voxel size came from, so a later run can tell whether an existing output was
made from the same inputs: it is then reused instead of refused.

Here: carrying out a plan. Beside it: :mod:`storage.ingest_plan` (what to do, from headers)
and :mod:`storage.ingest_labels` (the label checks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import zarr

from storage.errors import OutputWriteError, writing
from storage.ingest_config import IngestConfig
from storage.ingest_labels import LabelCheck, LabelsRefusedError
from storage.ingest_plan import UNKNOWN_VOXEL_NM, IngestPlan, Sources, plan_ingest, plan_pair
from storage.intensity import range_for
from storage.locks import store_lock
from storage.ome import write_image_label
from storage.tiff import SlabReader
from storage.volume import (
    Kind,
    Volume,
    VolumeWriter,
    VoxelSize,
    build_pyramid,
    create_volume,
    open_volume,
    remove_store,
)

__all__ = ["UNKNOWN_VOXEL_NM", "IngestConfig", "IngestPlan", "LabelCheck", "LabelsRefusedError", "Sources",
           "ingest", "ingest_with_labels", "plan_ingest", "plan_pair", "run_plan"]

Progress = Callable[[int, int], None]


class _SlabProgress:
    """A Dask local-scheduler callback counting finished slab tasks (runs in the caller's thread)."""

    def __init__(self, keys: set[Any], total: int, progress: Progress | None) -> None:
        from dask.callbacks import Callback

        self.done, self.total, self.keys, self.progress = 0, total, keys, progress

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in self.keys:
                self.done += 1
                if self.progress is not None:
                    self.progress(self.done, self.total)

        self.callback = Callback(posttask=posttask)


def _copy_slab(reader: SlabReader, array: zarr.Array, z0: int, z1: int,
               labels: LabelCheck | None = None) -> tuple[tuple[float, float], dict[int, int]]:
    """Copy slices [z0, z1); returns the slab's (min, max) value and, for labels, their value counts."""
    data = reader.read(z0, z1)
    expected = (z1 - z0, *array.shape[1:])
    # zarr silently crops an oversized value; a wrong shape here would be a reader bug.
    assert data.shape == expected, f"slab {z0}..{z1} read as {data.shape}, expected {expected}"
    counts = labels.slab(data, z0, z1) if labels is not None else {}
    array[z0:z1] = data
    return (float(data.min()), float(data.max())), counts



def _write_slabs(plan: IngestPlan, writer: VolumeWriter,
                 progress: Progress | None) -> tuple[dict[int, int], tuple[float, float]]:
    """Stream every slab into ``writer``; returns the label value counts and the (min, max) value."""
    import dask

    n_z = plan.source.shape[0]
    bounds = [(z0, min(z0 + plan.slab_z, n_z)) for z0 in range(0, n_z, plan.slab_z)]
    array = writer.array  # written densely (see storage.volume_handle.dense_writes)
    workers = plan.config.workers or os.cpu_count() or 1
    labels = LabelCheck(plan.path, str(plan.source.files[0]), plan.config.label_polarity) \
        if plan.kind == "label" else None
    with SlabReader(plan.source) as reader:
        tasks = [dask.delayed(_copy_slab, pure=False)(reader, array, z0, z1, labels) for z0, z1 in bounds]
        keys = {t.key for t in tasks}
        tracker = _SlabProgress(keys, len(tasks), progress)
        with tracker.callback:
            results = dask.compute(*tasks, scheduler=plan.config.scheduler, num_workers=workers)
    counts: dict[int, int] = {}
    for _, slab_counts in results:
        for value, n in slab_counts.items():
            counts[value] = counts.get(value, 0) + n
    return counts, (min(r[0][0] for r in results), max(r[0][1] for r in results))


def run_plan(plan: IngestPlan, progress: Progress | None = None) -> Volume:
    """Carry out a plan: create (or reuse) the volume, stream the slabs, pyramid, mark complete.

    The output's lock (:mod:`storage.locks`) is held throughout, and the plan's decision is
    taken again under it: a run that waited for another one writing the same volume from the
    same inputs finds it complete and reuses it instead of replacing it. A failure removes
    what was written when the disk is full or read-only (one OutputWriteError naming the
    path) or the labels are refused; an ingest starts again from the first slab anyway.
    """
    with store_lock(plan.path):
        plan.action = plan._decide_action()
        if plan.action == "reuse":
            return open_volume(plan.path)
        try:
            with writing(plan.path):
                writer = create_volume(
                    plan.path, plan.source.shape, plan.source.dtype, plan.voxel_size, kind=plan.kind,
                    chunks=plan.chunks, shards=plan.shards, compression=plan.config.compression,
                    pyramid_levels=plan.config.pyramid_levels, attrs=plan.attrs, overwrite=True,
                )
                counts, (lo, hi) = _write_slabs(plan, writer, progress)
                if plan.kind == "image":  # how every stage maps these values to 0..255
                    writer.update_attrs(intensity_range=list(range_for(plan.source.dtype, lo, hi)))
                check = LabelCheck(plan.path, str(plan.source.files[0]), plan.config.label_polarity)
                if plan.kind == "label":
                    values = check.finish(counts)
                    writer.update_attrs(label_values=values)
                if plan.config.pyramid_levels:
                    # Labels must not be averaged: nearest keeps their values.
                    build_pyramid(writer, method="nearest" if plan.kind == "label" else "mean")
                if plan.kind == "label":  # an OME-Zarr image-label of the image, each value named
                    write_image_label(writer.group, plan.path, plan.image_path, check.properties(values))
                return writer.mark_complete()
        except (OutputWriteError, LabelsRefusedError):
            # Nothing half-written stays on a full disk, nor a copy of labels no stage may use.
            # (Other failures keep the incomplete store, refused by readers, for inspection.)
            remove_store(plan.path)
            raise


def ingest(sources: Sources, path: str | os.PathLike[str], config: IngestConfig | None = None, *,
           kind: Kind = "image", voxel_size: VoxelSize | Sequence[float] | None = None,
           expected_shape: Sequence[int] | None = None, progress: Progress | None = None) -> Volume:
    """Ingest one TIFF source into an OME-Zarr volume at ``path`` and return it (complete).

    ``progress(done, total)`` is called as slabs finish. See :func:`plan_ingest` for the
    arguments; raises InputError / ShapeMismatchError / StoreExistsError before writing.
    """
    return run_plan(plan_ingest(sources, path, config, kind=kind, voxel_size=voxel_size,
                                expected_shape=expected_shape), progress)


def ingest_with_labels(image_sources: Sources, label_sources: Sources, image_path: str | os.PathLike[str],
                       label_path: str | os.PathLike[str], config: IngestConfig | None = None, *,
                       progress: Progress | None = None) -> tuple[Volume, Volume]:
    """Ingest an image and its labels. Both headers, both shapes and both outputs are checked
    before anything is written, so a label stack of the wrong shape leaves no output at all."""
    image_plan, label_plan = plan_pair(image_sources, label_sources, image_path, label_path, config)
    image = run_plan(image_plan, progress)
    return image, run_plan(label_plan, progress)

