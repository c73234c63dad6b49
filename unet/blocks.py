"""Blockwise geometry for inference: write blocks, read regions with a halo, tiles, blending.

Pure geometry: no arrays are read here, only regions computed. Axis order is (z, y, x)
for volumes and blocks, (y, x) for tiles; all sizes and offsets are in voxels.

A volume is cut into **write blocks** aligned to the output's chunks or shards, so two
writers never touch the same stored object. Each block is **read** with a halo of real
neighbouring voxels, clipped to the volume; where the halo (or the minimum of one tile)
leaves the volume, the missing part is **mirror-padded** (``np.pad(mode="reflect")``),
and only there. The padded block is cut into **tiles** of the model's input size, laid
with ``overlap`` pixels between neighbours (the last tile is shifted back to end at the
border). The tiles' predictions are combined either by **crop** (each pixel comes from
exactly one tile: the boundary between two tiles is the middle of their overlap) or by
**blending** with a window (Gaussian or constant) and normalising by the summed weights.
Finally the write region is cropped out and written once::

        volume x ──▶
        ┌──────────────────────┬──────────────────────┬────────────┐
        │ block 0              │ block 1              │ block 2    │  write blocks = shards
        │            ┌ ─ ─ ─ ─ ┼ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─┼ ─ ─ ┐      │  (the last one is cut
        │            ╎  halo   │                      │ halo╎      │   at the volume border)
        ├────────────┼─────────┼──────────────────────┼─────┼──────┤
        │            ╎         │ block 4 (write)      │     ╎      │
        │            ╎         │                      │     ╎      │
        ├────────────┼─────────┼──────────────────────┼─────┼──────┤
        │            ╎         │                      │     ╎      │
        │            └ ─ ─ ─ ─ ┼ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─┼ ─ ─ ┘      │  read region of block 4
        └──────────────────────┴──────────────────────┴────────────┘

    inside one padded block (read region + mirror padding), tiles of size T, overlap o:

        0         T-o  T       2T-2o 2T-o      L-T           L
        ├──tile 0──────┤                        ├──last tile──┤   last tile ends at L
                  ├──tile 1──────┤
        ├─ owned 0 ─┤├── owned 1 ──┤ ...                          crop: boundary in the
                   ▲ middle of the overlap                          middle of each overlap

A 2D model sees one z slice at a time, so the default z halo is 0; a z halo is allowed
(its slices are predicted and then cropped away) for models that want context in z.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def _ints(values: Sequence[int], n: int, what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if len(out) != n:
        raise ValueError(f"{what} needs {n} values, got {tuple(values)}")
    return out


@dataclass(frozen=True)
class Region:
    """A box ``[start, stop)`` per axis, in voxels (any number of axes, e.g. z, y, x)."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop):
            raise ValueError(f"start {self.start} and stop {self.stop} differ in length")
        if any(b < a for a, b in zip(self.start, self.stop, strict=True)):
            raise ValueError(f"region stop {self.stop} precedes start {self.start}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    def shifted(self, offset: Sequence[int]) -> Region:
        return Region(tuple(a + o for a, o in zip(self.start, offset, strict=True)),
                      tuple(b + o for b, o in zip(self.stop, offset, strict=True)))

    def contains(self, other: Region) -> bool:
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop,
                                                            strict=True))


@dataclass(frozen=True)
class Block:
    """One write block: where it is written, where it is read, and the mirror padding needed.

    ``write`` and ``read`` are in volume coordinates (z, y, x). ``pad`` is (before, after)
    per axis: voxels to mirror-pad onto the read data, non-zero only at the volume border.
    """

    index: int
    write: Region
    read: Region
    pad: tuple[tuple[int, int], ...]

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + a + b for s, (a, b) in zip(self.read.shape, self.pad, strict=True))

    @property
    def write_in_padded(self) -> Region:
        """The write region in the coordinates of the padded read array."""
        offset = tuple(p[0] - r for p, r in zip(self.pad, self.read.start, strict=True))
        return self.write.shifted(offset)


def _read_interval(w0: int, w1: int, halo: int, min_len: int, n: int) -> tuple[int, int, int, int]:
    """Read interval [r0, r1) for write [w0, w1) on an axis of length n, plus (pad_before, pad_after)."""
    lo, hi = w0 - halo, w1 + halo
    short = min_len - (hi - lo)
    if short > 0:  # the block is smaller than one tile: take more real context, evenly
        lo -= short // 2
        hi += short - short // 2
    r0, r1 = max(lo, 0), min(hi, n)
    return r0, r1, r0 - lo, hi - r1


def plan_blocks(volume_shape: Sequence[int], block_shape: Sequence[int], halo: Sequence[int] = (0, 0, 0),
                min_read: Sequence[int] = (1, 1, 1)) -> list[Block]:
    """All write blocks of a volume in C order (z slowest), with their read regions.

    volume_shape, block_shape, halo and min_read are (z, y, x) in voxels. ``block_shape``
    should be the output's shard (or chunk) shape or a multiple of it. ``min_read`` is the
    smallest padded extent per axis (the tile size in y, x), so every padded block holds at
    least one tile.
    """
    vs = _ints(volume_shape, 3, "volume_shape")
    bs = _ints(block_shape, 3, "block_shape")
    hs = _ints(halo, 3, "halo")
    ms = _ints(min_read, 3, "min_read")
    if min(vs) < 1:
        raise ValueError(f"volume_shape must be positive, got {vs}")
    if min(bs) < 1:
        raise ValueError(f"block_shape must be positive, got {bs}")
    if min(hs) < 0:
        raise ValueError(f"halo must be >= 0, got {hs}")
    counts = [math.ceil(n / b) for n, b in zip(vs, bs, strict=True)]
    blocks = []
    for index, grid in enumerate(np.ndindex(*counts)):
        w_start = tuple(g * b for g, b in zip(grid, bs, strict=True))
        w_stop = tuple(min(s + b, n) for s, b, n in zip(w_start, bs, vs, strict=True))
        axes = [_read_interval(a, b, h, m, n)
                for a, b, h, m, n in zip(w_start, w_stop, hs, ms, vs, strict=True)]
        blocks.append(Block(
            index=index,
            write=Region(w_start, w_stop),
            read=Region(tuple(a[0] for a in axes), tuple(a[1] for a in axes)),
            pad=tuple((a[2], a[3]) for a in axes),
        ))
    return blocks


def tile_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile start offsets along one axis of ``length`` (>= tile): stride tile - overlap, last flush."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    if length < tile:
        raise ValueError(f"axis of length {length} is shorter than one tile ({tile})")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return tuple(starts)


def owned_intervals(starts: tuple[int, ...], tile: int, length: int) -> tuple[tuple[int, int], ...]:
    """Per tile, the interval it alone provides in crop mode: split at the middle of each overlap."""
    bounds = [0]
    for prev, nxt in zip(starts[:-1], starts[1:], strict=True):
        bounds.append((nxt + prev + tile) // 2)
    bounds.append(length)
    return tuple((bounds[i], bounds[i + 1]) for i in range(len(starts)))


@dataclass(frozen=True)
class Tile:
    """One model input inside a padded block slice, (y, x): ``input`` region and, for crop mode,
    the ``owned`` region it alone writes (both in padded-block coordinates)."""

    input: Region
    owned: Region


@lru_cache(maxsize=64)
def plan_tiles(padded_yx: tuple[int, int], tile: tuple[int, int],
               overlap: tuple[int, int]) -> tuple[Tile, ...]:
    """Tiles covering a padded (y, x) plane, in C order. Owned regions partition the plane."""
    per_axis = []
    for length, t, o in zip(padded_yx, tile, overlap, strict=True):
        starts = tile_starts(length, t, o)
        per_axis.append(list(zip(starts, owned_intervals(starts, t, length), strict=True)))
    tiles = []
    for (y0, (oy0, oy1)), (x0, (ox0, ox1)) in ((a, b) for a in per_axis[0] for b in per_axis[1]):
        tiles.append(Tile(input=Region((y0, x0), (y0 + tile[0], x0 + tile[1])),
                          owned=Region((oy0, ox0), (oy1, ox1))))
    return tuple(tiles)


def group_blocks(block_ids: Sequence[int], per_group: int) -> list[list[int]]:
    """Consecutive runs of ``per_group`` block ids: the units of work a scheduler sees."""
    if per_group < 1:
        raise ValueError(f"blocks per group must be >= 1, got {per_group}")
    ids = list(block_ids)
    return [ids[i : i + per_group] for i in range(0, len(ids), per_group)]
