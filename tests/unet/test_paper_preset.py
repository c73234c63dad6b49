"""The ``paper`` U-Net (issue 12 item 6): Ronneberger et al. 2015's valid padding, no normalisation,
dropout 0.5 at the two deepest levels, He initialisation; trains and predicts like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from unet.model import UNet, UNetConfig
from unet.train_config import TrainConfig
from unet.trainer import Trainer


def test_paper_preset_is_the_papers_network() -> None:
    cfg = UNetConfig.paper()
    assert (cfg.depth, cfg.base_channels, cfg.padding, cfg.norm) == (5, 64, "valid", "none")
    assert (cfg.dropout, cfg.dropout_levels, cfg.init) == (0.5, 2, "he")
    assert cfg.valid_output_size(572) == 388
    assert UNetConfig.paper(base_channels=8).base_channels == 8  # overrides
    assert UNetConfig.model_validate_json(cfg.model_dump_json()) == cfg  # what checkpoints store


def test_dropout_sits_at_the_chosen_deepest_levels() -> None:
    def dropped(cfg: UNetConfig) -> list[bool]:
        return [isinstance(d.drop, nn.Dropout2d) for d in UNet(cfg).downs]

    assert dropped(UNetConfig.paper(base_channels=2)) == [False, False, True, True]
    assert dropped(UNetConfig(base_channels=2, dropout=0.5)) == [False, False, False, True]  # as before
    assert dropped(UNetConfig(base_channels=2)) == [False] * 4
    with pytest.raises(ValidationError, match="dropout_levels 3 exceeds the 2 levels"):
        UNetConfig(depth=3, dropout=0.5, dropout_levels=3)


def test_he_initialisation_has_the_papers_spread() -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig.paper(base_channels=32))
    conv = model.downs[1].conv.block[0]  # 3 x 3, 64 → 128 channels: N = 9 x 64
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0
    up = model.ups[0].up  # 2 x 2 stride 2 from 512 channels: each output sees 512 inputs
    assert up.weight.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.02)
    default = UNet(UNetConfig(base_channels=32, norm="none")).downs[1].conv.block[0]
    assert default.weight.std().item() < 0.7 * conv.weight.std().item()  # PyTorch's is narrower


def test_new_fields_leave_existing_records_unchanged() -> None:
    # The pipeline compares stored configs to decide what to re-run, and checkpoints store them:
    # a config at the new fields' defaults dumps exactly as before they existed.
    before = {"in_channels": 1, "n_classes": 1, "depth": 5, "base_channels": 64, "padding": "same",
              "norm": "batch", "dropout": 0.0}
    assert UNetConfig().model_dump(mode="json") == before
    assert json.loads(UNetConfig().model_dump_json()) == before
    assert UNetConfig.model_validate(before) == UNetConfig()


def test_a_valid_net_trains_on_whole_samples() -> None:
    """Each sample's border is mirrored by the network's margin, so its output covers the sample:
    a 60 x 60 sample (no size a depth-3 valid net accepts) gets a loss over all its pixels."""
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-3, amp=False)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((2, 1, 60, 60), dtype=np.float32))
    target = torch.from_numpy((rng.random((2, 60, 60)) > 0.5).astype(np.float32))
    losses = []
    for border in (1.0, 0.0):  # the same network (seeded), the sample's 5 border rows weighted or not
        weight = torch.ones(2, 60, 60)
        weight[:, :5] = border
        trainer = Trainer(UNetConfig.paper(depth=3, base_channels=4), cfg, torch.device("cpu"))
        losses.append(float(trainer.step(image, target, weight)))
    assert all(np.isfinite(losses))
    assert losses[0] != pytest.approx(losses[1], rel=1e-6)  # the border rows are in the loss


def test_cli_takes_the_preset_by_name(tmp_path: Path) -> None:
    from flows.cli_stages import unet_config

    assert unet_config("paper") == UNetConfig.paper()
    assert unet_config('{"depth": 4, "base_channels": 8}') == UNetConfig(depth=4, base_channels=8)


def test_a_paper_checkpoint_predicts_a_volume(tmp_path: Path) -> None:
    import functools

    from storage.volume import create_volume, open_volume
    from unet.checkpoint import save_checkpoint
    from unet.infer_config import InferConfig
    from unet.inference import infer_volume, load_predictor

    mcfg = UNetConfig.paper(depth=3, base_channels=4)
    save_checkpoint(tmp_path / "paper.pt", UNet(mcfg), mcfg)
    w = create_volume(tmp_path / "em.zarr", (2, 100, 90), np.uint8, (50, 4, 4))
    w.write(0, np.random.default_rng(3).integers(0, 256, (2, 100, 90), dtype=np.uint8))
    w.mark_complete()
    cfg = InferConfig(tile=(96, 96), overlap=(48, 48), halo=(0, 24, 24), block_shape=(1, 48, 48),
                      chunks=(1, 16, 16), device="cpu")
    factory = functools.partial(load_predictor, str(tmp_path / "paper.pt"), cfg)
    infer_volume(str(tmp_path / "em.zarr"), str(tmp_path / "pred.zarr"), factory, "paper", cfg)
    pred = open_volume(tmp_path / "pred.zarr")
    assert pred.is_complete and pred.shape == (2, 100, 90) and pred.read(slice(None)).std() > 0
