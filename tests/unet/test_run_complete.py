"""Issue 16, item 4: a training run is marked finished last, so the nightly never picks an
unfinished run's checkpoint-best.pt."""

from __future__ import annotations

from pathlib import Path

import pytest

import unet.train as train_mod
from storage.inbox import newest_best_checkpoint
from storage.runs import is_run_complete
from tests.unet.test_train import TINY, make_training_set, make_validation
from unet.train import TrainConfig, ValidationData, train

CFG = TrainConfig(steps=4, batch_size=2, val_every=2, log_every=2, loader_threads=1)


def test_finished_run_is_marked_and_a_restarted_one_is_not(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ts = make_training_set(tmp_path / "set.zarr")
    image, labels = make_validation(tmp_path)
    val = ValidationData.from_volumes(image, labels, (0, 2))
    run = tmp_path / "models" / "r1"
    train(ts, val, str(run), TINY, CFG)
    assert is_run_complete(run)
    assert newest_best_checkpoint(tmp_path / "models") == str(run / "checkpoint-best.pt")

    def killed(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(train_mod.Trainer, "step", killed)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        train(ts, val, str(run), TINY, CFG, overwrite=True)
    assert not is_run_complete(run)
    with pytest.raises(FileNotFoundError, match="no finished training run"):
        newest_best_checkpoint(tmp_path / "models")
