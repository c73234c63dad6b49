"""U-Net border weight maps against a brute-force evaluation of the formula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from storage.synthetic import SyntheticSpec, generate_volume
from unet.weights import border_weight_map


def brute_force(label, interior_value=255, w0=10.0, sigma=5.0):
    """Every cell's full-image distance transform, sorted per pixel: the formula as written."""
    interior = label == interior_value
    cells, n = ndimage.label(interior)
    dists = np.stack([ndimage.distance_transform_edt(cells != i) for i in range(1, n + 1)])
    dists.sort(axis=0)
    d1 = dists[0]
    d2 = dists[1] if n > 1 else np.full(label.shape, np.inf)
    frac = interior.mean()
    wc = np.where(interior, 0.5 / frac, 0.5 / (1 - frac))
    border = np.where(interior, 0.0, w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)))
    return wc + border


def test_matches_brute_force_on_synthetic_slice():
    label = generate_volume(SyntheticSpec(shape=(1, 96, 96), cell_yx=24, seed=3)).labels[0]
    w = border_weight_map(label)
    assert w.dtype == np.float32 and w.shape == label.shape
    np.testing.assert_allclose(w, brute_force(label), atol=1e-5, rtol=1e-5)


def test_two_cells_and_a_membrane_by_hand():
    label = np.full((20, 21), 255, np.uint8)
    label[:, 10] = 0  # a 1-px membrane between two cells
    w = border_weight_map(label, w0=10.0, sigma=5.0)
    frac = (label == 255).mean()
    # membrane pixel: 1 px from each cell, so d1 + d2 = 2
    assert w[5, 10] == pytest.approx(0.5 / (1 - frac) + 10 * np.exp(-4 / 50), rel=1e-6)
    assert w[5, 3] == pytest.approx(0.5 / frac, rel=1e-6)  # interior: class weight only
    # both classes carry half of the total weight
    assert w[label == 255].sum() == pytest.approx((0.5 / frac) * (label == 255).sum())
    assert border_weight_map(label, class_balance=False)[5, 3] == 1.0


def test_polarity_is_a_parameter():
    label = generate_volume(SyntheticSpec(shape=(1, 64, 64), cell_yx=20, seed=1)).labels[0]
    inverted = np.where(label == 255, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(border_weight_map(inverted, interior_value=0), border_weight_map(label))


def test_single_cell_has_no_border_term_and_bad_input_is_refused():
    label = np.full((16, 16), 255, np.uint8)
    label[0, :] = 0
    w = border_weight_map(label)
    assert np.unique(w[0]).size == 1  # no second cell: class weight only
    with pytest.raises(ValueError, match="2-D"):
        border_weight_map(label[None])
    with pytest.raises(ValueError, match="sigma"):
        border_weight_map(label, sigma=0)
