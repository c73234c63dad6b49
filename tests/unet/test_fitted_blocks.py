"""Write blocks fitted to the volume: planes the configured block does not divide get equal blocks
with tiles fitted to them, never more computation, and the engine's output stays exact."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from storage.volume import build_pyramid, create_volume, open_volume, open_volume_for_update
from unet.infer_config import InferConfig, fit_to_volume
from unet.inference import AffinePredictor, infer_volume

from .test_context import _computed_over_written, _tiles_computed
from .test_inference import make_volume


def test_planes_the_block_does_not_divide_compute_less() -> None:
    """Every square plane from 4000² to 40000² in steps of 97: never more voxels computed than with
    the configured blocks, the same blocks where they divide the plane, and fitted blocks aligned
    (multiples of 64 and of their chunk, as many chunks per block as configured)."""
    cfg = InferConfig(device="cpu")
    fitted_any = 0
    for n in range(4000, 40000, 97):
        shape = (1, n, n)
        fitted = fit_to_volume(cfg, shape)
        configured = _configured_blocks(cfg, shape)
        assert _tiles_computed(fitted, shape)[0] <= _tiles_computed(configured, shape)[0], n
        b, c = fitted.block_shape[1], fitted.chunks[1]
        assert b <= cfg.block_shape[1] and b % 64 == 0 and b % c == 0 and b // c == 8, n
        assert fitted.tile[0] % 128 == 0, n
        fitted_any += b != cfg.block_shape[1]
    assert fitted_any > 150  # 167 of the 371 sizes; the others keep 4672² blocks (their thin last
    # block fits in fewer tiles, or a smaller tile does not cover the plane in as many blocks)
    assert fit_to_volume(cfg, (1, 9344, 9344)).block_shape == cfg.block_shape
    # voxels computed per voxel written (was 2.36, 1.56, 1.64 with 4672² blocks; 1.20 is a multiple)
    assert _computed_over_written(cfg, (1, 5000, 5000)) < 1.55
    assert _computed_over_written(cfg, (1, 8192, 8192)) < 1.3
    assert _computed_over_written(cfg, (1, 10000, 10000)) < 1.35


def _configured_blocks(cfg: InferConfig, shape: tuple[int, int, int]) -> InferConfig:
    """``cfg`` with the configured blocks and only the tile fitted (before blocks were fitted)."""
    from unet.infer_config import fitted_tile

    tile = tuple(fitted_tile(n, b, h, t, o) for n, b, h, t, o in
                 zip(shape[1:], cfg.block_shape[1:], cfg.halo[1:], cfg.tile, cfg.overlap, strict=True))
    overlap = tuple(min(o, t // 2) for o, t in zip(cfg.overlap, tile, strict=True))
    return cfg.model_copy(update={"tile": tile, "overlap": overlap})


def test_d4_keeps_square_tiles_on_a_narrow_volume() -> None:
    fitted = fit_to_volume(InferConfig(tta="d4"), (1, 500, 9000))
    assert fitted.tile[0] == fitted.tile[1] == 2560
    assert fit_to_volume(InferConfig(), (1, 500, 9000)).tile == (768, 2560)  # without d4: narrow ones


def test_engine_with_fitted_blocks_reproduces_the_input_and_its_pyramid(tmp_path: Path) -> None:
    """y (700 px) is fitted: 2 blocks of 384 instead of 640 + 60; x (1300 px) keeps its 640-px blocks
    (the thin last one fits in one tile, which costs less). The zero-cost predictor's output is the
    input, and the pyramid written block by block is the one built from the whole level 0."""
    shape = (1, 700, 1300)
    src = make_volume(tmp_path / "in.zarr", shape, seed=3)
    data = open_volume(src).read(slice(None))
    cfg = InferConfig(tile=(384, 384), overlap=(64, 64), halo=(0, 32, 32), block_shape=(1, 640, 640),
                      chunks=(1, 80, 80), pyramid_levels=2, device="cpu")
    fitted = fit_to_volume(cfg, shape)
    assert fitted.block_shape == (1, 384, 640) and fitted.chunks == (1, 48, 80) and fitted.tile == (256, 384)
    out = tmp_path / "pred.zarr"
    summary = infer_volume(src, str(out), functools.partial(AffinePredictor, 1 / 255), "affine", cfg)
    pred = open_volume(out)
    assert summary["blocks"] == 2 * 3
    assert pred.attrs["inference"]["config"]["block_shape"] == [1, 384, 640]
    level0 = np.asarray(pred.level(0)[:])
    np.testing.assert_array_equal(level0, data)
    ref = create_volume(tmp_path / "ref.zarr", shape, np.uint8, (40, 4, 4), chunks=(1, 48, 80),
                        pyramid_levels=2)
    ref.write(0, level0)
    build_pyramid(open_volume_for_update(tmp_path / "ref.zarr"), method="mean")
    for i in (1, 2):
        np.testing.assert_array_equal(np.asarray(pred.level(i)[:]), np.asarray(ref.level(i)[:]),
                                      err_msg=f"level {i}")
