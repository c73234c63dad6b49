"""Logits → membrane probability is written once, and a 2-class model reads class 1 everywhere."""

from __future__ import annotations

import pytest
import torch

from unet.infer_config import InferConfig
from unet.membrane import membrane_channel, membrane_probability
from unet.model import UNet, UNetConfig
from unet.predictor import ModelPredictor


def test_one_logit_is_a_sigmoid_and_n_classes_take_class_1():
    one = torch.tensor([[[[0.0, 100.0]]]])
    assert membrane_probability(one).tolist() == [[[[0.5, 1.0]]]]
    two = torch.tensor([[[[5.0]], [[-5.0]]]])  # class 0 wins: little membrane
    assert membrane_probability(two).item() < 0.01
    assert membrane_probability(two, membrane_class=0).item() > 0.99
    assert membrane_channel(1, 1) == 0 and membrane_channel(3) == 1
    with pytest.raises(ValueError, match="membrane_class must be in"):
        membrane_channel(2, 2)


def test_a_2_class_model_is_inferred_with_class_1_as_membrane_without_flags():
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4, n_classes=2)).eval()
    x = torch.rand(1, 1, 32, 32)
    predictor = ModelPredictor(model, InferConfig(device="cpu"), n_classes=2)
    assert predictor.membrane_class == 1
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1)[:, 1:2]
        assert torch.allclose(predictor.membrane(x), expected, atol=1e-6)
