"""Issue 10's correctness defects: d4 TTA, blending weight near tile edges, context vs receptive field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet.blending import blend_window, edge_weight_fraction, min_context
from unet.blocks import Region, plan_blocks
from unet.infer_config import InferConfig, fit_to_volume
from unet.inference import BlockPredictor, mirror_pad
from unet.model import UNet, UNetConfig, receptive_field_radius
from unet.predictor import ModelPredictor
from unet.tta import apply_view, tta_average, undo_view, views


class _Asymmetric(torch.nn.Module):
    """A model with no symmetry at all: a fixed random 5x5 filter plus a ramp along x."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x)
        return self.conv(x) + ramp


def test_d4_has_eight_distinct_views_each_undone_exactly() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    seen = {tuple(apply_view(x, k, f).flatten().tolist()) for k, f in views("d4")}
    assert len(seen) == 8  # the old list repeated the transpose and missed the anti-transpose
    for k, f in views("d4"):
        assert torch.equal(undo_view(apply_view(x, k, f), k, f), x)
    assert len(set(views("flips"))) == 4


@pytest.mark.parametrize("k,flip", [(k, f) for k in range(4) for f in (False, True)])
def test_d4_average_is_invariant_under_the_dihedral_group(k: int, flip: bool) -> None:
    model = _Asymmetric().eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(x)
        avg = tta_average(model, x, "d4")
        moved = tta_average(model, apply_view(x, k, flip), "d4")
    assert not torch.allclose(avg, plain, atol=1e-3)  # the model is not symmetric: TTA changes it
    torch.testing.assert_close(moved, apply_view(avg, k, flip), atol=1e-5, rtol=0)


def test_model_predictor_d4_matches_the_shared_tta() -> None:
    model = _Asymmetric()
    cfg = InferConfig(tile=(16, 16), overlap=(0, 0), tta="d4", device="cpu")
    batch = torch.rand(1, 1, 16, 16) * 255
    got = ModelPredictor(model, cfg, n_classes=1)(batch)
    with torch.no_grad():
        want = tta_average(lambda t: torch.sigmoid(model(t)), batch / 255, "d4")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def _interior_block(cfg: InferConfig) -> tuple[tuple[int, int], Region]:
    shape = (1, *(3 * b for b in cfg.block_shape[1:]))
    block = plan_blocks(shape, (1, *cfg.block_shape[1:]), cfg.halo, (1, *cfg.tile))[4]
    w = block.write_in_padded
    return block.padded_shape[1:], Region(w.start[1:], w.stop[1:])  # type: ignore[return-value]


def test_default_blending_takes_under_2_percent_weight_from_tile_edges() -> None:
    cfg = InferConfig()
    plane, write = _interior_block(cfg)
    share = edge_weight_fraction(plane, write, cfg.tile, cfg.overlap, cfg.blend, margin=8)
    assert share.shape == write.shape and share.max() <= 0.02
    # The old defaults (Gaussian floored at 1e-3, overlap 64, halo 32) broke the bound badly.
    old = InferConfig(tile=(512, 512), overlap=(64, 64), halo=(0, 32, 32), block_shape=(4, 1792, 1792),
                      chunks=(1, 256, 256), blend="gaussian")
    plane, write = _interior_block(old)
    assert edge_weight_fraction(plane, write, old.tile, old.overlap, old.blend, margin=8).max() > 0.1


def test_gaussian_window_floor_no_longer_flattens_tile_edges() -> None:
    w = blend_window((512, 512), "gaussian")
    assert w[0, 0] < 1e-5 and w[8, 256] < w[64, 256] < w[256, 256]


@pytest.mark.parametrize("depth", [2, 3])
def test_receptive_field_radius_matches_the_gradient(depth: int) -> None:
    cfg = UNetConfig(depth=depth, base_channels=1, norm="none")
    model = UNet(cfg).double()
    with torch.no_grad():
        for p in model.parameters():  # positive weights: every ReLU passes, no gradient vanishes
            p.copy_(torch.rand_like(p) * 0.5 + 0.1)
    radius = 0
    n = 128
    for c in range(64, 64 + cfg.divisor):  # every phase of the pooling grid
        x = torch.ones(1, 1, n, n, dtype=torch.float64, requires_grad=True)
        model(x)[0, 0, c, c].backward()
        ys, xs = torch.nonzero(x.grad[0, 0] != 0, as_tuple=True)  # type: ignore[index]
        radius = max(radius, c - int(ys.min()), int(ys.max()) - c, c - int(xs.min()), int(xs.max()) - c)
    assert radius == receptive_field_radius(cfg)


def test_default_geometry_covers_the_default_models_receptive_field() -> None:
    cfg, model = InferConfig(), UNetConfig()
    assert receptive_field_radius(model) == 107
    assert cfg.context_px() >= receptive_field_radius(model)
    assert cfg.tile_efficiency() >= 0.8
    strides = [t - o for t, o in zip(cfg.tile, cfg.overlap, strict=True)]
    assert all(v % model.divisor == 0 for v in (*cfg.block_shape[1:], *cfg.halo[1:], *cfg.tile, *strides))
    plane, write = _interior_block(cfg)
    assert min_context(plane, write, cfg.tile, cfg.overlap, cfg.blend) == cfg.context_px()


def _computed_over_written(cfg: InferConfig, shape: tuple[int, int, int]) -> float:
    from unet.tiling import block_tiles

    cfg = fit_to_volume(cfg, shape)
    blocks = plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    tiles = sum(len(block_tiles(b.padded_shape, b.write_in_padded, cfg).tiles) for b in blocks)
    return tiles * cfg.tile[0] * cfg.tile[1] / (shape[1] * shape[2])


def test_small_volumes_get_a_tile_that_fits_them() -> None:
    cfg = InferConfig()
    # the plane plus its mirrored halo (512 + 2 x 112) in one tile, not 2 x 2 tiles of 512²
    assert fit_to_volume(cfg, (30, 512, 512)).tile == (768, 768)
    assert fit_to_volume(cfg, (30, 500, 9000)).tile == (768, cfg.tile[1])
    assert fit_to_volume(cfg, (3, 3000, 3000)).tile == (1792, 1792)  # 2 x 2 tiles, as small as cover it
    # voxels computed per voxel written: 4.0 (512²), 4.0 (2048²) and 2.9 (3000²) with the old fit
    assert _computed_over_written(cfg, (1, 512, 512)) == 768**2 / 512**2
    assert _computed_over_written(cfg, (1, 2048, 2048)) < 1.3
    assert _computed_over_written(cfg, (1, 3000, 3000)) < 1.45
    assert _computed_over_written(cfg, (1, 4672, 4672)) == _computed_over_written(cfg, (1, 9344, 9344))
    big = fit_to_volume(cfg, (3, 9344, 9344))
    assert big.tile == cfg.tile and big.block_shape == cfg.block_shape  # blocks tile it exactly
    assert fit_to_volume(cfg, (3, 8000, 8000)).pyramid_levels == 3  # 8000 → 4000 → 2000 → 1000: fits 1024
    assert fit_to_volume(cfg, (3, 900, 600)).pyramid_levels == 0
    assert fit_to_volume(cfg.model_copy(update={"pyramid_levels": 1}), (3, 8000, 8000)).pyramid_levels == 1


def louder(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every parameter x 2.5: a default-initialised net barely reacts to context."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.5)
    return model


# Halo and overlap / 2 (24 px) cover a depth-3 U-Net's receptive field (23 px); tiles on its grid.
CONTEXT_CFG = InferConfig(tile=(96, 96), overlap=(48, 48), halo=(0, 24, 24), block_shape=(1, 48, 48),
                          chunks=(1, 16, 16), batch_size=4, device="cpu")


def blockwise_probabilities(model: torch.nn.Module, cfg: InferConfig, vol: np.ndarray) -> np.ndarray:
    """The engine's float32 prediction of ``vol`` (z, y, x uint8), block by block, as it stitches it."""
    engine = BlockPredictor(ModelPredictor(model, cfg, 1), cfg)
    out = np.zeros(vol.shape, np.float32)
    for b in plan_blocks(vol.shape, cfg.block_shape, cfg.halo, (1, *cfg.tile)):
        padded = torch.from_numpy(mirror_pad(vol[b.read.slices], b))
        out[b.write.slices] = engine.probabilities(padded, b).numpy()
    return out


def test_blockwise_equals_the_whole_slice_when_context_covers_the_receptive_field() -> None:
    """A real (small) U-Net: with halo and overlap/2 >= its receptive field and tiles on its pooling
    grid, cropped blockwise output equals the model run on the whole slice (away from the volume
    border, where the two pad differently), to float rounding."""
    torch.manual_seed(0)
    mcfg = UNetConfig(depth=3, base_channels=4, norm="none")
    model = louder(UNet(mcfg).eval())
    r = receptive_field_radius(mcfg)  # 23
    vol = np.random.default_rng(0).integers(0, 256, (1, 192, 192)).astype(np.uint8)
    out = blockwise_probabilities(model, CONTEXT_CFG, vol)
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.from_numpy(vol[None].astype(np.float32)) / 255))[0, 0].numpy()
    inner = (slice(r, -r), slice(r, -r))
    exact = np.abs(out[0][inner] - whole[inner]).max()
    assert exact < 1e-5 and whole[inner].std() > 0.01
    # And with too little context (the old defaults' situation) it does not:
    thin = CONTEXT_CFG.model_copy(update={"tile": (32, 32), "overlap": (8, 8), "halo": (0, 8, 8)})
    assert thin.context_px() < r
    out = blockwise_probabilities(model, thin, vol)
    assert np.abs(out[0][inner] - whole[inner]).max() > 100 * max(exact, 1e-6)


def test_fitted_tiles_never_cost_more_than_the_configured_ones() -> None:
    """Over plane sizes from tiny to several blocks: the fitted tile is a multiple of 128, at most
    the configured one, its context still covers the default U-Net, and the plane computes no more
    voxels than with the configured tile and blocks."""
    base = InferConfig(device="cpu")
    r = receptive_field_radius(UNetConfig())
    for n in (40, 200, 700, 1500, 2337, 2500, 4000, 4672, 5000, 7000, 10000):
        shape = (1, n, n)
        fitted = fit_to_volume(base, shape)
        assert fitted.tile[0] % 128 == 0 and fitted.tile[0] <= base.tile[0]
        unfitted = base.model_copy(update={"pyramid_levels": fitted.pyramid_levels})
        (cost, most), (cost_configured, _) = _tiles_computed(fitted, shape), _tiles_computed(unfitted, shape)
        assert cost <= cost_configured, n
        if most > 1:  # stitched tiles: every written pixel keeps the model's context
            assert fitted.context_px() >= r, n


def _tiles_computed(cfg: InferConfig, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(voxels the tiles of every block of ``shape`` compute, most tiles in one block) under ``cfg``
    as it stands (not fitted again)."""
    from unet.tiling import block_tiles

    blocks = plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    counts = [len(block_tiles(b.padded_shape, b.write_in_padded, cfg).tiles) for b in blocks]
    return sum(counts) * cfg.tile[0] * cfg.tile[1], max(counts)


@pytest.mark.parametrize("tile,overlap,halo,block", [(64, 16, 8, 96), (64, 0, 0, 64), (48, 32, 16, 80),
                                                     (32, 6, 5, 100), (128, 96, 40, 64)])
def test_crop_context_along_axes_equals_the_per_pixel_audit(tile: int, overlap: int, halo: int,
                                                             block: int) -> None:
    from unet.blending import _min_context_per_pixel

    cfg = InferConfig(tile=(tile, tile + 16), overlap=(overlap, overlap // 2), halo=(0, halo, halo + 3),
                      block_shape=(1, block, block + 8), chunks=(1, 1, 1), blend="crop")
    plane, write = _interior_block(cfg)
    per_pixel = _min_context_per_pixel(plane, write, cfg.tile, cfg.overlap, "crop", 0.02)
    assert min_context(plane, write, cfg.tile, cfg.overlap, "crop") == per_pixel == cfg.context_px()
