"""Previews of large volumes are drawn from a pyramid level a screen can show; emseg infer writes
them (raw | membrane probability) beside its result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from storage.volume import build_pyramid, create_volume, open_volume
from unet.preview import CAPTION_PX
from unet.volume_previews import preview_level, save_previews


def _wide(path: Path, levels: int, width: int = 4200) -> str:
    data = np.tile(np.arange(width, dtype=np.uint16) % 251, (2, 40, 1)).astype(np.uint8)
    w = create_volume(path, data.shape, np.uint8, (40, 4, 4), chunks=(1, 40, 1024), pyramid_levels=levels)
    w.write(0, data)
    build_pyramid(w)
    w.mark_complete()
    return str(path)


def test_previews_of_wide_slices_come_from_the_first_level_a_screen_shows(tmp_path: Path) -> None:
    raw = _wide(tmp_path / "raw.zarr", levels=3)
    pred = _wide(tmp_path / "pred.zarr", levels=2)
    flat = _wide(tmp_path / "flat.zarr", levels=0)
    assert preview_level([open_volume(raw)]) == 2  # 4200 -> 2100 -> 1050
    assert preview_level([open_volume(raw), open_volume(pred)]) == 2
    assert preview_level([open_volume(raw)], max_width=5000) == 0
    assert preview_level([open_volume(raw), open_volume(flat)]) == 0  # only level 0 in common
    out = save_previews(raw, str(tmp_path / "rep"), pred, n_slices=2, prefix="infer")
    assert [os.path.basename(p["path"]) for p in out] == ["infer-z0000.png", "infer-z0001.png"]
    img = np.asarray(Image.open(out[0]["path"]))
    assert out[0]["level"] == 2 and img.shape == (CAPTION_PX + 10, 1050 * 2 + 4)
    np.testing.assert_array_equal(img[CAPTION_PX:, :1050], np.asarray(open_volume(raw).level(2)[0]))


def test_infer_writes_previews_beside_its_result(tmp_path: Path) -> None:
    import torch

    from storage.workspace import Workspace
    from unet.checkpoint import save_checkpoint
    from unet.infer_config import InferConfig
    from unet.infer_stage import infer_stage
    from unet.model import UNet, UNetConfig

    ws = Workspace(str(tmp_path / "ws"))
    w = create_volume(ws.volume("em"), (3, 48, 48), np.uint8, (40, 4, 4))
    w.write(0, np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8))
    w.mark_complete()
    torch.manual_seed(0)
    mcfg = UNetConfig(depth=2, base_channels=4, norm="none")
    save_checkpoint(tmp_path / "m.pt", UNet(mcfg), mcfg)
    cfg = InferConfig(tile=(32, 32), overlap=(8, 8), halo=(0, 8, 8), device="cpu")
    result = infer_stage(ws, "em", str(tmp_path / "m.pt"), cfg)
    assert [os.path.basename(p) for p in result.previews] == ["infer-z0000.png", "infer-z0001.png",
                                                              "infer-z0002.png"]
    for path in result.previews:
        assert os.path.dirname(path) == ws.report_dir("em")
        assert np.asarray(Image.open(path)).shape == (CAPTION_PX + 48, 48 * 2 + 4)
    # the pipeline draws its own previews into its run's folder: asked not to, infer draws none
    quiet = infer_stage(ws, "em", str(tmp_path / "m.pt"), cfg, output="quiet", previews=False)
    assert quiet.previews == () and not os.path.exists(ws.report_dir("quiet"))
