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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import zarr

from storage.errors import InputError, OutputWriteError, ShapeMismatchError, StoreExistsError, writing
from storage.freshness import decide
from storage.ingest_config import IngestConfig
from storage.intensity import range_for
from storage.locks import store_lock
from storage.tiff import PathLike, SlabReader, TiffSource, open_source
from storage.volume import (
    Kind,
    Volume,
    VolumeWriter,
    VoxelSize,
    build_pyramid,
    create_volume,
    open_volume,
    remove_store,
    store_exists,
)

__all__ = ["IngestConfig", "IngestPlan", "ingest", "ingest_with_labels", "plan_ingest", "plan_pair",
           "run_plan"]

Progress = Callable[[int, int], None]
Sources = PathLike | Sequence[PathLike]
UNKNOWN_VOXEL_NM = 1.0


def _layout(shape: tuple[int, int, int], config: IngestConfig) -> tuple[tuple[int, int, int],
                                                                      tuple[int, int, int] | None, int]:
    """Chunks, shards (z, y, x) and slab size (z) for a volume of ``shape``."""
    _, y, x = shape
    chunks = (1, min(config.chunk_yx, y), min(config.chunk_yx, x))
    shards = None
    if config.shard_z is not None:
        # A shard must be a multiple of the chunk; cover the slice up to shard_yx.
        sy = min(max(config.shard_yx // chunks[1], 1), -(-y // chunks[1])) * chunks[1]
        sx = min(max(config.shard_yx // chunks[2], 1), -(-x // chunks[2])) * chunks[2]
        shards = (config.shard_z, sy, sx)
    block_z = shards[0] if shards else chunks[0]
    slab_z = config.slab_z or (block_z if shards else 16)
    if slab_z % block_z:
        raise ValueError(f"slab_z must be a multiple of {block_z} (the write block's z), got {slab_z}")
    return chunks, shards, slab_z


def _voxel_size(source: TiffSource, config: IngestConfig, override: VoxelSize | Sequence[float] | None
                ) -> tuple[VoxelSize, str, tuple[str, ...]]:
    """The voxel size, where it came from, and the axes nobody gave a size for (1 nm recorded)."""
    if override is not None:
        return VoxelSize.of(override), "given", ()
    if config.voxel_size is not None:
        return VoxelSize.of(config.voxel_size), "config", ()
    known = source.voxel_nm
    values = [v if v is not None else UNKNOWN_VOXEL_NM for v in known]
    unknown = tuple(a for a, v in zip("zyx", known, strict=True) if v is None)
    origin = "metadata" if not unknown else "metadata, unknown axes set to 1 nm: " + ",".join(unknown)
    return VoxelSize.of(values), origin, unknown


class IngestPlan:
    """Everything decided from headers before a byte is written: the validated source, the
    output path, its layout and attributes, and whether the output is created, reused
    (same inputs and settings, complete) or replaced."""

    def __init__(self, source: TiffSource, path: str, config: IngestConfig, kind: Kind,
                 voxel_size: VoxelSize, voxel_origin: str, voxel_unknown: tuple[str, ...] = ()) -> None:
        self.source, self.path, self.config, self.kind = source, path, config, kind
        self.voxel_size = voxel_size
        self.voxel_unknown = voxel_unknown  # axes whose size no one gave: 1 nm is a placeholder
        self.chunks, self.shards, self.slab_z = _layout(source.shape, config)
        self.attrs: dict[str, Any] = {
            "sources": source.fingerprint(),
            "source": source.describe(),
            "params": config.output_params(),
            "voxel_size_origin": voxel_origin,
        }
        if voxel_unknown:  # said plainly, so viewers and later stages can tell a placeholder size
            self.attrs["voxel_size_unknown"] = list(voxel_unknown)
        if kind == "label":
            # Same key and values as unet.labels.Polarity (storage may not import unet).
            self.attrs["label_polarity"] = config.label_polarity
        self.action = self._decide_action()

    def _decide_action(self) -> Literal["create", "reuse", "replace"]:
        # The one rule of storage.freshness; an ingest is not resumable, so our own earlier
        # attempt with the same inputs that died midway is redone (nothing of value is lost).
        expected = {**self.attrs, "kind": self.kind, "voxel_size_nm": list(self.voxel_size.as_tuple())}
        record: dict[str, Any] | None = None
        if store_exists(self.path):
            record = {"complete": False}  # unreadable: records nothing, so it is refused, not replaced
            try:
                existing = open_volume(self.path, require_complete=False)
                record = {**existing.attrs, "complete": existing.is_complete,
                          "voxel_size_nm": list(existing.voxel_size.as_tuple())}
            except Exception:
                pass
        d = decide(record, expected, overwrite=self.config.overwrite, resumable=False)
        if d.action == "refuse":
            raise StoreExistsError(f"{self.path} already exists and was made from other inputs or settings "
                                   f"({d.reason}); pass overwrite=True (--overwrite) to replace it")
        return cast(Literal["create", "reuse", "replace"], d.action)


def plan_ingest(sources: Sources, path: str | os.PathLike[str], config: IngestConfig | None = None, *,
                kind: Kind = "image", voxel_size: VoxelSize | Sequence[float] | None = None,
                expected_shape: Sequence[int] | None = None) -> IngestPlan:
    """Validate ``sources`` from their headers and decide what ingesting them into ``path``
    would do, without writing anything. Labels take no channel; ``expected_shape`` (z, y, x)
    is the image's shape that labels must match."""
    config = config or IngestConfig()
    source = open_source(sources, channel=config.channel if kind == "image" else None)
    if expected_shape is not None and tuple(source.shape) != tuple(expected_shape):
        raise ShapeMismatchError(
            f"{source.files[0]}: {kind} stack has shape (z, y, x) {source.shape}, "
            f"but the image has {tuple(expected_shape)}"
        )
    vs, origin, unknown = _voxel_size(source, config, voxel_size)
    return IngestPlan(source, os.fspath(path), config, kind, vs, origin, unknown)


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


class LabelsRefusedError(InputError):
    """Label values that are not binary membrane labels, or that look inverted."""


class LabelCheck:
    """Membrane labels are validated where they enter: binary (0 and one other value), and
    membrane a minority under the declared polarity. Instance (cell ID) labels and inverted
    labels are refused before they reach augment, training or evaluation.

    (The same rules as :func:`unet.labels.check_labels`; storage may not import unet.)
    """

    MAX_MEMBRANE_FRACTION = 0.5

    def __init__(self, path: str, source: str, polarity: str) -> None:
        self.path, self.source, self.polarity = path, source, polarity

    def _refuse_values(self, values: list[int], where: str) -> None:
        shown = ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")
        if len(values) > 2:
            raise LabelsRefusedError(
                f"{self.source}: labels{where} hold {len(values)} distinct values ({shown}): instance "
                "(cell ID) labels are not membrane labels; give binary labels (0 = membrane, 255 = "
                "cell interior, as ISBI 2012)")
        raise LabelsRefusedError(f"{self.source}: labels{where} hold values {shown}: binary membrane "
                                 "labels need 0 and one other value")

    def slab(self, data: Any, z0: int, z1: int) -> dict[int, int]:
        import numpy as np

        values, n = np.unique(data, return_counts=True)
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            self._refuse_values([int(v) for v in values], f" (slices {z0}..{z1})")
        return {int(v): int(c) for v, c in zip(values, n, strict=True)}

    def finish(self, counts: dict[int, int]) -> list[int]:
        """Check the whole stack's value counts; returns its values (sorted)."""
        values = sorted(counts)
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            self._refuse_values(values, "")
        total = sum(counts.values())
        membrane = counts.get(0, 0) if self.polarity == "zero_is_membrane" else total - counts.get(0, 0)
        if total and membrane / total > self.MAX_MEMBRANE_FRACTION:
            raise LabelsRefusedError(
                f"{self.source}: labels do not match label_polarity {self.polarity!r}: "
                f"{membrane / total:.0%} of voxels would be membrane (membranes are a minority); are they "
                "inverted? Set label_polarity (--label-polarity) to the other value")
        return values


def _write_slabs(plan: IngestPlan, writer: VolumeWriter,
                 progress: Progress | None) -> tuple[dict[int, int], tuple[float, float]]:
    """Stream every slab into ``writer``; returns the label value counts and the (min, max) value."""
    import dask

    n_z = plan.source.shape[0]
    bounds = [(z0, min(z0 + plan.slab_z, n_z)) for z0 in range(0, n_z, plan.slab_z)]
    array = writer.array  # written densely (see storage.volume._dense_writes)
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
                if plan.kind == "label":
                    values = LabelCheck(plan.path, str(plan.source.files[0]),
                                        plan.config.label_polarity).finish(counts)
                    writer.update_attrs(label_values=values)
                if plan.config.pyramid_levels:
                    # Labels must not be averaged: nearest keeps their values.
                    build_pyramid(writer, method="nearest" if plan.kind == "label" else "mean")
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


def plan_pair(image_sources: Sources, label_sources: Sources, image_path: str | os.PathLike[str],
              label_path: str | os.PathLike[str], config: IngestConfig | None = None
              ) -> tuple[IngestPlan, IngestPlan]:
    """Plans for an image and its labels; labels get the image's shape check and voxel size."""
    image_plan = plan_ingest(image_sources, image_path, config)
    if os.path.abspath(os.fspath(image_path)) == os.path.abspath(os.fspath(label_path)):
        raise InputError(f"image and labels cannot be written to the same path {image_path}")
    label_plan = plan_ingest(label_sources, label_path, config, kind="label",
                             voxel_size=image_plan.voxel_size, expected_shape=image_plan.source.shape)
    return image_plan, label_plan

