"""Export to TIFF: voxels and voxel size round-trip through ingest, slab by slab, atomically (issue 14)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from storage.errors import InputError, StoreExistsError
from storage.export import export_tiff, export_volume
from storage.ingest import ingest
from storage.ingest_config import IngestConfig
from storage.tiff import voxel_size_nm
from storage.volume import Volume, create_volume, open_volume

VOXEL = (40.0, 3.7, 4.2)


def _volume(path: Path, data: np.ndarray, kind: str = "image", voxel=VOXEL, **attrs) -> Volume:
    w = create_volume(path, data.shape, data.dtype, voxel, kind=kind, chunks=(1, *data.shape[1:]),  # type: ignore[arg-type]
                      shards=(2, *data.shape[1:]), attrs=attrs or None)
    w.write(0, data)
    return w.mark_complete()


def _stray_files(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".")]


@pytest.mark.parametrize("fmt", ["ome", "imagej"])
def test_image_round_trips_through_ingest_with_its_voxel_size(tmp_path: Path, fmt: str) -> None:
    data = np.random.default_rng(0).integers(0, 256, (5, 48, 40), dtype=np.uint8)
    vol = _volume(tmp_path / "v.zarr", data)
    seen: list[tuple[int, int]] = []
    # A 2-slice budget: three slabs (2, 2, 1 slices), never the whole volume at once.
    result = export_volume(vol, tmp_path / "out" / "v.tif", fmt=fmt,  # type: ignore[arg-type]
                           slab_bytes=2 * 48 * 40, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert result.shape == (5, 48, 40) and result.dtype == "uint8" and result.voxel_size_nm == VOXEL
    back = open_volume(ingest(result.path, tmp_path / "back.zarr", IngestConfig()).path)
    np.testing.assert_array_equal(back.read(slice(None)), data)
    np.testing.assert_allclose(back.voxel_size.as_tuple(), VOXEL, rtol=1e-6)
    assert back.attrs.get("voxel_size_unknown", []) == []
    assert _stray_files(tmp_path / "out") == []


def test_prediction_keeps_uint8_0_to_255(tmp_path: Path) -> None:
    data = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (3, 2, 2))
    result = export_tiff(_volume(tmp_path / "p.zarr", data, kind="prediction").path, tmp_path / "p.ome.tif")
    with tifffile.TiffFile(result.path) as tif:
        back = tif.asarray()
        assert tif.is_ome and voxel_size_nm(tif) == pytest.approx(VOXEL)
    assert back.dtype == np.uint8 and back.min() == 0 and back.max() == 255
    np.testing.assert_array_equal(back, data)


def test_segmentation_exports_uint32_ids_as_ome_and_imagej_is_refused(tmp_path: Path) -> None:
    ids = np.random.default_rng(1).integers(0, 2**32 - 1, (4, 32, 32), dtype=np.uint32)
    vol = _volume(tmp_path / "s.zarr", ids, kind="label")
    result = export_volume(vol, tmp_path / "s.ome.tif")
    with tifffile.TiffFile(result.path) as tif:
        np.testing.assert_array_equal(tif.asarray(), ids)
        assert tif.asarray().dtype == np.uint32 and voxel_size_nm(tif) == pytest.approx(VOXEL)
    with pytest.raises(InputError, match="uint32.*OME-TIFF"):
        export_volume(vol, tmp_path / "s-ij.tif", fmt="imagej")
    assert not (tmp_path / "s-ij.tif").exists() and _stray_files(tmp_path) == []


def test_an_existing_tiff_is_never_replaced_without_overwrite(tmp_path: Path) -> None:
    vol = _volume(tmp_path / "v.zarr", np.full((2, 16, 16), 7, np.uint8))
    target = tmp_path / "v.tif"
    target.write_bytes(b"keep me")
    with pytest.raises(StoreExistsError, match="overwrite"):
        export_volume(vol, target)
    assert target.read_bytes() == b"keep me"
    export_volume(vol, target, overwrite=True)
    assert (tifffile.imread(target) == 7).all() and _stray_files(tmp_path) == []


def test_a_failed_export_leaves_neither_the_target_nor_a_temporary_file(tmp_path: Path) -> None:
    vol = _volume(tmp_path / "v.zarr", np.zeros((4, 16, 16), np.uint8))

    def fail(done: int, total: int) -> None:
        raise KeyboardInterrupt  # killed part-way, after the first slab

    with pytest.raises(KeyboardInterrupt):
        export_volume(vol, tmp_path / "v.tif", progress=fail)
    assert not (tmp_path / "v.tif").exists() and _stray_files(tmp_path) == []


def test_unknown_voxel_axes_are_left_out_not_written_as_1_nm(tmp_path: Path) -> None:
    vol = _volume(tmp_path / "v.zarr", np.zeros((2, 16, 16), np.uint8), voxel=(1.0, 5.0, 5.0),
                  voxel_size_unknown=["z"])
    result = export_volume(vol, tmp_path / "v.ome.tif")
    assert result.voxel_size_nm == (None, 5.0, 5.0)
    with tifffile.TiffFile(result.path) as tif:
        assert voxel_size_nm(tif) == (None, pytest.approx(5.0), pytest.approx(5.0))
