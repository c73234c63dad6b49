"""What an ingest will do, decided from headers before a byte is written.

The validated source, the output path, its chunk/shard layout, slab size and attributes
(input fingerprints, settings, voxel size and where it came from), and whether the output
is created, reused (same inputs and settings, complete) or replaced (:mod:`storage.freshness`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, cast

from storage.errors import InputError, ShapeMismatchError, StoreExistsError
from storage.freshness import decide
from storage.ingest_config import IngestConfig
from storage.tiff import PathLike, TiffSource, open_source
from storage.volume import Kind, VoxelSize, open_volume, store_exists

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
        self.image_path: str | None = None  # for labels: the image they label (OME image-label source)
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
                                   f"({d.reason}); pass "
                                   "--overwrite (overwrite=True from Python) to replace it")
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


def plan_pair(image_sources: Sources, label_sources: Sources, image_path: str | os.PathLike[str],
              label_path: str | os.PathLike[str], config: IngestConfig | None = None
              ) -> tuple[IngestPlan, IngestPlan]:
    """Plans for an image and its labels; labels get the image's shape check and voxel size."""
    image_plan = plan_ingest(image_sources, image_path, config)
    if os.path.abspath(os.fspath(image_path)) == os.path.abspath(os.fspath(label_path)):
        raise InputError(f"image and labels cannot be written to the same path {image_path}")
    label_plan = plan_ingest(label_sources, label_path, config, kind="label",
                             voxel_size=image_plan.voxel_size, expected_shape=image_plan.source.shape)
    label_plan.image_path = image_plan.path
    return image_plan, label_plan

