"""Prediction stores: create, resume with the same identity, refuse other identities and overwrites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.errors import StorageError, StoreExistsError
from storage.prediction import (
    PredictionMismatchError,
    create_or_resume_prediction,
    open_prediction_for_blocks,
)
from storage.volume import create_volume, open_volume

IDENT = {"model_sha256": "abc", "config": {"tile": [8, 8]}}


def _create(path: Path, identity: dict = IDENT, overwrite: bool = False, pyramid: int = 0):
    return create_or_resume_prediction(path, shape=(2, 8, 8), voxel_size=(50, 4, 4), chunks=(1, 4, 4),
                                       shards=(1, 8, 8), n_blocks=2, identity=identity,
                                       pyramid_levels=pyramid, overwrite=overwrite)


def test_blocks_are_recorded_after_their_data_and_completion_is_last(tmp_path: Path) -> None:
    p = tmp_path / "pred.zarr"
    store = _create(p)
    assert store.pending() == [0, 1]
    store.write_block(0, (0, 0, 0), np.full((1, 8, 8), 7, np.uint8))
    assert store.pending() == [1]
    with pytest.raises(StorageError, match="1 blocks are not done"):
        store.finish()
    assert not open_volume(p, require_complete=False).is_complete

    resumed = _create(p)  # same identity: resumes, keeps the finished block
    assert resumed.pending() == [1]
    assert resumed.identity == IDENT
    resumed.write_block(1, (1, 0, 0), np.full((1, 8, 8), 9, np.uint8))
    vol = resumed.finish()
    assert vol.is_complete and vol.attrs["kind"] == "prediction"
    assert vol.voxel_size.as_tuple() == (50, 4, 4)
    assert vol.array.shards == (1, 8, 8)
    assert np.array_equal(vol.read(slice(None))[:, 0, 0], [7, 9])


def test_resume_with_another_model_or_parameters_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "pred.zarr"
    _create(p)
    with pytest.raises(PredictionMismatchError, match="model_sha256: stored 'abc', asked 'other'"):
        _create(p, {**IDENT, "model_sha256": "other"})
    with pytest.raises(PredictionMismatchError, match="config"):
        _create(p, {**IDENT, "config": {"tile": [16, 16]}})
    # overwrite=True starts again with the new identity
    fresh = _create(p, {**IDENT, "model_sha256": "other"}, overwrite=True)
    assert fresh.identity["model_sha256"] == "other" and fresh.pending() == [0, 1]


def test_complete_prediction_and_foreign_store_are_not_overwritten(tmp_path: Path) -> None:
    p = tmp_path / "pred.zarr"
    store = _create(p)
    for i in range(2):
        store.write_block(i, (i, 0, 0), np.ones((1, 8, 8), np.uint8))
    store.finish()
    with pytest.raises(StoreExistsError, match="complete prediction already"):
        _create(p)
    assert open_volume(p).is_complete  # untouched
    with pytest.raises(StoreExistsError, match="already complete"):
        open_prediction_for_blocks(p)

    image = tmp_path / "image.zarr"
    create_volume(image, (2, 8, 8), np.uint8, (1, 1, 1)).mark_complete()
    with pytest.raises(StoreExistsError, match="not a prediction"):
        _create(image)


def test_pyramid_is_built_at_finish(tmp_path: Path) -> None:
    store = _create(tmp_path / "pred.zarr", pyramid=1)
    data = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    store.write_block(0, (0, 0, 0), data)
    store.write_block(1, (1, 0, 0), data)
    vol = store.finish()
    s1 = np.asarray(vol.level(1)[:])
    assert s1.shape == (2, 4, 4)
    assert s1[0, 0, 0] == round(np.mean([0, 1, 8, 9]))


def test_non_uint8_data_is_refused(tmp_path: Path) -> None:
    store = _create(tmp_path / "pred.zarr")
    with pytest.raises(ValueError, match="must be uint8"):
        store.write_block(0, (0, 0, 0), np.zeros((1, 8, 8), np.float32))
    assert store.pending() == [0, 1]
