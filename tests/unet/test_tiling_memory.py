"""Memory and the block path: CPU buffers stay mapped between blocks (issue 10: page faults were
10-20 ms of kernel time per default-size block on the 2-core machine), and a batch too big for the
device's memory is halved instead of failing a run left overnight."""

from __future__ import annotations

import functools
import resource
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.volume import create_volume
from unet.blocks import Block, plan_blocks
from unet.elementwise import empty
from unet.infer_config import InferConfig
from unet.inference import BlockPredictor, infer_volume, mirror_pad
from unet.predictor import AffinePredictor
from unet.streaming import keep_freed_memory_for_reuse
from unet.tiling import DeviceMemoryError


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


class _SmallDevice:
    """``x / 255`` on a pretend device that holds at most ``fits`` tiles per forward pass."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.batches: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.shape[0])
        if batch.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.50 GiB")
        return batch / 255


def _one_block(cfg: InferConfig) -> tuple[torch.Tensor, Block]:
    block = plan_blocks((2, 96, 96), cfg.block_shape, cfg.halo, (1, *cfg.tile))[0]
    data = np.random.default_rng(1).integers(0, 256, block.read.shape, dtype=np.uint8)
    return torch.from_numpy(mirror_pad(data, block)), block


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(caplog: pytest.LogCaptureFixture) -> None:
    cfg = InferConfig(tile=(32, 32), overlap=(8, 8), halo=(0, 8, 8), block_shape=(2, 96, 96),
                      chunks=(1, 32, 32), batch_size=8, device="cpu")
    padded, block = _one_block(cfg)
    expected = BlockPredictor(AffinePredictor(1 / 255), cfg).uint8(padded, block)
    device = _SmallDevice(fits=2)
    engine = BlockPredictor(device, cfg)
    with caplog.at_level("WARNING", logger="unet.tiling"):
        first = engine.uint8(padded, block)
        second = engine.uint8(padded, block)
    assert torch.equal(first, expected) and torch.equal(second, expected)  # nothing lost or doubled
    assert engine.batch_limit == 2
    assert device.batches[:3] == [8, 4, 2]  # 8 failed, 4 failed, then pairs from there on
    assert set(device.batches[3:]) == {2}
    assert len(caplog.records) == 2 and "going on with 2" in caplog.records[-1].getMessage()


def test_a_tile_too_big_for_the_device_is_one_clear_error(tmp_path: Path) -> None:
    cfg = InferConfig(tile=(32, 32), overlap=(8, 8), halo=(0, 8, 8), block_shape=(2, 96, 96),
                      chunks=(1, 32, 32), batch_size=2, device="cpu")
    padded, block = _one_block(cfg)
    with pytest.raises(DeviceMemoryError, match=r"one 32 x 32 tile does not fit .*smaller tiles \(--tile"):
        BlockPredictor(_SmallDevice(fits=0), cfg).uint8(padded, block)
    # through the whole engine (reader, compute and writer threads) it stays that error
    src = tmp_path / "in.zarr"
    w = create_volume(src, (2, 96, 96), np.uint8, (50, 4, 4))
    w.write(0, np.zeros((2, 96, 96), np.uint8))
    w.mark_complete()
    with pytest.raises(DeviceMemoryError):
        infer_volume(str(src), str(tmp_path / "out.zarr"), functools.partial(_SmallDevice, 0), "small", cfg)
