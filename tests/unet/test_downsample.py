"""downsample_means on the CPU (integer arithmetic) gives the bytes of the device path (float mean,
rounded half to even) for every possible 2 x 2 sum, odd edges dropped, level after level."""

from __future__ import annotations

import numpy as np
import torch

from unet.downsample import downsample_means


def float_reference(x: torch.Tensor) -> torch.Tensor:
    """What the device branch computes: the float mean of each 2 x 2, rounded half to even."""
    return torch.nn.functional.avg_pool2d(x[:, None].float(), 2)[:, 0].round_().to(torch.uint8)


def test_every_sum_of_four_rounds_half_to_even() -> None:
    sums = np.arange(0, 1021)
    # Spread each sum over its four voxels in two arrangements: near-equal, and as lopsided as uint8 allows.
    even = np.stack([(sums + i) // 4 for i in range(4)], axis=-1)
    lopsided = np.stack([np.clip(sums - 255 * i, 0, 255) for i in range(4)], axis=-1)
    for quads in (even, lopsided):
        assert np.array_equal(quads.sum(axis=-1), sums)
        # A 2 x (2 n) plane holding one quad per column pair.
        plane = quads.reshape(-1, 2, 2).transpose(1, 0, 2).reshape(2, -1)
        x = torch.from_numpy(plane[None].astype(np.uint8))
        (level1,) = downsample_means(x, 1)
        assert np.array_equal(level1.numpy()[0, 0], np.rint(sums / 4).astype(np.uint8))
        assert torch.equal(level1, float_reference(x))


def test_odd_edges_are_dropped_level_after_level() -> None:
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (2, 45, 71), dtype=np.uint8))
    levels = downsample_means(x, 3)
    assert [tuple(level.shape) for level in levels] == [(2, 22, 35), (2, 11, 17), (2, 5, 8)]
    above = x
    for level in levels:
        assert torch.equal(level, float_reference(above))
        above = level
