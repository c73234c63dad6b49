"""storage/volume.py: OME-Zarr 0.5 validity, pyramid values, overwrite rules, completion marker."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from storage.errors import IncompleteStoreError, StoreExistsError, StoreNotFoundError
from storage.volume import VoxelSize, build_pyramid, create_volume, open_volume, open_volume_for_update


def _complete_volume(path: Path, data: np.ndarray, levels: int = 2, **kw: object):
    writer = create_volume(path, data.shape, data.dtype, (40.0, 4.0, 4.0), pyramid_levels=levels,
                           chunks=(1, 32, 32), **kw)  # type: ignore[arg-type]
    writer.write(0, data)
    build_pyramid(writer)
    return writer.mark_complete()


def test_valid_ome_zarr_05_and_readable_by_ome_zarr_py(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import Image

    data = np.random.default_rng(0).integers(0, 255, (3, 64, 80), dtype=np.uint8)
    path = tmp_path / "v.zarr"
    _complete_volume(path, data, shards=(1, 64, 64))
    image = Image.from_zarr(zarr.open_group(path, mode="r"))
    scales = [d.coordinateTransformations[0].scale for d in image.ome_attributes.multiscales[0].datasets]
    assert scales == [[40.0, 4.0, 4.0], [40.0, 8.0, 8.0], [40.0, 16.0, 16.0]]
    node = next(iter(Reader(parse_url(str(path)))()))
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert [np.asarray(level).shape for level in node.data] == [(3, 64, 80), (3, 32, 40), (3, 16, 20)]
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"] and all(a["unit"] == "nanometer" for a in axes)


def test_pyramid_is_2x2_mean_in_yx(tmp_path: Path) -> None:
    data = np.arange(2 * 8 * 12, dtype=np.uint16).reshape(2, 8, 12) * 3
    vol = _complete_volume(tmp_path / "v.zarr", data)
    s1 = data.astype(np.float64).reshape(2, 4, 2, 6, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(vol.level(1)[:], np.round(s1).astype(np.uint16))
    s2 = np.round(vol.level(1)[:].astype(np.float64).reshape(2, 2, 2, 3, 2).mean(axis=(2, 4)))
    np.testing.assert_array_equal(vol.level(2)[:], s2.astype(np.uint16))


def test_refuses_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "v.zarr"
    _complete_volume(path, np.ones((2, 16, 16), np.uint8), levels=0)
    with pytest.raises(StoreExistsError, match="already exists; pass --overwrite"):
        create_volume(path, (2, 16, 16), "uint8", (1, 1, 1))
    assert open_volume(path).read(slice(None)).sum() == 2 * 16 * 16
    writer = create_volume(path, (3, 8, 8), "float32", (1, 1, 1), overwrite=True)
    assert writer.shape == (3, 8, 8) and not writer.is_complete


def test_incomplete_store_detected(tmp_path: Path) -> None:
    path = tmp_path / "v.zarr"
    writer = create_volume(path, (4, 16, 16), "uint8", VoxelSize(30, 5, 5))
    writer.write(0, np.ones((2, 16, 16), np.uint8))
    with pytest.raises(IncompleteStoreError, match="v.zarr is incomplete"):
        open_volume(path)
    assert not open_volume(path, require_complete=False).is_complete
    resumed = open_volume_for_update(path)
    resumed.write(2, np.ones((2, 16, 16), np.uint8))
    assert resumed.mark_complete().read(slice(None)).all()
    assert open_volume(path).is_complete


def test_missing_and_non_volume(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no volume at"):
        open_volume(tmp_path / "nothing.zarr")
    zarr.create_group(tmp_path / "g.zarr")
    with pytest.raises(StoreNotFoundError, match="not an emseg/OME-Zarr volume"):
        open_volume(tmp_path / "g.zarr")


def test_write_refuses_region_that_overruns(tmp_path: Path) -> None:
    writer = create_volume(tmp_path / "v.zarr", (4, 16, 16), "uint8", (1, 1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        writer.write(3, np.ones((2, 16, 16), np.uint8))


def test_bad_voxel_size() -> None:
    with pytest.raises(ValueError, match="voxel size along y must be a positive number, got -1"):
        VoxelSize(1.0, -1.0, 1.0)


def test_pyramid_levels_are_sharded_like_level_0_halved(tmp_path: Path) -> None:
    """Level L's shards are level 0's halved L times in y, x (the same region, so one writer owns a
    block at every level), unsharded where that is not several whole chunks; the bytes are those of
    the unsharded pyramid, in a fraction of the files."""
    from storage.volume_create import level_shards

    assert level_shards((1, 4672, 4672), (1, 584, 584), 1) == (1, 2336, 2336)
    assert level_shards((1, 4672, 4672), (1, 584, 584), 2) == (1, 1168, 1168)
    assert level_shards((1, 4672, 4672), (1, 584, 584), 3) is None  # one chunk a shard
    assert level_shards((1, 96, 96), (1, 32, 32), 1) is None  # 48 is not whole chunks of 32
    assert level_shards(None, (1, 32, 32), 1) is None
    data = np.random.default_rng(0).integers(0, 256, (2, 128, 128), dtype=np.uint8)
    files = {}
    for name, shards in (("sharded", (1, 64, 64)), ("plain", None)):
        w = create_volume(tmp_path / f"{name}.zarr", data.shape, np.uint8, (40, 4, 4), chunks=(1, 16, 16),
                          shards=shards, pyramid_levels=3)
        w.write(0, data)
        build_pyramid(w)
        w.mark_complete()
        vol = open_volume(tmp_path / f"{name}.zarr")
        files[name] = [np.asarray(vol.level(i)[:]) for i in range(4)]
        assert [vol.level(i).shards for i in range(4)] == (
            [(1, 64, 64), (1, 32, 32), None, None] if shards else [None] * 4)
    for a, b in zip(files["sharded"], files["plain"], strict=True):
        np.testing.assert_array_equal(a, b)
    count = {name: sum(len(f) for _, _, f in os.walk(tmp_path / f"{name}.zarr" / "s1")) for name in files}
    assert count["sharded"] < count["plain"] // 3
