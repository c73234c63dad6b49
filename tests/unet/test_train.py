"""The training loop on a tiny synthetic training set (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import unet.train as train_mod
from storage.dataset import TrainingSet, create_training_set
from storage.errors import ShapeMismatchError, StoreExistsError
from storage.files import read_jsonl
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import Volume, create_volume
from unet.checkpoint import CheckpointError, load_checkpoint, load_model
from unet.model import UNetConfig
from unet.train import TrainConfig, TrainingDivergedError, ValidationData, lr_factor, train

TINY = UNetConfig(depth=2, base_channels=8, norm="group")


def make_training_set(path: Path, n: int = 8, size: int = 64, seed: int = 1) -> TrainingSet:
    block = generate_volume(SyntheticSpec(shape=(n, size, size), seed=seed, cell_yx=20.0))
    ts = create_training_set(path, n, (size, size), group_size=4, attrs={"source": "synthetic"})
    for g in range(2):
        r = ts.group_range(g)
        ts.write_group(g, block.image[r.start:r.stop], block.labels[r.start:r.stop],
                       np.ones((len(r), size, size), np.float16))
    ts.mark_complete()
    return ts


def make_validation(tmp: Path, z: int = 2, size: int = 64) -> tuple[Volume, Volume]:
    block = generate_volume(SyntheticSpec(shape=(z, size, size), seed=7, cell_yx=20.0))
    vols = []
    for name, data, kind in (("img", block.image, "image"), ("lab", block.labels, "label")):
        w = create_volume(tmp / f"{name}.zarr", data.shape, np.uint8, (50, 4, 4), kind=kind)  # type: ignore[arg-type]
        w.write(0, data)
        vols.append(w.mark_complete())
    return vols[0], vols[1]


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[TrainingSet, ValidationData]:
    ts = make_training_set(tmp_path / "set.zarr")
    image, labels = make_validation(tmp_path)
    return ts, ValidationData.from_volumes(image, labels, (0, 2))


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[-1] == pytest.approx(0.1, abs=0.01)


def test_few_steps_reduce_loss_and_write_run_files(tmp_path: Path, inputs: Any) -> None:
    ts, val = inputs
    cfg = TrainConfig(steps=40, batch_size=4, lr=5e-3, warmup_steps=2, val_every=20, log_every=1,
                      loader_threads=1)
    seen: list[tuple[int, int, dict[str, Any]]] = []
    result = train(ts, val, str(tmp_path / "run"), TINY, cfg,
                   progress=lambda step, total, **m: seen.append((step, total, m)))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    vals = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [20, 40]
    assert 0 <= vals[-1]["v_rand"] <= 1 and vals[-1]["pixel_accuracy"] > 0.5
    assert result.step == 40 and result.best_checkpoint is not None
    assert result.best_metrics["v_rand"] == max(r["v_rand"] for r in vals)
    model, model_cfg = load_model(result.best_checkpoint)
    assert model_cfg == TINY
    assert (tmp_path / "run" / "config.json").is_file()
    assert seen[-1][0] == 40 and seen[-1][1] == 40 and "v_rand" in seen[-1][2]
    with pytest.raises(StoreExistsError, match="resume=True"):
        train(ts, val, str(tmp_path / "run"), TINY, cfg)


class Killed(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted(tmp_path: Path, inputs: Any) -> None:
    ts, val = inputs
    model_cfg = UNetConfig(depth=2, base_channels=4, norm="batch", dropout=0.3)
    cfg = TrainConfig(steps=6, batch_size=2, crop=32, val_every=6, checkpoint_every=2, log_every=1,
                      deterministic=True, warmup_steps=2, loader_threads=2)
    train(ts, val, str(tmp_path / "whole"), model_cfg, cfg)

    def kill_at_5(step: int, total: int, **_: Any) -> None:
        if step == 5:
            raise Killed  # after step 5, before its checkpoint: steps 5 is lost as in a real kill

    with pytest.raises(Killed):
        train(ts, val, str(tmp_path / "split"), model_cfg, cfg, progress=kill_at_5)
    assert load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")["step"] == 4
    result = train(ts, val, str(tmp_path / "split"), model_cfg, cfg, resume=True)
    assert result.step == 6
    whole = _params(tmp_path / "whole" / "checkpoint-last.pt")
    split = _params(tmp_path / "split" / "checkpoint-last.pt")
    assert whole.keys() == split.keys()
    for k in whole:
        torch.testing.assert_close(split[k], whole[k], rtol=0, atol=0, msg=k)
    a = load_checkpoint(tmp_path / "whole" / "checkpoint-last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint-last.pt")
    assert a["step"] == b["step"] == 6
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, inputs: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ts, val = inputs
    real = train_mod.segmentation_loss
    calls = {"n": 0}

    def nan_after_3(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(train_mod, "segmentation_loss", nan_after_3)
    cfg = TrainConfig(steps=10, batch_size=2, crop=32, val_every=100, checkpoint_every=2, log_every=2)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan.*checkpoint-last.pt \(step 2\)"):
        train(ts, val, str(tmp_path / "run"), TINY, cfg)
    good = load_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert good["step"] == 2
    assert all(torch.isfinite(t).all() for t in good["model"].values() if t.is_floating_point())


def test_bad_inputs(tmp_path: Path, inputs: Any) -> None:
    ts, val = inputs
    cfg = TrainConfig(steps=1, batch_size=1)
    with pytest.raises(ValueError, match="inverted"):
        train(ts, val, str(tmp_path / "a"), TINY, cfg.model_copy(update={"polarity": "nonzero_is_membrane"}))
    with pytest.raises(ValueError, match="crop 128 is larger"):
        train(ts, val, str(tmp_path / "b"), TINY, cfg.model_copy(update={"crop": 128}))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(ts, val, str(tmp_path / "c"), TINY, cfg, resume=True)
    image, _ = make_validation(tmp_path / "v1")
    _, other = make_validation(tmp_path / "v2", size=32)
    with pytest.raises(ShapeMismatchError, match="shape"):
        ValidationData.from_volumes(image, other, (0, 2))
    with pytest.raises(ValueError, match="validation slices"):
        ValidationData.from_volumes(image, image, (1, 5))
    bad = create_training_set(tmp_path / "bad.zarr", 4, (64, 64), group_size=4)
    bad.write_group(0, np.zeros((4, 64, 64), np.uint8), np.arange(4 * 64 * 64).reshape(4, 64, 64) % 7,
                    np.ones((4, 64, 64), np.float16))
    with pytest.raises(ValueError, match="binary"):
        train(bad, val, str(tmp_path / "d"), TINY, cfg)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_predict_slices_returns_input_geometry(padding: str) -> None:
    from unet.model import UNet
    from unet.train import predict_slices

    model = UNet(UNetConfig(depth=3, base_channels=4, padding=padding))  # type: ignore[arg-type]
    images = np.random.default_rng(0).integers(0, 256, (3, 50, 44), dtype=np.uint8)
    prob = predict_slices(model, images, batch_size=2, tta=True)
    assert prob.shape == images.shape and prob.dtype == np.float32
    assert ((prob >= 0) & (prob <= 1)).all()
