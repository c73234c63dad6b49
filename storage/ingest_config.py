"""Configuration of the ingest stage (TIFF stacks -> OME-Zarr volumes).

One frozen pydantic model, used as the Python API of :mod:`storage.ingest` and as the
``config`` parameter of the Prefect flow (the UI renders it as a form).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class IngestConfig(BaseModel):
    """How a TIFF stack is turned into an OME-Zarr volume (axes z, y, x; sizes in voxels, nm)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    voxel_size: tuple[float, float, float] | None = Field(
        default=None,
        description="Voxel size (z, y, x) in nanometres. Overrides the file's metadata; when neither "
        "gives a value for an axis, 1 nm is recorded and flagged as unknown.",
    )
    channel: int | None = Field(
        default=None, ge=0,
        description="Channel (or RGB sample) to keep from multichannel images. Required for them, "
        "refused for single-channel images (except 0).",
    )
    chunk_yx: int = Field(
        default=1024, ge=16,
        description="Chunk size in y and x (voxels). Chunks hold one slice in z, for slice-wise 2D work.",
    )
    shard_z: int | None = Field(
        default=None, ge=1,
        description="Slices per shard (Zarr v3 sharding: many chunks in one file, fewer files). None "
        "(default) = no sharding, one file per chunk: zarr-python 3.1 writes shards 2-5x slower.",
    )
    shard_yx: int = Field(
        default=4096, ge=16,
        description="Largest shard extent in y and x (voxels), rounded to a multiple of chunk_yx; "
        "slices smaller than this get one shard across the whole slice.",
    )
    compression: Literal["zstd", "blosc", "none"] = Field(
        default="zstd",
        description="Codec of the stored chunks: zstd (level 1), blosc (lz4) or none. Raw EM barely "
        "compresses (about 1.07x); 'none' is fastest.",
    )
    pyramid_levels: int = Field(
        default=0, ge=0, le=10,
        description="Extra levels downsampled 2x in y, x per level (z kept), for viewers.",
    )
    slab_z: int | None = Field(
        default=None, ge=1,
        description="Slices read and written per task; must be a multiple of the shard's z (or of "
        "the chunk's z when unsharded) so writes are aligned. None = one shard (16 slices unsharded).",
    )
    workers: int | None = Field(
        default=None, ge=1,
        description="Slabs processed in parallel (and the most held in memory at once). None = "
        "number of CPUs.",
    )
    scheduler: Literal["threads", "processes", "sync"] = Field(
        default="threads",
        description="Dask scheduler that runs the slab tasks: threads (default), processes, or sync "
        "(serial, for debugging).",
    )
    label_polarity: Literal["zero_is_membrane", "nonzero_is_membrane"] = Field(
        default="zero_is_membrane",
        description="For label stacks: which values mean membrane. ISBI 2012 is zero_is_membrane "
        "(0 = membrane, 255 = cell interior). Recorded as attrs['label_polarity'] of the labels.",
    )
    overwrite: bool = Field(
        default=False,
        description="Replace an existing output. Without it an existing output made from other "
        "inputs or settings is refused, and one made from the same inputs is reused.",
    )

    @field_validator("voxel_size")
    @classmethod
    def _positive_voxel(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and any(not (s > 0) for s in v):
            raise ValueError(f"voxel_size must be 3 positive numbers (z, y, x) in nm, got {v}")
        return v

    @model_validator(mode="after")
    def _aligned_slabs(self) -> IngestConfig:
        if self.slab_z is not None and self.shard_z is not None and self.slab_z % self.shard_z:
            raise ValueError(
                f"slab_z must be a multiple of shard_z so parallel writes never share a shard, "
                f"got slab_z={self.slab_z}, shard_z={self.shard_z}"
            )
        return self

    def output_params(self) -> dict[str, object]:
        """The settings that determine the output's bytes (not how fast it is made)."""
        return self.model_dump(mode="json", exclude={"workers", "scheduler", "overwrite", "slab_z"})
