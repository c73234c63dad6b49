"""Configuration of blockwise inference (the infer stage's one config model).

Used as the Python API and as the Prefect flow parameter (the UI renders it as a form).
Sizes are in voxels, axes (z, y, x) for volumes and blocks, (y, x) for tiles. Importing
this module does not import torch.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unet.blending import BlendMode

TTA = Literal["none", "flips", "d4"]
PYRAMID_TOP = 1024  # the automatic pyramid stops at the first level whose plane fits in this
Precision = Literal["auto", "fp32", "bf16"]

# Fields that change how fast the output is produced (or whether a check lets it be), not its
# bytes; everything else is part of a prediction's identity (stored in its attrs, checked on resume).
EXECUTION_ONLY = frozenset({"batch_size", "prefetch_blocks", "read_threads", "write_threads",
                            "compute_threads", "blocks_per_group", "compile", "channels_last", "device",
                            "allow_voxel_size_mismatch"})


class InferConfig(BaseModel):
    """How to run a 2-D U-Net over a volume: tiling, blending, batching, streaming, output layout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Default geometry (issue 10): every written pixel gets at least 112 px of real context from the
    # tile that owns it (crop: min(halo, overlap / 2)), covering the default U-Net's receptive-field
    # radius of 107 px (unet.model.receptive_field_radius, depth 5); a padded block is exactly 2 x 2
    # tiles (4672 + 2 * 112 = 2560 + 2336), so tile efficiency is (4672 / 5120)**2 = 0.83; and block,
    # halo and tile stride are multiples of 16, so every tile sits on the whole slice's pooling grid and
    # blockwise output is what the model says on the whole slice (tests/unet/test_context.py).
    # Planes smaller than a block get smaller tiles, and planes the block does not divide get equal
    # blocks with tiles fitted to them (fit_to_volume).
    tile: tuple[int, int] = Field((2560, 2560), description="Model input tile (y, x) in pixels; must be a "
                                  "multiple of the model's divisor 2**(depth-1).")
    overlap: tuple[int, int] = Field((224, 224), description="Overlap (y, x) in pixels between neighbouring "
                                     "tiles inside a block; 0 <= overlap < tile.")
    halo: tuple[int, int, int] = Field((0, 112, 112), description="Real context (z, y, x) in voxels read "
                                       "around each write block; mirror padding only at the volume border. "
                                       "z must be 0 for a 2-D model.")
    blend: BlendMode = Field("crop", description="How overlapping tiles combine: 'crop' (each pixel from the "
                             "tile it is most central in: the U-Net paper's overlap-tile strategy), "
                             "'gaussian' window, or 'constant' average.")
    tta: TTA = Field("none", description="Test-time augmentation averaged over: 'none', 'flips' (4 flips), "
                     "'d4' (4 rotations x 2 flips, square tiles only).")
    batch_size: int = Field(0, ge=0, description="Tiles per forward pass: 0 = automatic (2 on a GPU, where "
                            "2 x 2560^2 fills a large one; 1 on the CPU). Use 1, or smaller tiles, on small "
                            "GPUs.")
    block_shape: tuple[int, int, int] = Field((1, 4672, 4672), description="Write block (z, y, x) in "
                                              "voxels: the output's shard, the unit of resumption. Best "
                                              "when block + 2*halo - tile is a multiple of tile - overlap. "
                                              "Made equal (with the chunks in proportion) on axes it does "
                                              "not divide, where that computes less (fit_to_volume).")
    chunks: tuple[int, int, int] = Field((1, 584, 584), description="Output chunk (z, y, x) inside a "
                                         "shard; block_shape must be a multiple of it.")
    blocks_per_group: int = Field(0, ge=0, description="Write blocks per unit of work (Prefect/Dask task); "
                                  "0 = automatic (about 100 groups per run).")
    prefetch_blocks: int = Field(2, ge=1, description="Blocks read ahead of the compute "
                                 "(bounds host memory).")
    read_threads: int = Field(2, ge=1, description="Threads reading blocks.")
    compute_threads: int = Field(0, ge=0, description="Blocks computed at once: 0 = automatic (1, which "
                                 "keeps a GPU, or a model using torch's CPU threads, busy; one per core, at "
                                 "most 2, for a predictor that computes single-threaded on the CPU).")
    write_threads: int = Field(2, ge=1, description="Threads writing blocks; also the most finished "
                               "blocks waiting to be written.")
    pyramid_levels: int | None = Field(None, ge=0, le=8, description="Extra 2x-downsampled levels for "
                                       "viewers; default: as many as it takes for the top level to fit in "
                                       f"{PYRAMID_TOP} x {PYRAMID_TOP} pixels (none for small volumes).")
    membrane_class: int | None = Field(None, ge=0, description="Channel holding the membrane class for "
                                       "models with n_classes > 1 (softmax); default: the class the "
                                       "checkpoint records (1, as training uses, for older checkpoints); "
                                       "ignored for a single sigmoid logit.")
    allow_voxel_size_mismatch: bool = Field(False, description="Predict even when the volume's voxel "
                                            "size (y, x) differs by more than 10 % from the one the "
                                            "checkpoint was trained at (refused by default).")
    precision: Precision = Field("auto", description="'auto' = bf16 autocast on CUDA, fp32 on CPU.")
    channels_last: bool = Field(True, description="Use the channels_last memory format (CUDA and CPU; "
                                "on the CPU, forward passes measured 1.4-2.1x faster with it).")
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
            n = tiles_along(b + 2 * h, t, o)
            eff *= b / (n * t)
        return eff

    def context_px(self) -> int:
        """Guaranteed real context (pixels) around a written pixel in an interior block, from the
        tile that contributes to it (crop) — compare with the model's receptive-field radius."""
        from unet.blending import min_context
        from unet.blocks import Region, plan_blocks

        shape = (1, *(3 * b for b in self.block_shape[1:]))
        block = plan_blocks(shape, (1, *self.block_shape[1:]), (0, *self.halo[1:]), (1, *self.tile))[4]
        write = block.write_in_padded
        return min_context(block.padded_shape[1:], Region(write.start[1:], write.stop[1:]),  # type: ignore[arg-type]
                           self.tile, self.overlap, self.blend)

    def batch_size_for(self, device_type: str) -> int:
        """``batch_size``, or the automatic choice: 2 tiles per pass on a GPU, 1 on the CPU. Why 1 on
        the CPU: the cores are already busy with one tile (a model's pass spreads over torch's threads,
        and single-threaded predictors compute blocks in parallel), while a second 2560² tile doubles
        the pass's host memory and pushes each float32 tile (26 MB) out of the 32 MB shared cache
        before it is quantised; measured on the 2-core machine with the zero-cost predictor, 16 default
        blocks of random bytes took 1.48 core-seconds with 1 tile a pass against 1.57 with 2 (medians
        of 8 alternated runs; 8-13 % more voxels a second)."""
        if self.batch_size:
            return self.batch_size
        return 1 if device_type == "cpu" else 2

    def compute_threads_for(self, device_type: str, single_threaded: bool = False) -> int:
        """``compute_threads``, or the automatic choice: one block at a time, except on the CPU for a
        predictor that computes ``single_threaded`` (numpy arithmetic), which leaves cores idle.
        Why not always one per core on the CPU: a U-Net already spreads each forward pass over
        torch's threads, and two blocks at once made 4 x 2048² on 2 cores 3-4x slower (5.4 s with
        one block at a time, 15-20 s with two: the threads of both passes fight for the cores)."""
        if self.compute_threads:
            return self.compute_threads
        return max(1, min(2, os.cpu_count() or 1)) if device_type == "cpu" and single_threaded else 1

    def groups_for(self, n_blocks: int) -> int:
        """Blocks per group: as configured, or about 100 groups per run."""
        return self.blocks_per_group or max(1, math.ceil(n_blocks / 100))


# Tiles shrunk to fit a small volume stay a multiple of this: the divisor of the deepest U-Net
# (depth 8, the most UNetConfig allows), so they fit any model.
FIT_MULTIPLE = 128
# Blocks fitted to a volume stay a multiple of this, as the default 4672 is: every tile then starts
# on the pooling grid of U-Nets up to depth 7 (the default is 5), so the output stays what the model
# says on the whole slice (tests/unet/test_context.py).
BLOCK_MULTIPLE = 64


def fit_to_volume(cfg: InferConfig, shape: tuple[int, ...] | list[int]) -> InferConfig:
    """``cfg`` fitted to a volume of ``shape`` (z, y, x): write blocks of equal size on axes the
    configured block does not divide (:func:`fitted_block`), each tile axis as small as it can be
    without needing more tiles per block (:func:`fitted_tile`; square under d4 TTA, which rotates
    tiles), and the automatic pyramid depth resolved. Deterministic in (cfg, shape); the run's
    identity records the result."""
    axes = zip(shape[1:], cfg.block_shape[1:], cfg.chunks[1:], cfg.halo[1:], cfg.tile, cfg.overlap,
               strict=True)
    blocks = [fitted_block(int(n), b, c, h, t, o) for n, b, c, h, t, o in axes]
    block_shape = (cfg.block_shape[0], *(b for b, _ in blocks))
    tile = [fitted_tile(int(n), b, h, t, o) for n, b, h, t, o in
            zip(shape[1:], block_shape[1:], cfg.halo[1:], cfg.tile, cfg.overlap, strict=True)]
    if cfg.tta == "d4":
        tile = [max(tile)] * 2
    update: dict[str, Any] = {}
    if block_shape != cfg.block_shape:
        update["block_shape"] = block_shape
        update["chunks"] = (cfg.chunks[0], *(c for _, c in blocks))
    if tuple(tile) != cfg.tile:
        update["tile"] = tuple(tile)
        update["overlap"] = tuple(min(o, t // 2) for o, t in zip(cfg.overlap, tile, strict=True))
    if cfg.pyramid_levels is None:
        update["pyramid_levels"] = auto_pyramid_levels(shape)
    return InferConfig.model_validate({**dict(cfg), **update}) if update else cfg


def fitted_block(size: int, block: int, chunk: int, halo: int, tile: int, overlap: int) -> tuple[int, int]:
    """(block, chunk) for a volume axis of ``size`` pixels: as configured where one block covers the
    axis or blocks tile it exactly; otherwise the same number of blocks, each what the configured
    count of tiles per block covers at the smallest tile (a multiple of ``FIT_MULTIPLE``) that still
    reaches the end of the axis, and a multiple of ``BLOCK_MULTIPLE`` and of the chunks per block
    (which stays the same). Why: a 5000-pixel axis used to be cut 4672 + 328, and the thin last
    block computed as many 2560² tiles as the others: 2.36 voxels computed per voxel written over a
    5000² plane; cut 2624 + 2376 with 1536² tiles, 1.51 (10000²: 1.64 → 1.33). Every block keeps
    one tile shape, as a compiled model wants. Kept as configured where that computes less."""
    if size <= block or size % block == 0:
        return block, chunk
    per_block = block // chunk
    step = math.lcm(BLOCK_MULTIPLE, per_block)
    count = tiles_along(block + 2 * halo, tile, overlap)  # tiles per block at the configured size
    blocks = -(-size // block)
    for t in range(FIT_MULTIPLE, tile, FIT_MULTIPLE):
        covered = (count * t - (count - 1) * overlap - 2 * halo) // step * step
        if covered >= block:
            break
        if covered > 0 and blocks * covered >= size:
            if _axis_cost(size, covered, halo, tile, overlap) < _axis_cost(size, block, halo, tile, overlap):
                return covered, covered // per_block
            break  # a thin last block that fits in fewer tiles can cost less (30000 = 6 x 4672 + 1968)
    return block, chunk


def _axis_cost(size: int, block: int, halo: int, tile: int, overlap: int) -> int:
    """Pixels computed along one volume axis of ``size``: over its blocks, tiles per padded block x
    the fitted tile (the cost of a plane is the product of its two axes' costs)."""
    t = fitted_tile(size, block, halo, tile, overlap)
    o = min(overlap, t // 2)
    total = 0
    for start in range(0, size, block):
        total += tiles_along(min(block, size - start) + 2 * halo, t, o) * t
    return total


def fitted_tile(size: int, block: int, halo: int, tile: int, overlap: int) -> int:
    """The tile (one axis, pixels) for a volume axis of ``size``: the configured one's count of tiles
    per padded block (block + 2 halo, the block clipped to the volume), each as small as covers it,
    rounded up to ``FIT_MULTIPLE``. Why: a plane smaller than a tile used to be cut into 2 x 2 tiles
    of its own size (4 times the voxels it writes; 9 times for 256²), because the mirrored halo made
    the padded plane larger than one tile; a 3000² plane took 2 x 2 tiles of 2560² where 1792² do.
    The default geometry on large volumes is unchanged (2 x 2 tiles of 2560² per 4672² block)."""
    padded = min(size, block) + 2 * halo
    if padded <= tile:
        return min(tile, -(-padded // FIT_MULTIPLE) * FIT_MULTIPLE)
    count = tiles_along(padded, tile, overlap)  # tiles per axis at the configured size
    smallest = -(-(padded - overlap) // count) + overlap
    return min(tile, -(-smallest // FIT_MULTIPLE) * FIT_MULTIPLE)


def tiles_along(length: int, tile: int, overlap: int) -> int:
    """Tiles of ``tile`` pixels, ``overlap`` apart, that cover ``length`` pixels (at least one):
    ``len(unet.blocks.tile_starts(max(length, tile), tile, overlap))`` without planning them."""
    return 1 + max(0, -(-(length - tile) // (tile - overlap)))


def auto_pyramid_levels(shape: tuple[int, ...] | list[int]) -> int:
    """2x levels (y, x) until the plane fits in PYRAMID_TOP² (at most 8): 0 for 1024², 3 for 8192²."""
    side = max(int(shape[-1]), int(shape[-2]))
    return min(8, max(0, math.ceil(math.log2(side / PYRAMID_TOP)))) if side > PYRAMID_TOP else 0
