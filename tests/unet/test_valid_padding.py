"""Valid-padding U-Nets (the paper's) in blockwise inference: the tile is mirror-padded by the
network's margin and cut back, so with enough real context blockwise output is the network on the
whole slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unet.test_context import CONTEXT_CFG, blockwise_probabilities, louder
from unet.infer_config import InferConfig
from unet.model import UNet, UNetConfig
from unet.predictor import check_fits_model
from unet.slice_prediction import fit_padding, predict_slices


def _loud_valid_net() -> UNet:
    torch.manual_seed(0)
    return louder(UNet(UNetConfig(depth=3, base_channels=4, norm="none", padding="valid")).eval())


def test_blockwise_valid_net_equals_the_whole_slice() -> None:
    model = _loud_valid_net()
    margin = fit_padding(96, model.config)[0]
    cfg = CONTEXT_CFG
    assert cfg.context_px() >= margin == 20
    check_fits_model(cfg, model.config)
    vol = np.random.default_rng(0).integers(0, 256, (1, 192, 192)).astype(np.uint8)
    out = blockwise_probabilities(model, cfg, vol)
    whole = predict_slices(model, vol, amp=False)  # the whole slice, mirror-padded by the margin
    inner = (slice(margin, -margin), slice(margin, -margin))
    assert np.abs(out[0][inner] - whole[0][inner]).max() < 1e-5 and whole[0][inner].std() > 0.01


def test_valid_net_needs_context_of_its_margin() -> None:
    model = _loud_valid_net()
    thin = InferConfig(tile=(64, 64), overlap=(16, 16), halo=(0, 8, 8), block_shape=(1, 48, 48),
                       chunks=(1, 16, 16), device="cpu")
    with pytest.raises(ValueError, match=r"consumes 20 px of context .* \(it is 8 px\)"):
        check_fits_model(thin, model.config)
    tiny = thin.model_copy(update={"tile": (16, 16), "overlap": (0, 0), "halo": (0, 0, 0)})
    with pytest.raises(ValueError, match="tile .* must be over twice that"):
        check_fits_model(tiny, model.config)
