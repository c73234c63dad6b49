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
from typing import Any, Literal

import zarr

from storage.errors import InputError, ShapeMismatchError, StoreExistsError
from storage.ingest_config import IngestConfig
from storage.tiff import PathLike, SlabReader, TiffSource, open_source
from storage.volume import (
    Kind,
    Volume,
    VolumeWriter,
    VoxelSize,
    build_pyramid,
    create_volume,
    open_volume,
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
        if not store_exists(self.path):
            return "create"
        if self.config.overwrite:
            return "replace"
        try:
            existing = open_volume(self.path, require_complete=False)
            same = all(existing.attrs.get(k) == v for k, v in self.attrs.items()) and \
                existing.voxel_size == self.voxel_size and existing.attrs.get("kind") == self.kind
        except Exception:  # anything unreadable there is not ours to replace silently
            same = False
        if same and existing.is_complete:
            return "reuse"
        if same:
            # Our own earlier attempt with the same inputs died midway: nothing of value is lost.
            return "replace"
        raise StoreExistsError(
            f"{self.path} already exists and was made from other inputs or settings; "
            "pass overwrite=True (--overwrite) to replace it"
        )


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


def _copy_slab(reader: SlabReader, array: zarr.Array, z0: int, z1: int) -> int:
    data = reader.read(z0, z1)
    expected = (z1 - z0, *array.shape[1:])
    # zarr silently crops an oversized value; a wrong shape here would be a reader bug.
    assert data.shape == expected, f"slab {z0}..{z1} read as {data.shape}, expected {expected}"
    array[z0:z1] = data
    return int(data.nbytes)


def _write_slabs(plan: IngestPlan, writer: VolumeWriter, progress: Progress | None) -> None:
    import dask

    n_z = plan.source.shape[0]
    bounds = [(z0, min(z0 + plan.slab_z, n_z)) for z0 in range(0, n_z, plan.slab_z)]
    array = writer.array  # written densely (see storage.volume._dense_writes)
    workers = plan.config.workers or os.cpu_count() or 1
    with SlabReader(plan.source) as reader:
        tasks = [dask.delayed(_copy_slab, pure=False)(reader, array, z0, z1) for z0, z1 in bounds]
        keys = {t.key for t in tasks}
        tracker = _SlabProgress(keys, len(tasks), progress)
        with tracker.callback:
            dask.compute(*tasks, scheduler=plan.config.scheduler, num_workers=workers)


def run_plan(plan: IngestPlan, progress: Progress | None = None) -> Volume:
    """Carry out a plan: create (or reuse) the volume, stream the slabs, pyramid, mark complete."""
    if plan.action == "reuse":
        return open_volume(plan.path)
    writer = create_volume(
        plan.path, plan.source.shape, plan.source.dtype, plan.voxel_size, kind=plan.kind,
        chunks=plan.chunks, shards=plan.shards, compression=plan.config.compression,
        pyramid_levels=plan.config.pyramid_levels, attrs=plan.attrs, overwrite=True,
    )
    _write_slabs(plan, writer, progress)
    if plan.config.pyramid_levels:
        # Labels must not be averaged: nearest keeps their values.
        build_pyramid(writer, method="nearest" if plan.kind == "label" else "mean")
    return writer.mark_complete()


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

