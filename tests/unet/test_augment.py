"""The random augmentation policy and its config."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from storage.synthetic import SyntheticSpec, generate_volume
from unet.augment import MAX_DISPLACEMENT_FRACTION, AugmentConfig, augment_sample, random_handles
from unet.mls import MODES, backward_map, min_jacobian
from unet.weights import border_weight_map


@pytest.fixture(scope="module")
def slice_():
    block = generate_volume(SyntheticSpec(shape=(1, 128, 128), cell_yx=24, seed=2))
    label = block.labels[0]
    return block.image[0], label, border_weight_map(label)


def test_config_is_frozen_and_strict():
    cfg = AugmentConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.mode = "affine"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        AugmentConfig(displacement=3)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        AugmentConfig(grid_size=2)
    for name, field in AugmentConfig.model_fields.items():
        assert field.description, name


def test_folding_config_is_refused_with_a_clear_message():
    AugmentConfig().check_shape((512, 512))  # ISBI defaults are fine
    with pytest.raises(ValueError, match=r"max_displacement_px=40.0 would fold 128x128"):
        AugmentConfig(max_displacement_px=40).check_shape((128, 128))
    with pytest.raises(ValueError, match="would fold"):
        augment_sample(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8),
                       np.zeros((64, 64), np.float32), np.random.default_rng(0), AugmentConfig())


@pytest.mark.parametrize("k", [4, 5, 8])
def test_displacement_limit_does_not_fold_but_twice_it_does(k):
    shape = (256, 256)
    rng = np.random.default_rng(k)
    limit = AugmentConfig(grid_size=k).handle_spacing(shape) * MAX_DISPLACEMENT_FRACTION
    worst_ok, worst_big = np.inf, np.inf
    for mode in MODES:
        for _ in range(6):
            for d, big in ((limit, False), (2 * limit, True)):
                p, q = random_handles(shape, rng, AugmentConfig(grid_size=k, max_displacement_px=d,
                                                                mode=mode))
                j = min_jacobian(*backward_map(p, q, shape, mode, grid_step=8))
                if big:
                    worst_big = min(worst_big, j)
                else:
                    worst_ok = min(worst_ok, j)
    assert worst_ok > 0
    assert worst_big < 0


def test_same_seed_same_sample_and_inputs_untouched(slice_):
    image, label, weight = slice_
    copies = [a.copy() for a in slice_]
    cfg = AugmentConfig(max_displacement_px=7)
    a = augment_sample(image, label, weight, np.random.default_rng(5), cfg)
    b = augment_sample(image, label, weight, np.random.default_rng(5), cfg)
    c = augment_sample(image, label, weight, np.random.default_rng(6), cfg)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    for orig, copy in zip(slice_, copies, strict=True):
        assert np.array_equal(orig, copy)
    assert a[0].dtype == np.uint8 and a[1].dtype == np.uint8 and a[2].dtype == np.float32
    assert set(np.unique(a[1])) <= set(np.unique(label))
    assert set(np.unique(a[2])) <= set(np.unique(weight))  # nearest: no new weight values


def test_no_randomness_configured_is_identity(slice_):
    cfg = AugmentConfig(max_displacement_px=0, flip=False, rotate90=False, gamma_max=1.0,
                        contrast_max_change=0.0, noise_std_max=0.0)
    out = augment_sample(*slice_, np.random.default_rng(0), cfg)
    for x, y in zip(out, slice_, strict=True):
        assert np.array_equal(x, y)


def test_geometry_applies_to_all_three_and_rectangular_shape_kept():
    # image == label (as uint8) so after a geometry-only augmentation nearest and bilinear agree
    # wherever the label is locally constant.
    label = np.zeros((64, 96), np.uint8)
    label[10:30, 20:70] = 255
    weight = (label / 255.0).astype(np.float32)
    cfg = AugmentConfig(max_displacement_px=3, gamma_max=1.0, contrast_max_change=0.0,
                        noise_std_max=0.0)
    for seed in range(8):
        img, lab, wgt = augment_sample(label, label, weight, np.random.default_rng(seed), cfg)
        assert img.shape == lab.shape == wgt.shape == (64, 96)
        assert np.array_equal(wgt * 255, lab.astype(np.float32))
        assert np.mean(img == lab) > 0.95
