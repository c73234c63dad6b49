"""The CPU block path keeps its large buffers mapped between blocks (issue 10: page faults were
10-20 ms of kernel time per default-size block on the 2-core machine)."""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest
import torch

from unet.blocks import plan_blocks
from unet.infer_config import InferConfig
from unet.inference import BlockPredictor, mirror_pad
from unet.predictor import AffinePredictor
from unet.streaming import keep_freed_memory_for_reuse
from unet.tiling import empty


def test_cpu_buffers_are_numpy_backed_and_writable() -> None:
    t = empty((2, 3), torch.uint8, torch.device("cpu"))
    assert t.dtype == torch.uint8 and tuple(t.shape) == (2, 3)
    t.numpy()[:] = 7  # shares memory with a numpy array
    assert int(t.sum()) == 42


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page faults are counted by Linux getrusage")
def test_second_block_reuses_the_first_blocks_pages() -> None:
    keep_freed_memory_for_reuse()
    cfg = InferConfig(device="cpu")  # the default geometry: one 4672² block, 2 x 2 tiles of 2560²
    block = plan_blocks((1, *cfg.block_shape[1:]), cfg.block_shape, cfg.halo, (1, *cfg.tile))[0]
    data = np.random.default_rng(0).integers(0, 256, block.read.shape, dtype=np.uint8)
    padded = torch.from_numpy(mirror_pad(data, block))
    engine = BlockPredictor(AffinePredictor(1 / 255), cfg)
    first = engine.uint8(padded, block)
    assert np.array_equal(first.numpy(), padded.numpy()[block.write_in_padded.slices])
    del first
    faults = 0
    for _ in range(3):  # glibc may serve every other allocation from freed memory anyway
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        again = engine.uint8(padded, block)
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert np.array_equal(again.numpy(), padded.numpy()[block.write_in_padded.slices])
        del again
    # the 21 MiB output alone is 5,300 fresh 4-KiB pages: torch's CPU allocator faulted them in on
    # every other block (7,500 faults over these three before the fix)
    assert faults < 1000, f"{faults} page faults for a block whose buffers could all be reused"
