"""Configuration of blockwise inference (the infer stage's one config model).

Used as the Python API and as the Prefect flow parameter (the UI renders it as a form).
Sizes are in voxels, axes (z, y, x) for volumes and blocks, (y, x) for tiles. Importing
this module does not import torch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unet.blocks import BlendMode

TTA = Literal["none", "flips", "d4"]
Precision = Literal["auto", "fp32", "bf16"]

# Fields that change how fast the output is produced but not its bytes; everything else is
# part of a prediction's identity (stored in its attrs, checked on resume).
EXECUTION_ONLY = frozenset({"batch_size", "prefetch_blocks", "read_threads", "write_threads",
                            "blocks_per_group", "compile", "channels_last", "device"})


class InferConfig(BaseModel):
    """How to run a 2-D U-Net over a volume: tiling, blending, batching, streaming, output layout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tile: tuple[int, int] = Field((512, 512), description="Model input tile (y, x) in pixels; must be a "
                                  "multiple of the model's divisor 2**(depth-1).")
    overlap: tuple[int, int] = Field((64, 64), description="Overlap (y, x) in pixels between neighbouring "
                                     "tiles inside a block; 0 <= overlap < tile.")
    halo: tuple[int, int, int] = Field((0, 32, 32), description="Real context (z, y, x) in voxels read "
                                       "around each write block; mirror padding only at the volume border. "
                                       "z must be 0 for a 2-D model.")
    blend: BlendMode = Field("gaussian", description="How overlapping tiles combine: 'gaussian' window, "
                             "'constant' average, or 'crop' (each pixel from the tile it is most "
                             "central in).")
    tta: TTA = Field("none", description="Test-time augmentation averaged over: 'none', 'flips' (4 flips), "
                     "'d4' (4 rotations x 2 flips, square tiles only).")
    batch_size: int = Field(8, ge=1, description="Tiles per forward pass.")
    # Tiles per axis of a padded block are 1 + ceil((block + 2 * halo - tile) / (tile - overlap)); the
    # defaults make block + 2 * halo = tile + 3 * (tile - overlap) exactly (1792 + 64 = 512 + 3 * 448),
    # so no tile is wasted beyond the overlap itself: 16 tiles of 512² for 1792² voxels.
    block_shape: tuple[int, int, int] = Field((4, 1792, 1792), description="Write block (z, y, x) in "
                                              "voxels: the output's shard, the unit of resumption. Best "
                                              "when block + 2*halo - tile is a multiple of tile - overlap.")
    chunks: tuple[int, int, int] = Field((1, 256, 256), description="Output chunk (z, y, x) inside a "
                                         "shard; block_shape must be a multiple of it.")
    blocks_per_group: int = Field(0, ge=0, description="Write blocks per unit of work (Prefect/Dask task); "
                                  "0 = automatic (about 100 groups per run).")
    prefetch_blocks: int = Field(2, ge=1, description="Blocks read ahead of the compute "
                                 "(bounds host memory).")
    read_threads: int = Field(2, ge=1, description="Threads reading blocks.")
    write_threads: int = Field(2, ge=1, description="Threads writing blocks; also the most finished "
                               "blocks waiting to be written.")
    pyramid_levels: int = Field(0, ge=0, le=8, description="Extra 2x-downsampled levels for viewers.")
    membrane_class: int = Field(0, ge=0, description="Channel holding the membrane class for models "
                                "with n_classes > 1 (softmax); ignored for a single sigmoid logit.")
    precision: Precision = Field("auto", description="'auto' = bf16 autocast on CUDA, fp32 on CPU.")
    channels_last: bool = Field(True, description="Use channels_last memory format on CUDA.")
    compile: bool = Field(False, description="torch.compile the model on CUDA (slow start, faster "
                          "steady state).")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA if available), 'cpu', 'cuda', "
                        "'cuda:1'.")

    @model_validator(mode="after")
    def _check(self) -> InferConfig:
        for name, vals in (("tile", self.tile), ("block_shape", self.block_shape), ("chunks", self.chunks)):
            if min(vals) < 1:
                raise ValueError(f"{name} must be positive, got {vals}")
        for t, o in zip(self.tile, self.overlap, strict=True):
            if not 0 <= o < t:
                raise ValueError(f"overlap must be in [0, tile) per axis, got overlap {self.overlap} "
                                 f"for tile {self.tile}")
        if min(self.halo) < 0:
            raise ValueError(f"halo must be >= 0, got {self.halo}")
        if any(b % c for b, c in zip(self.block_shape, self.chunks, strict=True)):
            raise ValueError(f"block_shape {self.block_shape} must be a multiple of chunks {self.chunks}")
        if self.tta == "d4" and self.tile[0] != self.tile[1]:
            raise ValueError(f"tta 'd4' rotates tiles, so the tile must be square, got {self.tile}")
        return self

    def identity(self) -> dict[str, Any]:
        """The parameters that determine the output bytes (stored in the prediction's attrs)."""
        return self.model_dump(mode="json", exclude=set(EXECUTION_ONLY))

    def tile_efficiency(self) -> float:
        """Write voxels per tile voxel for an interior block (1.0 = no tile computes a voxel twice)."""
        eff = 1.0
        for b, h, t, o in zip(self.block_shape[1:], self.halo[1:], self.tile, self.overlap, strict=True):
            n = 1 + max(0, math.ceil((b + 2 * h - t) / (t - o)))
            eff *= b / (n * t)
        return eff

    def groups_for(self, n_blocks: int) -> int:
        """Blocks per group: as configured, or about 100 groups per run."""
        return self.blocks_per_group or max(1, math.ceil(n_blocks / 100))
