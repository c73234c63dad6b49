"""The training loop on a tiny synthetic training set (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import unet.trainer as trainer_mod
from storage.dataset import TrainingSet, create_training_set
from storage.errors import ShapeMismatchError, StoreExistsError
from storage.files import read_jsonl
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import Volume, create_volume
from unet.checkpoint import CheckpointError, load_checkpoint, load_model
from unet.model import UNetConfig
from unet.train import (
    TrainConfig,
    TrainingDivergedError,
    ValidationData,
    ValidationOverlapError,
    format_slices,
    lr_factor,
    train,
)

TINY = UNetConfig(depth=2, base_channels=8, norm="group")


def make_training_set(path: Path, n: int = 8, size: int = 64, seed: int = 1,
                      attrs: dict[str, Any] | None = None) -> TrainingSet:
    block = generate_volume(SyntheticSpec(shape=(n, size, size), seed=seed, cell_yx=20.0))
    ts = create_training_set(path, n, (size, size), group_size=4, attrs=attrs or {"source": "synthetic"})
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
    assert 0 <= vals[-1]["v_rand"] <= 1 and vals[-1]["pixel_accuracy_at_half"] > 0.5
    assert result.step == 40 and result.best_checkpoint is not None
    assert result.best_metrics["v_rand"] == max(r["v_rand"] for r in vals)
    model, model_cfg = load_model(result.best_checkpoint)
    assert model_cfg == TINY
    assert (tmp_path / "run" / "config.json").is_file()
    assert seen[-1][0] == 40 and seen[-1][1] == 40 and "v_rand" in seen[-1][2]
    # The same run again is the finished run (nothing to do); other settings are refused, naming them.
    again = train(ts, val, str(tmp_path / "run"), TINY, cfg)
    assert again.step == 40 and again.resumed_from == 40 and again.best_metrics == result.best_metrics
    with pytest.raises(StoreExistsError, match=r"train\.lr: 0\.005 -> 0\.001.*--overwrite"):
        train(ts, val, str(tmp_path / "run"), TINY, cfg.model_copy(update={"lr": 1e-3}))


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
    real = trainer_mod.segmentation_loss
    calls = {"n": 0}

    def nan_after_3(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(trainer_mod, "segmentation_loss", nan_after_3)
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


def test_training_refuses_validation_slices_it_was_generated_from(tmp_path: Path) -> None:
    image, labels = make_validation(tmp_path, z=4)
    # As augment records them: the source volumes and the slices samples were drawn from.
    ts = make_training_set(tmp_path / "set.zarr", attrs={"sources": {
        "image": image.path, "labels": labels.path, "slices": [0, 1, 2], "split": {"train": "0-2"}}})
    cfg = TrainConfig(steps=2, batch_size=2, crop=32, val_every=2, loader_threads=1, val_scoring="inline")
    leaky = ValidationData.from_volumes(image, labels, (1, 4))
    with pytest.raises(ValidationOverlapError) as err:
        train(ts, leaky, str(tmp_path / "a"), TINY, cfg)
    message = str(err.value)
    assert "validation slices 1-3" in message and "include slices 1-2" in message
    assert "--allow-val-overlap" in message and "\n" not in message and "=True" not in message
    assert not (tmp_path / "a").exists()  # refused before anything was written
    # Held-out slices of the same volume train; so do overlapping ones when explicitly allowed.
    assert train(ts, ValidationData.from_volumes(image, labels, (3, 4)), str(tmp_path / "b"), TINY,
                 cfg).step == 2
    allowed = cfg.model_copy(update={"allow_val_overlap": True})
    assert train(ts, leaky, str(tmp_path / "c"), TINY, allowed).step == 2
    # Another volume's slices 1-3 are not training data.
    other_image, other_labels = make_validation(tmp_path / "other", z=4)
    assert train(ts, ValidationData.from_volumes(other_image, other_labels, (1, 4)), str(tmp_path / "d"),
                 TINY, cfg).step == 2


def test_format_slices() -> None:
    assert format_slices([25, 20, 21, 22, 27, 28]) == "20-22,25,27-28"
    assert format_slices([3]) == "3"


def test_validation_is_scored_while_training_continues(tmp_path: Path, inputs: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import unet.validation as validation_mod

    ts, val = inputs
    real = validation_mod.score_prediction
    release = threading.Event()
    scoring_threads: list[str] = []

    def slow_score(*args: Any) -> dict[str, Any]:
        scoring_threads.append(threading.current_thread().name)
        release.wait(30)  # held until training has gone on past the validation step
        return real(*args)

    def progress(step: int, total: int, **m: Any) -> None:
        if step >= 5:
            release.set()

    monkeypatch.setattr(validation_mod, "score_prediction", slow_score)
    cfg = TrainConfig(steps=6, batch_size=2, crop=32, val_every=3, log_every=1, loader_threads=1,
                      val_scoring="thread")
    result = train(ts, val, str(tmp_path / "run"), TINY, cfg, progress=progress)
    assert scoring_threads and all(name.startswith("emseg-val-scoring") for name in scoring_threads)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    order = [(r["kind"], r["step"]) for r in records if r["kind"] in ("train", "val")]
    # Step 3's scores were logged only after training had reached step 5.
    assert order.index(("val", 3)) > order.index(("train", 5))
    assert [s for k, s in order if k == "val"] == [3, 6]
    best = result.best_metrics
    assert best["step"] in (3, 6) and "v_rand_threshold" in best and "isbi_pixel_error" in best
    assert load_checkpoint(tmp_path / "run" / "checkpoint-best.pt")["step"] == best["step"]
    assert result.train_images_per_s > 0 and result.val_blocking_s > 0


def test_report_split_scores_the_best_checkpoint_once(tmp_path: Path) -> None:
    ts = make_training_set(tmp_path / "set.zarr")
    image, labels = make_validation(tmp_path, z=4)
    select = ValidationData.from_volumes(image, labels, (0, 2))
    report = ValidationData.from_volumes(image, labels, (2, 4))
    cfg = TrainConfig(steps=4, batch_size=2, crop=32, val_every=2, loader_threads=1)  # process scoring
    result = train(ts, select, str(tmp_path / "run"), TINY, cfg, report=report)
    assert result.report_metrics["step"] == result.best_metrics["step"]
    assert 0 <= result.report_metrics["v_rand"] <= 1 and result.report_metrics["n_slices"] == 2
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    reports = [r for r in records if r["kind"] == "report"]
    assert len(reports) == 1 and reports[0]["z"] == [2, 4]
    with pytest.raises(ValueError, match="report slices 1-2 share slices 1"):
        train(ts, select, str(tmp_path / "bad"), TINY, cfg,
              report=ValidationData.from_volumes(image, labels, (1, 3)))


def test_threshold_sweep_is_checked_with_the_config() -> None:
    assert 0.1 in TrainConfig().val_thresholds and 0.9 in TrainConfig().val_thresholds
    with pytest.raises(ValueError, match="thresholds"):
        TrainConfig(val_thresholds=(0.5, 1.5))
