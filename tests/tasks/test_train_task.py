"""The train task refuses to validate on the slices its training set was generated from."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from storage.dataset import create_training_set
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume, open_volume
from storage.workspace import Workspace
from tasks.train import train_model
from unet.augment import AugmentConfig
from unet.augment_stage import dataset_attrs
from unet.model import UNetConfig
from unet.train import TrainConfig, ValidationOverlapError
from unet.train_stage import TrainStageConfig

TINY = UNetConfig(depth=2, base_channels=4)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(str(tmp_path / "ws"))
    block = generate_volume(SyntheticSpec(shape=(6, 64, 64), seed=3, cell_yx=20.0))
    volumes = ((ws.volume("em"), block.image, "image"), (ws.labels("em"), block.labels, "label"))
    for path, data, kind in volumes:
        w = create_volume(path, data.shape, np.uint8, (50, 4, 4), kind=kind)  # type: ignore[arg-type]
        w.write(0, data)
        w.mark_complete()
    # Recorded as `emseg augment --slices 0-3` records it.
    attrs = dataset_attrs(open_volume(ws.volume("em")).path, open_volume(ws.labels("em")).path, "0-3",
                          [0, 1, 2, 3], 4, 0, AugmentConfig())
    ts = create_training_set(ws.dataset("train"), 4, (64, 64), group_size=4, attrs=attrs)
    ts.write_group(0, block.image[:4], block.labels[:4], np.ones((4, 64, 64), np.float16))
    ts.mark_complete()
    return ws


def test_train_task_refuses_overlapping_validation_slices(workspace: Workspace,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # No Prefect run here: progress goes nowhere (a progress artifact would start a server).
    silent = SimpleNamespace(update=lambda *a, **k: None)
    monkeypatch.setattr("tasks.train.RunProgress", lambda *a, **k: silent)
    cfg = TrainConfig(steps=2, batch_size=2, crop=32, val_every=2, loader_threads=1, val_scoring="inline")
    with pytest.raises(ValidationOverlapError, match=r"validation slices 3-5 .* include slices 3 .*"
                                                     r"--allow-val-overlap"):
        train_model.fn(workspace.root, "train", "em", "em", "r1",
                       TrainStageConfig(train=cfg, unet=TINY, val_slices="3-5"))
    assert not Path(workspace.model_dir("r1")).exists()
    result = train_model.fn(workspace.root, "train", "em", "em", "r2",
                            TrainStageConfig(train=cfg, unet=TINY, val_slices="4-4", report_slices="5-5"))
    assert result.step == 2 and result.report_metrics["n_slices"] == 1
    assert "v_rand_threshold" in result.best_metrics and result.preview is not None
