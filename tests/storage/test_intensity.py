"""Issue 16 item 2: 12-bit, 16-bit and float stacks are mapped to 0..255 as their uint8 equivalents."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from storage.errors import InputError
from storage.ingest import ingest
from storage.intensity import range_for, to_uint8, volume_range
from storage.volume import create_volume, open_volume
from unet.checkpoint import save_checkpoint
from unet.infer_config import InferConfig
from unet.inference import AffinePredictor, infer_volume, load_predictor
from unet.model import UNet, UNetConfig

U8 = np.random.default_rng(0).integers(0, 256, (3, 48, 40), dtype=np.uint8)
U8[0, 0, 0], U8[0, 0, 1] = 0, 255  # the full range occurs
VARIANTS = {
    "uint8": U8,
    "uint16-12bit": np.rint(U8.astype(np.float64) * 4095 / 255).astype(np.uint16),
    "uint16-full": U8.astype(np.uint16) * 257,
    "float32-unit": U8.astype(np.float32) / 255,
}


def test_ranges_follow_the_data() -> None:
    assert range_for(np.uint8, 3, 200) == (0, 255)
    assert range_for(np.uint16, 0, 4095) == (0, 4095) and range_for(np.uint16, 0, 3000) == (0, 4095)
    assert range_for(np.uint16, 0, 65535) == (0, 65535)
    assert range_for(np.float32, 0.1, 0.9) == (0, 1) and range_for(np.float32, -3.0, 5.0) == (-3, 5)
    np.testing.assert_array_equal(to_uint8(VARIANTS["uint16-12bit"], (0, 4095)).astype(int), U8.astype(int))


def _ingested(tmp_path: Path, name: str) -> str:
    tif = tmp_path / f"{name}.tif"
    tifffile.imwrite(tif, VARIANTS[name], photometric="minisblack")
    return ingest(str(tif), tmp_path / f"{name}.zarr", voxel_size=(40, 4, 4)).path


@pytest.mark.parametrize("name", ["uint16-12bit", "uint16-full", "float32-unit"])
def test_predictions_match_the_uint8_stack(tmp_path: Path, name: str) -> None:
    cfg = InferConfig(tile=(32, 32), overlap=(8, 8), halo=(0, 8, 8), block_shape=(1, 32, 32),
                      chunks=(1, 16, 16), batch_size=2, device="cpu")
    torch.manual_seed(0)
    mcfg = UNetConfig(depth=2, base_channels=4)
    save_checkpoint(tmp_path / "m.pt", UNet(mcfg), mcfg)
    preds = {}
    for variant in ("uint8", name):
        src = _ingested(tmp_path, variant)
        assert open_volume(src).dtype == VARIANTS[variant].dtype  # stored as given: nothing lost
        for kind, factory in (("identity", functools.partial(AffinePredictor, 1 / 255)),
                              ("unet", functools.partial(load_predictor, str(tmp_path / "m.pt"), cfg))):
            out = tmp_path / f"{variant}-{kind}.zarr"
            infer_volume(src, str(out), factory, kind, cfg)
            preds[variant, kind] = open_volume(out).read(slice(None)).astype(int)
    np.testing.assert_array_equal(preds["uint8", "identity"], U8.astype(int))
    for kind in ("identity", "unet"):
        assert np.abs(preds[name, kind] - preds["uint8", kind]).max() <= 2


def test_unrecorded_non_uint8_volumes_are_refused(tmp_path: Path) -> None:
    w = create_volume(tmp_path / "raw16.zarr", (1, 8, 8), np.uint16, (1, 1, 1))
    w.write(0, np.full((1, 8, 8), 4000, np.uint16))
    vol = w.mark_complete()
    with pytest.raises(InputError, match="uint16 voxels but records no intensity range"):
        volume_range(vol.attrs, vol.dtype, vol.path)
    with pytest.raises(InputError, match="no intensity range"):
        infer_volume(vol.path, str(tmp_path / "p.zarr"), AffinePredictor, "x", InferConfig(device="cpu"))
    assert not (tmp_path / "p.zarr").exists()
