"""On the CPU the engine fits its tiles per forward pass to the memory available: a pass too big
would be killed by the kernel without a word, so it takes fewer tiles (same output), or refuses
one tile too big with a clear error."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import unet.tiling as tiling
from unet.blocks import plan_blocks
from unet.infer_config import InferConfig
from unet.model import UNet, UNetConfig
from unet.predictor import CPU_BYTES_PER_CHANNEL_PIXEL, ModelPredictor
from unet.tiling import BlockPredictor, DeviceMemoryError

CFG = InferConfig(tile=(64, 64), overlap=(16, 16), halo=(0, 8, 8), block_shape=(1, 96, 96),
                  chunks=(1, 32, 32), batch_size=4, device="cpu")


def test_fewer_tiles_per_pass_when_memory_is_short(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    predictor = ModelPredictor(UNet(UNetConfig(depth=3, base_channels=4)).eval(), CFG, 1)
    need = predictor.host_bytes_per_tile(CFG.tile)
    assert need == CPU_BYTES_PER_CHANNEL_PIXEL * 4 * 64 * 64
    block = plan_blocks((1, 96, 96), CFG.block_shape, CFG.halo, (1, *CFG.tile))[0]
    padded = torch.from_numpy(np.random.default_rng(0).integers(0, 256, block.padded_shape, dtype=np.uint8))
    whole_batch = BlockPredictor(predictor, CFG)  # this machine has room for 4 tiles of 64²
    assert whole_batch.batch_limit == 4

    monkeypatch.setattr(tiling, "available_host_memory", lambda: int(2.5 * need / 0.8))
    with caplog.at_level(logging.WARNING, logger="unet.tiling"):
        short = BlockPredictor(predictor, CFG)
    assert short.batch_limit == 2 and "going on with 2" in caplog.text
    assert torch.equal(short.uint8(padded, block), whole_batch.uint8(padded, block))

    monkeypatch.setattr(tiling, "available_host_memory", lambda: need)  # 80 % of one tile
    with pytest.raises(DeviceMemoryError, match="64 x 64 tile.*--tile"):
        BlockPredictor(predictor, CFG)
    assert BlockPredictor(lambda x: x / 255, CFG).batch_limit == 4  # no estimate: as configured


def test_valid_padding_tiles_count_their_mirrored_margin() -> None:
    predictor = ModelPredictor(UNet(UNetConfig(depth=3, base_channels=4, padding="valid")).eval(), CFG, 1)
    need = predictor.host_bytes_per_tile(CFG.tile)
    assert need is not None and need > CPU_BYTES_PER_CHANNEL_PIXEL * 4 * 64 * 64
