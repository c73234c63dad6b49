"""Configuration of the segment stage: membrane probability → cell labels (one config model).

Used as the Python API and as the Prefect flow parameter (the UI renders it as a form).
Sizes are in voxels, axes (z, y, x) for volumes and blocks, (y, x) for the halo; the
threshold is a membrane probability in [0, 1] (the stored uint8 0..255 is divided by 255).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unet.infer_config import PYRAMID_TOP, auto_pyramid_levels

LabelDtype = Literal["uint32", "uint64"]

# Fields that change how fast the output is produced but not its bytes; everything else is
# part of a segmentation's identity (stored in its attrs, checked on resume).
EXECUTION_ONLY = frozenset({"pyramid_levels"})


class SegmentConfig(BaseModel):
    """Per-slice seeded watershed of a membrane probability map, run blockwise with global IDs.

    Seeds are the pixels with membrane probability below ``threshold`` that lie more than
    ``seed_distance`` pixels (Euclidean, in the slice) from any membrane pixel; their
    connected components (4-connected in a slice, or 6-connected through z with
    ``link_slices``) smaller than ``min_seed_size`` voxels are dropped; the rest grow over
    the probability map (watershed, per slice) until every pixel belongs to a cell.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Membrane probability below which a pixel "
                             "can seed a cell (the model's best validation threshold is a good choice).")
    seed_distance: float = Field(0.0, ge=0.0, le=64.0, description="Seeds keep only pixels farther than "
                                 "this (pixels, distance transform in the slice) from any membrane pixel; "
                                 "splits cells joined by thin gaps in the membrane. 0 = plain threshold.")
    min_seed_size: int = Field(0, ge=0, description="Seed components smaller than this (voxels, counted "
                               "over the whole volume) are dropped; their pixels join a neighbour.")
    link_slices: bool = Field(False, description="Join seeds that overlap between neighbouring slices, so "
                              "a cell keeps one ID through z (3-D cells); otherwise IDs are per slice.")
    block_shape: tuple[int, int, int] = Field((8, 1024, 1024), description="Write block (z, y, x) in "
                                              "voxels: the output's shard and the unit of resumption.")
    halo: tuple[int, int] = Field((32, 32), description="Real context (y, x) in pixels read around each "
                                  "block for the watershed; must exceed seed_distance and fit in a block.")
    dtype: LabelDtype = Field("uint32", description="Label dtype; uint64 for more than 4e9 cells.")
    pyramid_levels: int | None = Field(None, ge=0, le=8, description="Extra 2x-downsampled levels "
                                       "(nearest) for viewers; default: as many as it takes for the top "
                                       f"level to fit in {PYRAMID_TOP} x {PYRAMID_TOP} pixels, as in "
                                       "inference.")

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        if min(self.block_shape) < 1:
            raise ValueError(f"block_shape must be positive, got {self.block_shape}")
        if min(self.halo) < 0:
            raise ValueError(f"halo must be >= 0, got {self.halo}")
        for axis, b, h in zip("yx", self.block_shape[1:], self.halo, strict=True):
            if b < h:
                raise ValueError(f"block_shape {self.block_shape} is smaller than the halo {self.halo} "
                                 f"along {axis}: blocks must be at least as large as the halo")
        if self.seed_distance > 0 and min(self.halo) <= self.seed_distance:
            raise ValueError(f"halo {self.halo} must exceed seed_distance {self.seed_distance} so seeds "
                             "agree across block borders")
        return self

    @property
    def chunks(self) -> tuple[int, int, int]:
        """Output chunk (z, y, x): one slice, 256 x 256 where the block divides evenly, else the block."""
        _, by, bx = self.block_shape
        return (1, 256 if by % 256 == 0 else by, 256 if bx % 256 == 0 else bx)

    def levels_for(self, shape: tuple[int, ...] | list[int]) -> int:
        """Extra pyramid levels for a volume of ``shape`` (z, y, x): the set value, else automatic."""
        return auto_pyramid_levels(shape) if self.pyramid_levels is None else self.pyramid_levels

    def identity(self) -> dict[str, Any]:
        """The parameters that shape the output's bytes (recorded in the store, checked on resume)."""
        return self.model_dump(mode="json", exclude=set(EXECUTION_ONLY))
