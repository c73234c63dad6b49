"""MLS warping: exactness on known transforms, the fast form against the formulas, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from unet.mls import (
    MODES,
    backward_map,
    handle_grid,
    min_jacobian,
    mls_points,
    mls_points_reference,
    remap,
    warp,
)


def random_handles(shape=(512, 512), k=5, d=15.0, seed=0):
    rng = np.random.default_rng(seed)
    p, border = handle_grid(shape, k)
    q = p.copy()
    q[~border] += rng.uniform(-d, d, size=(int((~border).sum()), 2))
    return p, q


def rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, s], [-s, c]])


@pytest.fixture
def image_label():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(96, 128), dtype=np.uint8)
    label = np.where(rng.random((96, 128)) < 0.3, 0, 255).astype(np.uint8)
    return image, label


@pytest.mark.parametrize("engine", ["cv2", "scipy"])
@pytest.mark.parametrize("mode", MODES)
def test_zero_displacement_is_identity_exactly(image_label, mode, engine):
    image, label = image_label
    p, _ = handle_grid(image.shape, 4)
    weight = np.linspace(0, 3, image.size, dtype=np.float32).reshape(image.shape)
    out_i, out_l, out_w = warp(image, label, weight, p, p.copy(), mode, engine=engine)
    assert np.array_equal(out_i, image)
    assert np.array_equal(out_l, label)
    assert np.array_equal(out_w, weight)


@pytest.mark.parametrize("mode", MODES)
def test_fast_form_matches_formulas(mode):
    p, q = random_handles(seed=3)
    v = np.random.default_rng(4).uniform(-20, 530, size=(3000, 2))
    assert np.abs(mls_points(p, q, v, mode) - mls_points_reference(p, q, v, mode)).max() < 1e-8


def test_global_affine_is_reproduced():
    p, _ = random_handles(seed=5)
    a = np.array([[1.05, 0.08], [-0.04, 0.93]])
    t = np.array([3.5, -7.25])
    q = p @ a + t
    v = np.random.default_rng(6).uniform(0, 511, size=(2000, 2))
    assert np.abs(mls_points(p, q, v, "affine") - (v @ a + t)).max() < 1e-8
    # The backward map is the inverse affine; bilinear upsampling of an affine map is exact.
    my, mx = backward_map(p, q, (512, 512), "affine", grid_step=8)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float64)
    src = (np.stack([yy.ravel(), xx.ravel()], 1) - t) @ np.linalg.inv(a)
    assert np.abs(my.ravel() - src[:, 0]).max() < 2e-3
    assert np.abs(mx.ravel() - src[:, 1]).max() < 2e-3


@pytest.mark.parametrize("mode", MODES)
def test_rigidly_moved_grid_stays_rigid(mode):
    p, _ = random_handles(seed=7)
    r, t = rotation(0.3), np.array([12.0, -4.0])
    q = p @ r + t
    v = np.random.default_rng(8).uniform(0, 511, size=(500, 2))
    f = mls_points(p, q, v, mode)
    assert np.abs(f - (v @ r + t)).max() < 1e-8
    # pairwise distances preserved
    dv = np.linalg.norm(v[:, None] - v[None], axis=-1)
    df = np.linalg.norm(f[:, None] - f[None], axis=-1)
    assert np.abs(dv - df).max() < 1e-7


def test_similarity_reproduces_scaled_rotation():
    p, _ = random_handles(seed=9)
    a, t = 1.1 * rotation(-0.2), np.array([0.5, 2.0])
    q = p @ a + t
    v = np.random.default_rng(10).uniform(0, 511, size=(500, 2))
    assert np.abs(mls_points(p, q, v, "similarity") - (v @ a + t)).max() < 1e-8


@pytest.mark.parametrize("k", [4, 5])
@pytest.mark.parametrize("mode", MODES)
def test_coarse_map_error_below_half_pixel(mode, k):
    p, q = random_handles(k=k, d=15.0, seed=11 + k)
    fy, fx = backward_map(p, q, (512, 512), mode, grid_step=1)
    cy, cx = backward_map(p, q, (512, 512), mode, grid_step=8)
    err = np.hypot(fy - cy, fx - cx)
    assert err.max() < 0.5
    assert err.mean() < 0.05


@pytest.mark.parametrize("engine", ["cv2", "scipy"])
def test_labels_keep_value_set_and_image_is_interpolated(engine):
    rng = np.random.default_rng(12)
    image = rng.integers(0, 256, size=(128, 128), dtype=np.uint8)
    label = rng.choice(np.array([3, 7, 200], dtype=np.uint8), size=(128, 128))
    p, q = random_handles((128, 128), k=4, d=8.0, seed=13)
    out_i, out_l, _ = warp(image, label, None, p, q, "rigid", engine=engine)
    assert set(np.unique(out_l)) <= {3, 7, 200}
    assert out_l.dtype == np.uint8 and out_i.dtype == np.uint8
    # bilinear sampling creates grey values that were not in a binary image
    binary = np.where(image > 127, 255, 0).astype(np.uint8)
    out_b, _, _ = warp(binary, label, None, p, q, "rigid", engine=engine)
    assert len(np.unique(out_b)) > 2


def test_cv2_and_scipy_paths_agree(image_label):
    image, label = image_label
    p, q = random_handles(image.shape, k=4, d=6.0, seed=14)
    a = warp(image, label, None, p, q, "similarity", engine="cv2")
    b = warp(image, label, None, p, q, "similarity", engine="scipy")
    diff = np.abs(a[0].astype(int) - b[0].astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8  # cv2 quantises weights to 1/32 px
    assert (a[1] == b[1]).mean() > 0.99  # nearest: only exact ties may round differently


def test_outside_coordinates_reflect():
    rng = np.random.default_rng(15)
    label = rng.integers(0, 5, size=(64, 64), dtype=np.uint8)
    p, _ = handle_grid((64, 64), 3)
    q = p + np.array([0.0, 10.0])  # everything moves 10 px right: pixel x comes from x - 10
    _, out, _ = warp(label, label, None, p, q, "rigid")
    xs = np.abs(np.arange(64) - 10)  # reflect about pixel 0 (BORDER_REFLECT_101)
    assert np.array_equal(out, label[:, xs])


def test_point_exactly_on_handle_returns_its_target():
    p, q = random_handles(seed=16)
    for mode in MODES:
        f = mls_points(p, q, p[[0, 6, 12]], mode)
        assert np.array_equal(f, q[[0, 6, 12]])
        assert np.isfinite(mls_points(p, q, p + 1e-9, mode)).all()


def test_affine_collinear_handles_fall_back_to_translation():
    p = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]])
    q = p + np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    v = np.array([[5.0, 0.0], [0.0, 17.0]])
    f = mls_points(p, q, v, "affine")
    assert np.isfinite(f).all()
    d2 = ((v[:, None] - p[None]) ** 2).sum(-1)
    w = 1 / d2
    expected = v - (w @ p) / w.sum(1, keepdims=True) + (w @ q) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(f, expected, atol=1e-9)
    np.testing.assert_allclose(mls_points_reference(p, q, v, "affine"), expected, atol=1e-6)
    # a single handle is a translation in every mode
    for mode in MODES:
        np.testing.assert_allclose(mls_points(p[:1], q[:1], v, mode), v + (q[0] - p[0]), atol=1e-12)


def test_rigid_zero_vector_falls_back_to_translation():
    # q is p mirrored: with equal weights (v at the centre) c = Σ w conj(p̂) q̂ = 0.
    p = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    q = p * np.array([1.0, -1.0]) + np.array([2.0, 3.0])
    f = mls_points(p, q, np.array([[0.0, 0.0]]), "rigid")
    np.testing.assert_allclose(f, [[2.0, 3.0]], atol=1e-12)


def test_bad_handles_are_refused():
    p, q = random_handles()
    with pytest.raises(ValueError, match="shape"):
        mls_points(p[:, :1], q[:, :1], p)
    with pytest.raises(ValueError, match="shape of p"):
        mls_points(p, q[:-1], p)
    with pytest.raises(ValueError, match="mode"):
        mls_points(p, q, p, "projective")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        mls_points(p, q * np.nan, p)
    with pytest.raises(ValueError, match="same shape"):
        warp(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8), None, p, q)


def test_fold_over_is_detected():
    p, q = random_handles((128, 128), k=3, d=0.0)
    my, mx = backward_map(p, q, (128, 128), "affine")
    assert min_jacobian(my, mx) == pytest.approx(1.0)
    p, q = random_handles((128, 128), k=4, d=0.0)
    q[[5, 6]] = p[[6, 5]]  # two neighbouring handles swap places: the map must fold
    my, mx = backward_map(p, q, (128, 128), "affine")
    assert min_jacobian(my, mx) < 0


def test_remap_refuses_bad_order():
    with pytest.raises(ValueError, match="order"):
        remap(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32),
              order=3)  # type: ignore[arg-type]
