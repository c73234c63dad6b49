"""Blockwise geometry: exact regions, no data (in the style of daisy's scheduler tests)."""

from __future__ import annotations

import numpy as np
import pytest

from unet.blending import blend_window
from unet.blocks import Region, group_blocks, plan_blocks, plan_tiles, tile_starts


def R(start: tuple[int, ...], stop: tuple[int, ...]) -> Region:
    return Region(start, stop)


def test_interior_block_reads_halo_of_real_voxels_without_padding() -> None:
    blocks = plan_blocks((1, 30, 30), (1, 10, 10), halo=(0, 3, 3))
    centre = blocks[4]
    assert centre.write == R((0, 10, 10), (1, 20, 20))
    assert centre.read == R((0, 7, 7), (1, 23, 23))
    assert centre.pad == ((0, 0), (0, 0), (0, 0))
    assert centre.padded_shape == (1, 16, 16)
    assert centre.write_in_padded == R((0, 3, 3), (1, 13, 13))


def test_corner_and_edge_blocks_are_mirror_padded_only_outside_the_volume() -> None:
    blocks = plan_blocks((1, 30, 30), (1, 10, 10), halo=(0, 3, 3))
    corner = blocks[0]
    assert corner.read == R((0, 0, 0), (1, 13, 13))
    assert corner.pad == ((0, 0), (3, 0), (3, 0))
    assert corner.write_in_padded == R((0, 3, 3), (1, 13, 13))
    edge = blocks[5]  # middle row, right column
    assert edge.write == R((0, 10, 20), (1, 20, 30))
    assert edge.read == R((0, 7, 17), (1, 23, 30))
    assert edge.pad == ((0, 0), (0, 0), (0, 3))
    last = blocks[-1]
    assert last.pad == ((0, 0), (0, 3), (0, 3))


def test_non_divisible_volume_cuts_the_last_blocks_at_the_border() -> None:
    blocks = plan_blocks((5, 23, 17), (2, 10, 10), halo=(0, 2, 2))
    assert len(blocks) == 3 * 3 * 2
    assert [b.index for b in blocks] == list(range(18))
    assert blocks[-1].write == R((4, 20, 10), (5, 23, 17))
    assert blocks[-1].read == R((4, 18, 8), (5, 23, 17))
    assert blocks[-1].pad == ((0, 0), (0, 2), (0, 2))
    # the write regions tile the volume exactly once
    cover = np.zeros((5, 23, 17), dtype=int)
    for b in blocks:
        cover[b.write.slices] += 1
    assert (cover == 1).all()


def test_block_smaller_than_a_tile_takes_more_real_context_evenly() -> None:
    # a 4-pixel block with halo 1 is 6 long; the tile needs 10: 2 more on each side
    blocks = plan_blocks((1, 40, 40), (1, 4, 4), halo=(0, 1, 1), min_read=(1, 10, 10))
    b = blocks[11]  # row 1, column 1: write [4, 8) in y
    assert b.write == R((0, 4, 4), (1, 8, 8))
    assert b.read == R((0, 1, 1), (1, 11, 11))
    assert b.pad == ((0, 0), (0, 0), (0, 0))
    assert b.padded_shape == (1, 10, 10)


def test_tiny_volume_smaller_than_one_tile_is_mirror_padded_to_the_tile() -> None:
    (b,) = plan_blocks((2, 5, 3), (4, 64, 64), halo=(0, 2, 2), min_read=(1, 16, 16))
    assert b.write == R((0, 0, 0), (2, 5, 3))
    assert b.read == R((0, 0, 0), (2, 5, 3))
    # y: 5 + 2*2 = 9 < 16 → 7 more (3 before, 4 after) on top of the halo
    assert b.pad == ((0, 0), (5, 6), (6, 7))
    assert b.padded_shape == (2, 16, 16)
    assert b.write_in_padded == R((0, 5, 6), (2, 10, 9))


def test_z_halo_is_configurable() -> None:
    blocks = plan_blocks((6, 8, 8), (2, 8, 8), halo=(1, 0, 0))
    assert blocks[1].read == R((1, 0, 0), (5, 8, 8))
    assert blocks[0].pad == ((1, 0), (0, 0), (0, 0))
    assert blocks[2].pad == ((0, 1), (0, 0), (0, 0))


def test_tile_starts_last_tile_is_flush_with_the_end() -> None:
    assert tile_starts(10, 10, 2) == (0,)
    assert tile_starts(20, 8, 2) == (0, 6, 12)
    assert tile_starts(21, 8, 2) == (0, 6, 12, 13)
    with pytest.raises(ValueError, match="overlap must be in"):
        tile_starts(20, 8, 8)
    with pytest.raises(ValueError, match="shorter than one tile"):
        tile_starts(7, 8, 2)


def test_tiles_cover_the_plane_and_owned_regions_partition_it() -> None:
    tiles = plan_tiles((20, 14), (8, 8), (2, 2))
    assert [t.input.start for t in tiles] == [(y, x) for y in (0, 6, 12) for x in (0, 6)]
    assert tiles[0].owned == R((0, 0), (7, 7))
    assert tiles[1].owned == R((0, 7), (7, 14))
    assert tiles[-1].owned == R((13, 7), (20, 14))
    owned = np.zeros((20, 14), dtype=int)
    for t in tiles:
        assert t.input.contains(t.owned)
        owned[t.owned.slices] += 1
    assert (owned == 1).all()


def test_gaussian_window_peaks_in_the_centre_and_stays_positive() -> None:
    w = blend_window((16, 16), "gaussian")
    assert w.shape == (16, 16) and w.dtype == np.float32
    assert w.min() >= 1e-6 and w.max() == pytest.approx(1.0, abs=1e-2)
    assert w[8, 8] > w[8, 0] > 0
    assert np.allclose(w, w[::-1, ::-1])
    assert (blend_window((4, 4), "constant") == 1).all()
    with pytest.raises(ValueError, match="blend mode"):
        blend_window((4, 4), "median")  # type: ignore[arg-type]


def test_bad_geometry_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"block_shape must be positive, got \(0, 4, 4\)"):
        plan_blocks((1, 8, 8), (0, 4, 4))
    with pytest.raises(ValueError, match="halo must be >= 0"):
        plan_blocks((1, 8, 8), (1, 4, 4), halo=(0, -1, 0))
    with pytest.raises(ValueError, match="stop"):
        Region((0, 5), (1, 4))


def test_group_blocks_makes_consecutive_groups() -> None:
    assert group_blocks([0, 1, 2, 5, 6], 2) == [[0, 1], [2, 5], [6]]
    with pytest.raises(ValueError, match="blocks per group must be >= 1"):
        group_blocks([1], 0)
