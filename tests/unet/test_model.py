"""U-Net output shapes, size checks and the config contract."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from unet.model import UNet, UNetConfig, probabilities


@pytest.mark.parametrize(("depth", "size"), [(1, (8, 12)), (2, (16, 16)), (3, (64, 48)), (4, (32, 96))])
def test_same_padding_keeps_size(depth: int, size: tuple[int, int]) -> None:
    cfg = UNetConfig(depth=depth, base_channels=4)
    out = UNet(cfg)(torch.zeros(2, 1, *size))
    assert out.shape == (2, 1, *size)


def test_n_classes_and_channels() -> None:
    cfg = UNetConfig(depth=3, base_channels=4, in_channels=2, n_classes=3, norm="group", dropout=0.5)
    model = UNet(cfg).eval()
    out = model(torch.randn(1, 2, 32, 32))
    assert out.shape == (1, 3, 32, 32)
    p = probabilities(out)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(1, 32, 32))
    assert probabilities(torch.zeros(2, 1, 4, 4)).shape == (2, 4, 4)


def test_divisor_and_bad_sizes() -> None:
    cfg = UNetConfig(depth=4, base_channels=4)
    assert cfg.divisor == 8
    with pytest.raises(ValueError, match="multiples of 8.*36x32"):
        UNet(cfg)(torch.zeros(1, 1, 36, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        UNet(cfg)(torch.zeros(1, 2, 32, 32))


def test_valid_padding_matches_paper_sizes() -> None:
    cfg = UNetConfig(padding="valid")
    assert cfg.valid_output_size(572) == 388  # Ronneberger et al. 2015, figure 1
    small = UNetConfig(padding="valid", depth=3, base_channels=4, norm="none")
    out_size = small.valid_output_size(92)
    out = UNet(small)(torch.zeros(1, 1, 92, 92))
    assert out.shape == (1, 1, out_size, out_size)
    with pytest.raises(ValueError, match="must be even"):
        UNet(small)(torch.zeros(1, 1, 91, 92))


def test_config_is_frozen_and_strict() -> None:
    cfg = UNetConfig()
    with pytest.raises(ValidationError):
        UNetConfig(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        cfg.depth = 3  # type: ignore[misc]
    assert all(f.description for f in UNetConfig.model_fields.values())
