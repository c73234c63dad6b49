"""Segmentation stores: an OME-Zarr 0.5 image-label that viewers open as labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from storage.errors import StorageError, StoreExistsError, StoreNotFoundError
from storage.segmentation import (
    create_or_resume_segmentation,
    open_segmentation,
    open_segmentation_for_blocks,
)
from storage.volume import create_volume


def _store(path: Path, levels: int = 1):  # type: ignore[no-untyped-def]
    return create_or_resume_segmentation(path, shape=(2, 8, 8), voxel_size=(40, 4, 4), dtype="uint32",
                                         chunks=(1, 8, 8), shards=(1, 8, 8), n_blocks=2,
                                         identity={"source": "p.zarr"}, pyramid_levels=levels)


def _fill(store) -> None:  # type: ignore[no-untyped-def]
    cells = np.arange(64, dtype=np.uint32).reshape(1, 8, 8) + 1
    for block in (0, 1):
        store.write_seeds(block, (block, 0, 0), np.zeros((1, 8, 8), np.uint64), np.zeros(0, np.uint64))
    store.write_lut(np.zeros(0, np.uint64), np.zeros(0, np.uint64), 0)
    for block in (0, 1):
        store.write_labels(block, (block, 0, 0), cells)


def test_complete_store_is_a_valid_image_label_that_ome_zarr_reads(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image_label import ImageLabel

    source = tmp_path / "prob.zarr"
    create_volume(source, (2, 8, 8), np.uint8, (40, 4, 4), kind="prediction").mark_complete()
    store = _store(tmp_path / "seg.zarr", levels=1)
    _fill(store)
    vol = store.finish(source=str(source))
    assert vol.is_complete and "work" not in vol.group
    label = ImageLabel.from_zarr(zarr.open_group(tmp_path / "seg.zarr", mode="r"))
    assert label.attributes.ome.image_label is not None
    assert label.attributes.ome.image_label.source.image == "../prob.zarr"  # type: ignore[union-attr]
    nodes = list(Reader(parse_url(str(tmp_path / "seg.zarr")))())
    labels = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(labels) == 1 and [d.shape for d in labels[0].data] == [(2, 8, 8), (2, 4, 4)]
    # The pyramid takes values, never averages of IDs.
    s1 = np.asarray(vol.level(1)[:])
    assert set(np.unique(s1)) <= set(np.arange(1, 65))
    assert open_segmentation(tmp_path / "seg.zarr").attrs["n_cells"] == 0


def test_finish_refuses_pending_blocks_and_readers_refuse_unfinished(tmp_path: Path) -> None:
    store = _store(tmp_path / "seg.zarr")
    with pytest.raises(StorageError, match="no seeds yet"):
        store.finish()
    with pytest.raises(StorageError, match="incomplete"):
        open_segmentation(tmp_path / "seg.zarr")
    assert open_segmentation_for_blocks(tmp_path / "seg.zarr").seeds_ledger.n_units == 2


def test_other_kinds_are_neither_replaced_nor_read_as_segmentations(tmp_path: Path) -> None:
    create_volume(tmp_path / "img.zarr", (2, 8, 8), np.uint8, (40, 4, 4)).mark_complete()
    with pytest.raises(StoreExistsError, match="not a segmentation"):
        _store(tmp_path / "img.zarr")
    with pytest.raises(StoreNotFoundError, match="not a segmentation"):
        open_segmentation(tmp_path / "img.zarr")
    with pytest.raises(ValueError, match="uint32 or uint64"):
        create_or_resume_segmentation(tmp_path / "x.zarr", shape=(1, 4, 4), voxel_size=(1, 1, 1),
                                      dtype="int16", chunks=(1, 4, 4), shards=(1, 4, 4), n_blocks=1,
                                      identity={})
