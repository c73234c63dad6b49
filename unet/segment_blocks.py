"""Blockwise segmentation geometry and the global merge of seed components (no I/O).

Axis order (z, y, x); sizes and offsets in voxels. The volume is cut into write blocks
(the output's shards). Each block is read with a halo in y, x (clipped to the volume, no
padding: a watershed at the volume border sees what a whole-volume run sees)::

        ┌───────────────┬───────────────┬──────────┐
        │ block 0       │ block 1       │ block 2  │   seeds of block 1 are labelled in
        │        ┌ ─ ─ ─┼ ─ ─ ─ ─ ─ ─ ─ ┼ ─ ┐      │   its write region only (local ids
        │        ╎ halo │               │   ╎      │   1..n, stored as block*CAP + id);
        ├────────┼──────┼───────────────┼───┼──────┤   components touching across a face
        │        ╎      │ block 4       │   ╎      │   (same y or x, or same z with
        │        └ ─ ─ ─┼ ─ ─ ─ ─ ─ ─ ─ ┼ ─ ┘      │   link_slices) are joined by a
        └───────────────┴───────────────┴──────────┘   union-find over all blocks

Then each block's watershed reads probabilities and the (globally relabelled) seeds in
its read region, so cells crossing a border grow from the same seeds on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# Seed ids are unique over the volume before the merge: block index * CAP + local id.
CAP = np.uint64(1 << 32)


@dataclass(frozen=True)
class SegBlock:
    """One write block: ``grid`` position, ``write`` and ``read`` boxes as (start, stop) per axis."""

    index: int
    grid: tuple[int, int, int]
    write: tuple[tuple[int, int], ...]
    read: tuple[tuple[int, int], ...]

    @property
    def write_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.write)

    @property
    def read_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.read)

    @property
    def write_in_read(self) -> tuple[slice, ...]:
        """The write box in the coordinates of the read array."""
        return tuple(slice(w0 - r0, w1 - r0) for (w0, w1), (r0, _) in zip(self.write, self.read, strict=True))

    @property
    def voxels(self) -> int:
        return math.prod(b - a for a, b in self.write)


@dataclass(frozen=True)
class SegPlan:
    """All blocks of a volume in C order (z slowest) and the grid they lie on."""

    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    counts: tuple[int, int, int]
    blocks: tuple[SegBlock, ...]

    def at(self, grid: Sequence[int]) -> SegBlock:
        return self.blocks[int(np.ravel_multi_index(tuple(grid), self.counts))]

    def faces(self, axes: Sequence[int]) -> Iterator[tuple[SegBlock, SegBlock, int]]:
        """(block, its neighbour at +1 along ``axis``, axis) for every shared face along ``axes``."""
        for b in self.blocks:
            for axis in axes:
                if b.grid[axis] + 1 < self.counts[axis]:
                    nxt = list(b.grid)
                    nxt[axis] += 1
                    yield b, self.at(nxt), axis


def plan_segment_blocks(shape: Sequence[int], block_shape: Sequence[int], halo_yx: Sequence[int]) -> SegPlan:
    """Write blocks of ``block_shape`` over ``shape`` (both z, y, x), read with ``halo_yx`` (y, x) pixels."""
    vs = tuple(int(s) for s in shape)
    bs = tuple(int(b) for b in block_shape)
    hs = (0, *(int(h) for h in halo_yx))
    if len(vs) != 3 or min(vs) < 1:
        raise ValueError(f"shape must be 3 positive sizes (z, y, x), got {tuple(shape)}")
    if len(bs) != 3 or min(bs) < 1:
        raise ValueError(f"block_shape must be 3 positive sizes (z, y, x), got {tuple(block_shape)}")
    if len(hs) != 3 or min(hs) < 0:
        raise ValueError(f"halo must be 2 sizes (y, x) >= 0, got {tuple(halo_yx)}")
    counts = tuple(math.ceil(n / b) for n, b in zip(vs, bs, strict=True))
    blocks = []
    for index, grid in enumerate(np.ndindex(*counts)):
        write = tuple((g * b, min((g + 1) * b, n)) for g, b, n in zip(grid, bs, vs, strict=True))
        read = tuple((max(a - h, 0), min(c + h, n)) for (a, c), h, n in zip(write, hs, vs, strict=True))
        blocks.append(SegBlock(index, tuple(int(g) for g in grid), write, read))  # type: ignore[arg-type]
    return SegPlan(vs, bs, counts, tuple(blocks))  # type: ignore[arg-type]


def face_planes(block: SegBlock, neighbour: SegBlock, axis: int
                ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Volume slices of the last plane of ``block`` and the first of ``neighbour`` along ``axis``."""
    last = list(block.write_slices)
    first = list(neighbour.write_slices)
    last[axis] = slice(block.write[axis][1] - 1, block.write[axis][1])
    first[axis] = slice(neighbour.write[axis][0], neighbour.write[axis][0] + 1)
    return tuple(last), tuple(first)


def face_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unique (k, 2) uint64 pairs of seed ids facing each other across a face (both non-zero)."""
    if a.shape != b.shape:
        raise ValueError(f"face planes differ in shape: {a.shape} vs {b.shape}")
    both = (a != 0) & (b != 0)
    pairs = np.stack([a[both].astype(np.uint64), b[both].astype(np.uint64)], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def merge_seeds(sizes: Sequence[np.ndarray], pairs: np.ndarray, min_size: int = 0
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Join seed components across blocks and number the joined cells 1..n.

    ``sizes[b][i]`` is the voxel count of local id ``i + 1`` of block ``b``; ``pairs`` are
    (k, 2) seed ids (block * CAP + local id) that touch across a face. Returns the sorted
    seed ids, each one's cell id (0 for cells smaller than ``min_size`` voxels, counted over
    all their blocks) and the number of cells. Cells are numbered in the order of their
    first seed id, so the result depends on nothing but the inputs.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    counts = np.array([len(s) for s in sizes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    keys = np.concatenate([np.uint64(b) * CAP + np.arange(1, c + 1, dtype=np.uint64)
                           for b, c in enumerate(counts)] or [np.zeros(0, np.uint64)])
    if n == 0:
        return keys, np.zeros(0, np.uint64), 0
    pairs = np.asarray(pairs, dtype=np.uint64).reshape(-1, 2)

    def node(ids: np.ndarray) -> np.ndarray:
        block, local = (ids // CAP).astype(np.int64), (ids % CAP).astype(np.int64)
        if np.any(local < 1) or np.any(block >= len(counts)) or np.any(local > counts[block]):
            raise ValueError("a face pair names a seed id that no block reported")
        return offsets[block] + local - 1

    a, b = node(pairs[:, 0]), node(pairs[:, 1])
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    comp_size = np.bincount(comp, weights=np.concatenate(sizes).astype(np.float64), minlength=n_comp)
    _, first = np.unique(comp, return_index=True)  # first node of each component
    order = np.argsort(first, kind="stable")
    kept = order[comp_size[order] >= max(min_size, 1)]
    new_id = np.zeros(n_comp, np.uint64)
    new_id[kept] = np.arange(1, len(kept) + 1, dtype=np.uint64)
    return keys, new_id[comp], int(len(kept))
