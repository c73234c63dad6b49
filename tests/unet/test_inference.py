"""Streaming inference: exact stitching with arithmetic predictors, bounded memory, resume, refusals."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.errors import IncompleteStoreError, StoreExistsError, StoreNotFoundError
from storage.prediction import PredictionMismatchError, open_prediction_for_blocks
from storage.volume import create_volume, open_volume
from unet.blocks import plan_blocks
from unet.inference import (
    AffinePredictor,
    InferConfig,
    InFlightMeter,
    ModelPredictor,
    block_bytes,
    infer_volume,
    mirror_pad,
    predict_block,
    prepare_run,
    run_group,
    stream_blocks,
)

REPO = Path(__file__).resolve().parents[2]
# x / 255 then back to uint8 is the identity: the output must equal the input voxel for voxel.
IDENTITY = functools.partial(AffinePredictor, 1 / 255)


def make_volume(path: Path, shape: tuple[int, int, int], seed: int = 0) -> str:
    data = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    w = create_volume(path, shape, np.uint8, (40, 4, 4))
    w.write(0, data)
    w.mark_complete()
    return str(path)


def small_cfg(**kw: object) -> InferConfig:
    base = dict(tile=(16, 16), overlap=(4, 4), halo=(0, 4, 4), block_shape=(2, 16, 16), chunks=(1, 8, 8),
                batch_size=3, blend="crop")
    base.update(kw)
    return InferConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(3, 37, 29), (1, 5, 7), (2, 16, 16)])
@pytest.mark.parametrize("blend", ["crop", "gaussian", "constant"])
def test_stitching_is_exact_with_an_arithmetic_predictor(shape: tuple[int, int, int], blend: str) -> None:
    vol = np.random.default_rng(1).integers(0, 200, shape).astype(np.float32)
    cfg = small_cfg(blend=blend)
    out = np.full(shape, np.nan, np.float32)
    for b in plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile)):
        out[b.write.slices] = predict_block(mirror_pad(vol[b.read.slices], b), b, lambda x: x + 1, cfg)
    if blend == "crop":
        assert np.array_equal(out, vol + 1)
    else:
        np.testing.assert_allclose(out, vol + 1, rtol=0, atol=1e-3)


def test_tiles_see_real_neighbours_not_padding_inside_the_volume() -> None:
    # A predictor that reports each tile's mean: with real halo data, every interior
    # block's result depends on neighbours; check against tiles cut from the whole plane.
    shape = (1, 40, 40)
    vol = np.random.default_rng(2).integers(0, 200, shape).astype(np.float32)
    cfg = small_cfg(blend="crop", block_shape=(1, 8, 8), halo=(0, 4, 4))

    def mean_pred(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()

    blocks = plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    interior = blocks[2 * 5 + 2]  # write [16, 24) x [16, 24): read [12, 28) exactly one tile
    assert interior.pad == ((0, 0), (0, 0), (0, 0))
    got = predict_block(mirror_pad(vol[interior.read.slices], interior), interior, mean_pred, cfg)
    assert np.allclose(got, vol[0, 12:28, 12:28].mean())


def test_whole_engine_reproduces_the_input_and_records_every_block(tmp_path: Path) -> None:
    src = make_volume(tmp_path / "in.zarr", (5, 40, 33))
    out = tmp_path / "pred.zarr"
    cfg = small_cfg(blend="gaussian", pyramid_levels=1, blocks_per_group=4)
    summary = infer_volume(src, str(out), IDENTITY, "affine", cfg)
    pred = open_volume(out)
    assert pred.is_complete and pred.shape == (5, 40, 33) and pred.dtype == np.uint8
    assert pred.voxel_size.as_tuple() == (40, 4, 4)
    assert np.array_equal(pred.read(slice(None)), open_volume(src).read(slice(None)))
    assert pred.levels == ["s0", "s1"] and pred.level(1).shape == (5, 20, 16)
    assert summary["voxels"] == 5 * 40 * 33 and summary["blocks"] == 3 * 3 * 3
    ident = pred.attrs["inference"]
    assert ident["model_sha256"] == "affine" and ident["config"]["tile"] == [16, 16]
    assert "batch_size" not in ident["config"]  # execution-only: may change between resumes


def test_memory_stays_bounded_on_a_volume_many_times_the_buffer(tmp_path: Path) -> None:
    shape = (20, 32, 32)  # 80 blocks of (1, 16, 16): 20x the configured depth of 4 blocks
    cfg = small_cfg(block_shape=(1, 16, 16), prefetch_blocks=2, write_threads=1, read_threads=2)
    blocks = plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    vol = np.random.default_rng(3).integers(0, 255, shape).astype(np.uint8)
    out = np.zeros(shape, np.uint8)
    meter = InFlightMeter()
    live_reads = 0
    max_live = 0

    def read(b):  # noqa: ANN001, ANN202
        nonlocal live_reads, max_live
        live_reads += 1
        max_live = max(max_live, live_reads)
        return mirror_pad(vol[b.read.slices], b)

    def compute(b, data):  # noqa: ANN001, ANN202
        nonlocal live_reads
        live_reads -= 1
        return np.rint(predict_block(data, b, lambda x: x, cfg)).astype(np.uint8)

    def slow_write(b, data):  # noqa: ANN001, ANN202
        time.sleep(0.002)  # writes slower than compute: back-pressure must hold the reads
        out[b.write.slices] = data

    n = stream_blocks(blocks, read, compute, slow_write, prefetch=2, read_threads=2, write_threads=1,
                      meter=meter)
    assert n == len(blocks) == 80
    assert np.array_equal(out, vol)
    bound = cfg.prefetch_blocks + 1 + cfg.write_threads
    assert 2 <= meter.max_blocks <= bound
    assert meter.max_bytes <= bound * max(block_bytes(b) for b in blocks)
    assert meter.max_bytes < sum(block_bytes(b) for b in blocks) / 10
    assert meter.blocks == 0 and meter.bytes == 0
    assert max_live <= cfg.prefetch_blocks + 1


def test_errors_in_any_stage_propagate() -> None:
    blocks = plan_blocks((4, 16, 16), (1, 16, 16))

    def bad_write(b, data):  # noqa: ANN001, ANN202
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        stream_blocks(blocks, lambda b: np.zeros(b.padded_shape), lambda b, d: d, bad_write)


def test_rerun_skips_finished_blocks(tmp_path: Path) -> None:
    src = make_volume(tmp_path / "in.zarr", (4, 32, 32))
    out = str(tmp_path / "pred.zarr")
    cfg = small_cfg()
    run = prepare_run(src, out, IDENTITY, "affine", cfg)
    assert run.n_blocks == 2 * 2 * 2
    run_group(run.job, [0, 3])  # a "previous run" finished two blocks
    assert open_prediction_for_blocks(out).pending() == [1, 2, 4, 5, 6, 7]

    calls = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x / 255

    summary = infer_volume(src, out, lambda: counting, "affine", cfg)
    assert summary["blocks_run"] == 6
    tiles_per_block = 2 * 4  # 2 slices x (2 x 2 tiles of 16 in a padded 24 x 24 block)
    assert sum(calls) == 6 * tiles_per_block
    assert np.array_equal(open_volume(out).read(slice(None)), open_volume(src).read(slice(None)))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_run_resumes_to_byte_identical_output(tmp_path: Path) -> None:
    src = make_volume(tmp_path / "in.zarr", (8, 48, 48))
    cfg = small_cfg(block_shape=(1, 16, 16), blend="gaussian")
    reference = tmp_path / "reference.zarr"
    infer_volume(src, str(reference), IDENTITY, "affine", cfg)

    out = tmp_path / "pred.zarr"
    script = textwrap.dedent(f"""
        import functools
        from unet.inference import AffinePredictor, InferConfig, infer_volume
        cfg = InferConfig.model_validate_json({cfg.model_dump_json()!r})
        infer_volume({src!r}, {str(out)!r}, functools.partial(AffinePredictor, 1 / 255, 0.0, 0.05),
                     "affine", cfg)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and done < 5:
            time.sleep(0.1)
            try:
                done = 72 - len(open_prediction_for_blocks(out).pending())
            except (StoreNotFoundError, KeyError, FileNotFoundError, ValueError):
                continue
        assert 5 <= done < 72, f"killed too late or never started: {done} blocks done"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not open_volume(out, require_complete=False).is_complete
    with pytest.raises(IncompleteStoreError):
        open_volume(out)

    infer_volume(src, str(out), IDENTITY, "affine", cfg.model_copy(update={"batch_size": 5}))
    assert open_volume(out).is_complete
    ref_files = _files(reference / "s0")
    assert ref_files == _files(out / "s0")
    assert len(ref_files) > 1


def test_refusals_before_any_write(tmp_path: Path) -> None:
    src = make_volume(tmp_path / "in.zarr", (2, 16, 16))
    out = tmp_path / "pred.zarr"
    with pytest.raises(StoreNotFoundError, match="no volume at"):
        infer_volume(str(tmp_path / "missing.zarr"), str(out), IDENTITY, "affine", small_cfg())
    create_volume(tmp_path / "half.zarr", (2, 16, 16), np.uint8, (1, 1, 1))
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        infer_volume(str(tmp_path / "half.zarr"), str(out), IDENTITY, "affine", small_cfg())
    assert not out.exists()

    prepare_run(src, str(out), IDENTITY, "affine", small_cfg())  # an unfinished run
    with pytest.raises(PredictionMismatchError, match="model_sha256"):
        infer_volume(src, str(out), IDENTITY, "another-model", small_cfg())
    with pytest.raises(PredictionMismatchError, match="config"):
        infer_volume(src, str(out), IDENTITY, "affine", small_cfg(blend="gaussian"))
    infer_volume(src, str(out), IDENTITY, "affine", small_cfg())
    with pytest.raises(StoreExistsError, match="complete prediction already"):
        infer_volume(src, str(out), IDENTITY, "affine", small_cfg())
    infer_volume(src, str(out), IDENTITY, "other", small_cfg(), overwrite=True)
    assert open_volume(out).attrs["inference"]["model_sha256"] == "other"


def test_config_refuses_bad_values_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"overlap must be in \[0, tile\)"):
        InferConfig(tile=(16, 16), overlap=(16, 0))
    with pytest.raises(ValueError, match="multiple of chunks"):
        InferConfig(block_shape=(1, 100, 100), chunks=(1, 64, 64))
    with pytest.raises(ValueError, match="square"):
        InferConfig(tile=(32, 64), overlap=(0, 0), tta="d4")
    with pytest.raises(ValueError, match="extra"):
        InferConfig(tiles=3)  # type: ignore[call-arg]


class _Pointwise(torch.nn.Module):
    """1x1 'model': equivariant to flips and rotations, so TTA must not change its output."""

    def __init__(self, n_classes: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, n_classes, 1)
        torch.nn.init.normal_(self.conv.weight, std=3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_inverts_each_view(tta: str) -> None:
    torch.manual_seed(0)
    model = _Pointwise()
    batch = torch.from_numpy(np.random.default_rng(4).integers(0, 255, (2, 1, 16, 16)).astype(np.float32))
    plain = ModelPredictor(model, InferConfig(tile=(16, 16), overlap=(0, 0)), n_classes=1)(batch)
    aug = ModelPredictor(model, InferConfig(tile=(16, 16), overlap=(0, 0), tta=tta), n_classes=1)(batch)  # type: ignore[arg-type]
    assert plain.shape == (2, 1, 16, 16) and 0 <= plain.min() and plain.max() <= 1
    torch.testing.assert_close(aug, plain, atol=1e-6, rtol=0)


def test_softmax_model_returns_the_membrane_class() -> None:
    torch.manual_seed(0)
    model = _Pointwise(n_classes=3)
    batch = torch.from_numpy(np.random.default_rng(5).integers(0, 255, (1, 1, 8, 8)).astype(np.float32))
    p = [ModelPredictor(model, InferConfig(tile=(8, 8), overlap=(0, 0), membrane_class=c), 3)(batch)
         for c in range(3)]
    torch.testing.assert_close(sum(p), torch.ones_like(p[0]), atol=1e-6, rtol=0)
    assert not torch.allclose(p[0], p[1])


def test_checkpoint_problems_are_clear_errors(tmp_path: Path) -> None:
    from unet.checkpoint import CheckpointError, save_checkpoint
    from unet.inference import load_predictor
    from unet.model import UNet, UNetConfig

    mcfg = UNetConfig(depth=3, base_channels=2, n_classes=2, norm="none")
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, UNet(mcfg), mcfg)
    pred = load_predictor(str(ckpt), InferConfig(tile=(16, 16), overlap=(4, 4), membrane_class=1))
    out = pred(torch.zeros((2, 1, 16, 16)))
    assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"tile \(18, 18\) must be a multiple of 4"):
        load_predictor(str(ckpt), InferConfig(tile=(18, 18), overlap=(4, 4)))
    with pytest.raises(ValueError, match="membrane_class 2 does not exist in a model with 2 classes"):
        load_predictor(str(ckpt), InferConfig(tile=(16, 16), overlap=(4, 4), membrane_class=2))
    with pytest.raises(ValueError, match="halo z must be 0"):
        load_predictor(str(ckpt), InferConfig(tile=(16, 16), overlap=(4, 4), halo=(1, 4, 4)))
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_predictor(str(tmp_path / "missing.pt"), InferConfig())
    (tmp_path / "bad.pt").write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_predictor(str(tmp_path / "bad.pt"), InferConfig())


def test_blockwise_pyramid_equals_the_whole_volume_pyramid(tmp_path: Path) -> None:
    """Levels written block by block (downsampled with each block) are the bytes build_pyramid
    makes from the whole level 0; levels the blocks cannot own alone are built at the end."""
    from storage.volume import build_pyramid, open_volume_for_update
    from unet.inference import blockwise_levels

    src = make_volume(tmp_path / "in.zarr", (2, 70, 61))
    cfg = small_cfg(block_shape=(1, 32, 32), chunks=(1, 8, 8), pyramid_levels=3, blend="gaussian")
    out = tmp_path / "pred.zarr"
    infer_volume(src, str(out), IDENTITY, "affine", cfg)
    pred = open_volume(out)
    assert pred.attrs["blockwise_pyramid_levels"] == 2  # 32 >> 3 = 4 is half a level-3 chunk of 8
    levels = [np.asarray(pred.level(i)[:]) for i in range(4)]
    np.testing.assert_array_equal(levels[0], open_volume(src).read(slice(None)))
    # The reference: the same level 0, pyramid built whole by build_pyramid.
    ref = create_volume(tmp_path / "ref.zarr", (2, 70, 61), np.uint8, (40, 4, 4), chunks=(1, 8, 8),
                        pyramid_levels=3)
    ref.write(0, levels[0])
    build_pyramid(open_volume_for_update(tmp_path / "ref.zarr"), method="mean")
    for i in range(1, 4):
        np.testing.assert_array_equal(levels[i], np.asarray(ref.level(i)[:]), err_msg=f"level {i}")
    assert blockwise_levels((1, 9344, 9344), (1, 4672, 4672), [(1, 584, 584)] * 5) == 3
    assert blockwise_levels((1, 4000, 4000), (1, 4672, 4672), [(1, 584, 584)] * 5) == 4  # one block
