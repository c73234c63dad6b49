"""A checkpoint records the membrane class and the training voxel size; inference reads the class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from storage.dataset import source_voxel_size
from storage.volume import create_volume
from tests.unet.test_train import TINY, make_training_set, make_validation
from unet.checkpoint import load_checkpoint, recorded_membrane_class, recorded_training_data, save_checkpoint
from unet.infer_config import InferConfig
from unet.model import UNet, UNetConfig
from unet.predictor import load_predictor
from unet.train import TrainConfig, ValidationData, train

TWO = UNetConfig(depth=2, base_channels=4, n_classes=2, norm="none")
CFG = InferConfig(tile=(16, 16), overlap=(4, 4), device="cpu")


def test_checkpoint_records_membrane_class_and_training_data(tmp_path: Path) -> None:
    data = {"image": "volumes/em.zarr", "voxel_size_nm": [30.0, 4.6, 4.6], "voxel_size_unknown": []}
    save_checkpoint(tmp_path / "two.pt", UNet(TWO), TWO, training_data=data)
    payload = load_checkpoint(tmp_path / "two.pt")
    assert payload["membrane_class"] == 1 and recorded_membrane_class(payload) == 1
    assert recorded_training_data(payload) == data
    one = UNetConfig(depth=2, base_channels=4, norm="none")
    save_checkpoint(tmp_path / "one.pt", UNet(one), one)
    payload = load_checkpoint(tmp_path / "one.pt")
    assert recorded_membrane_class(payload) == 0 and recorded_training_data(payload) == {}


def _expected(model: UNet, batch: torch.Tensor, channel: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(batch / 255.0), dim=1)[:, channel : channel + 1]


def test_a_2_class_checkpoint_is_inferred_with_its_recorded_class_without_flags(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet(TWO).eval()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, TWO)
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (2, 1, 16, 16)).astype(np.float32))
    predictor = load_predictor(str(ckpt), CFG)
    assert predictor.membrane_class == 1
    torch.testing.assert_close(predictor(batch.clone()), _expected(model, batch, 1), atol=1e-5, rtol=0)
    assert not torch.allclose(_expected(model, batch, 1), _expected(model, batch, 0))

    # The recorded class is what inference takes without flags; an explicit one still wins.
    payload = load_checkpoint(ckpt)
    payload["membrane_class"] = 0
    torch.save(payload, tmp_path / "class0.pt")
    assert load_predictor(str(tmp_path / "class0.pt"), CFG).membrane_class == 0
    forced = CFG.model_copy(update={"membrane_class": 1})
    assert load_predictor(str(tmp_path / "class0.pt"), forced).membrane_class == 1
    # A checkpoint older than the record keeps today's behaviour: training's class 1.
    del payload["membrane_class"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_predictor(str(tmp_path / "old.pt"), CFG).membrane_class == 1


def test_training_records_the_source_volumes_voxel_size_in_every_checkpoint(tmp_path: Path) -> None:
    source = create_volume(tmp_path / "src.zarr", (2, 64, 64), np.uint8, (30, 4.6, 4.6))
    source.update_attrs(voxel_size_unknown=["z"])
    source.mark_complete()
    ts = make_training_set(tmp_path / "set.zarr", attrs={"sources": {"image": source.path, "slices": [0, 1]}})
    recorded = source_voxel_size(ts)
    assert recorded == {"image": source.path, "voxel_size_nm": [30.0, 4.6, 4.6], "voxel_size_unknown": ["z"]}
    image, labels = make_validation(tmp_path)
    cfg = TrainConfig(steps=2, batch_size=2, crop=32, val_every=2, loader_threads=1, val_scoring="inline")
    result = train(ts, ValidationData.from_volumes(image, labels, (0, 2)), str(tmp_path / "run"), TINY, cfg)
    assert result.best_checkpoint is not None
    for path in (result.last_checkpoint, result.best_checkpoint):
        payload = load_checkpoint(path)
        assert recorded_training_data(payload) == recorded and recorded_membrane_class(payload) == 0
    # A training set that names no source (or one gone since) records nothing.
    assert source_voxel_size(make_training_set(tmp_path / "bare.zarr")) is None
    gone = make_training_set(tmp_path / "gone.zarr", attrs={"sources": {"image": str(tmp_path / "no.zarr")}})
    assert source_voxel_size(gone) is None


def test_a_training_set_keeps_its_sources_voxel_size_after_the_volume_has_moved(tmp_path: Path) -> None:
    """augment records the image volume's voxel size in the set; checkpoints get it from there even
    when the volume is gone, and resuming or reusing the set is not affected by the extra record."""
    import shutil

    from storage.dataset import open_training_set
    from storage.workspace import Workspace
    from tests.crash.inputs import VOXEL_NM, image_and_labels
    from unet.augment import AugmentConfig
    from unet.augment_stage import AugmentStageConfig, augment_stage

    ws = Workspace(str(tmp_path / "ws"))
    image_and_labels(ws, (6, 64, 64))
    cfg = AugmentStageConfig(n_samples=4, group_size=2, augment=AugmentConfig(max_displacement_px=3.0))
    assert augment_stage(ws, "em", "em", "set", cfg, num_workers=1).action == "create"
    expected = {"image": ws.volume("em"), "voxel_size_nm": list(VOXEL_NM), "voxel_size_unknown": []}
    assert source_voxel_size(open_training_set(ws.dataset("set"))) == expected
    assert augment_stage(ws, "em", "em", "set", cfg, num_workers=1).action == "reuse"
    shutil.rmtree(ws.volume("em"))
    assert source_voxel_size(open_training_set(ws.dataset("set"))) == expected



def test_resumed_augment_drops_a_killed_writers_partial_objects(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What zarr left of a write a kill interrupted (``<key>.<uuid>.partial``) is removed when the set
    is resumed: the finished store holds the files of an uninterrupted run."""
    import unet.augment_stage
    from storage.workspace import Workspace
    from tests.crash.inputs import image_and_labels
    from unet.augment import AugmentConfig
    from unet.augment_stage import AugmentStageConfig, augment_stage

    ws = Workspace(str(tmp_path / "ws"))
    image_and_labels(ws, (6, 64, 64))
    cfg = AugmentStageConfig(n_samples=8, group_size=4, augment=AugmentConfig(max_displacement_px=3.0))
    real = unet.augment_stage.write_pending_groups

    def killed(path: str, *args: object, **kwargs: object) -> int:
        leftover = Path(path) / "done" / "c" / "1.0123abcd.partial"  # what a kill mid-write leaves
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"\0")
        raise KeyboardInterrupt

    monkeypatch.setattr(unet.augment_stage, "write_pending_groups", killed)
    with pytest.raises(KeyboardInterrupt):
        augment_stage(ws, "em", "em", "set", cfg, num_workers=1)
    monkeypatch.setattr(unet.augment_stage, "write_pending_groups", real)
    assert augment_stage(ws, "em", "em", "set", cfg, num_workers=1).action == "resume"
    assert not list(Path(ws.dataset("set")).rglob("*.partial"))
