"""The engine on a CUDA device: same output as on the CPU, and no host synchronisation per batch.

Selected with ``pytest -m gpu`` on a machine with a GPU (``benchmarks/gpu_suite.sh`` runs them
first); ``make test`` deselects them (``-m "not gpu"``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.volume import create_volume, open_volume
from unet.blocks import plan_blocks
from unet.infer_config import InferConfig
from unet.inference import AffinePredictor, BlockPredictor, infer_volume, mirror_pad
from unet.model import UNet, UNetConfig
from unet.predictor import ModelPredictor
from unet.streaming import DeviceTransfer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = "cuda"
CFG = InferConfig(tile=(64, 64), overlap=(16, 16), halo=(0, 8, 8), block_shape=(2, 64, 64),
                  chunks=(1, 32, 32), batch_size=3, precision="fp32", pyramid_levels=1)


def _volume(path: Path, shape: tuple[int, int, int]) -> str:
    data = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    w = create_volume(path, shape, np.uint8, (40, 4, 4))
    w.write(0, data)
    w.mark_complete()
    return str(path)


@pytest.mark.parametrize("blend", ["crop", "gaussian"])
def test_cuda_engine_writes_what_the_cpu_engine_writes(tmp_path: Path, blend: str) -> None:
    src = _volume(tmp_path / "in.zarr", (5, 150, 130))
    outs = {}
    for device in ("cpu", "cuda"):
        cfg = CFG.model_copy(update={"blend": blend, "device": device})
        out = tmp_path / f"{device}.zarr"
        infer_volume(src, str(out), functools.partial(AffinePredictor, 1 / 255, 0.0, 0.0, device), "x", cfg)
        outs[device] = [np.asarray(open_volume(out).level(i)[:]) for i in range(2)]
    for level in range(2):
        assert np.abs(outs["cuda"][level].astype(int) - outs["cpu"][level].astype(int)).max() <= 1


def test_unet_on_cuda_matches_the_cpu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=3, base_channels=8, norm="none"))
    shape = (2, 96, 96)
    vol = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    results = {}
    for device in ("cpu", "cuda"):
        cfg = CFG.model_copy(update={"device": device})
        engine = BlockPredictor(ModelPredictor(model, cfg, 1), cfg, device)
        out = np.zeros(shape, np.uint8)
        for b in plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile)):
            padded = torch.from_numpy(mirror_pad(vol[b.read.slices], b)).to(device)
            out[b.write.slices] = engine.uint8(padded, b).cpu().numpy()
        results[device] = out.astype(int)
    assert np.abs(results["cuda"] - results["cpu"]).max() <= 1


def test_a_block_is_computed_without_host_synchronisation() -> None:
    """Upload, every batch, blending, quantising and the queued download: nothing waits for the GPU."""
    cfg = CFG.model_copy(update={"blend": "gaussian", "device": "cuda"})
    model = UNet(UNetConfig(depth=3, base_channels=8))
    engine = BlockPredictor(ModelPredictor(model, cfg, 1), cfg, "cuda")
    transfer = DeviceTransfer(torch.device("cuda"))
    shape = (2, 200, 200)
    vol = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
    blocks = plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    staged = [transfer.stage(mirror_pad(vol[b.read.slices], b)) for b in blocks]
    transfer.download([engine.uint8(transfer.upload(staged[0]), blocks[0])])()  # warm caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        waits = [transfer.download([engine.uint8(transfer.upload(h), b)])
                 for h, b in zip(staged, blocks, strict=True)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for b, wait in zip(blocks, waits, strict=True):
        (got,) = wait()
        assert got.shape == b.write.shape and got.dtype == np.uint8


def test_compiled_bf16_engine_matches_eager_with_partial_batches(tmp_path: Path) -> None:
    """The GPU benchmark's mode (torch.compile, bf16, batches padded to a fixed size) through the whole
    engine gives what the eager model gives, to bf16's rounding."""
    from unet.checkpoint import save_checkpoint
    from unet.inference import load_predictor

    torch.manual_seed(0)
    mcfg = UNetConfig(depth=3, base_channels=8)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, UNet(mcfg), mcfg)
    src = _volume(tmp_path / "in.zarr", (3, 150, 130))  # 8 tiles a block in batches of 3: the last one padded
    outs = {}
    for compiled in (False, True):
        cfg = CFG.model_copy(update={"device": DEVICE, "precision": "bf16", "compile": compiled})
        out = tmp_path / f"compiled-{compiled}.zarr"
        infer_volume(src, str(out), functools.partial(load_predictor, str(ckpt), cfg), "m", cfg)
        outs[compiled] = np.asarray(open_volume(out).read(slice(None))).astype(int)
    diff = np.abs(outs[True] - outs[False])
    assert diff.max() <= 4 and diff.mean() < 0.5


class _Hungry:
    """``x / 255`` that first claims ``per_tile`` bytes of GPU memory for every tile of its batch."""

    def __init__(self, per_tile: int) -> None:
        self.per_tile, self.device = per_tile, torch.device(DEVICE)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        claim = torch.empty(self.per_tile * batch.shape[0], dtype=torch.uint8, device=batch.device)
        del claim
        return batch / 255


def test_a_real_out_of_memory_error_halves_the_batch() -> None:
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    cfg = CFG.model_copy(update={"device": DEVICE, "batch_size": 2, "blend": "crop"})
    block = plan_blocks((2, 150, 130), cfg.block_shape, cfg.halo, (1, *cfg.tile))[0]
    data = np.random.default_rng(2).integers(0, 256, block.read.shape, dtype=np.uint8)
    padded = torch.from_numpy(mirror_pad(data, block)).to(DEVICE)
    engine = BlockPredictor(_Hungry(int(free * 0.6)), cfg, DEVICE)  # one tile fits, two do not
    out = engine.uint8(padded, block).cpu()
    expected = BlockPredictor(AffinePredictor(1 / 255), cfg.model_copy(update={"device": "cpu"})).uint8(
        padded.cpu(), block)
    assert engine.batch_limit == 1
    assert np.abs(out.numpy().astype(int) - expected.numpy().astype(int)).max() <= 1
