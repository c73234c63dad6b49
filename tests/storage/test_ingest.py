"""Ingest: labels, layout, refusal/reuse/overwrite, failures leave nothing that looks complete."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from storage import ingest as ingest_module
from storage.errors import IncompleteStoreError, InputError, ShapeMismatchError, StoreExistsError
from storage.ingest import IngestConfig, ingest, ingest_with_labels
from storage.tiff import SlabReader
from storage.volume import open_volume, store_exists
from tests.storage.tiff_factory import make_stack, tree_digest, write_kind

SMALL = IngestConfig(chunk_yx=32, shard_z=4, slab_z=4, workers=2)


def test_layout_chunks_shards_and_slabs(tmp_path: Path) -> None:
    src = write_kind("multipage", make_stack(shape=(10, 70, 100)), tmp_path)
    vol = ingest(src, tmp_path / "v.zarr", IngestConfig(chunk_yx=32, shard_z=2, shard_yx=64, slab_z=4))
    assert vol.chunks == (1, 32, 32) and vol.array.shards == (2, 64, 64)
    unsharded = ingest(src, tmp_path / "u.zarr", IngestConfig(chunk_yx=64, shard_z=None))
    assert unsharded.chunks == (1, 64, 64) and unsharded.array.shards is None
    np.testing.assert_array_equal(unsharded.read(slice(None)), vol.read(slice(None)))


def test_every_chunk_is_written_even_when_it_equals_the_fill_value(tmp_path: Path) -> None:
    # The ingest writes with write_empty_chunks=True: skipping "empty" chunks costs a full
    # comparison pass over the data and gains nothing for EM images (the benchmark found
    # zarr ignoring that setting when passed to open_array).
    data = np.zeros((4, 64, 64), np.uint8)
    data[1] = 7  # one slice that is not the fill value
    src = tmp_path / "zeros.tif"
    tifffile.imwrite(src, data, photometric="minisblack")
    vol = ingest(src, tmp_path / "z.zarr", IngestConfig(chunk_yx=32, shard_z=None, slab_z=2))
    chunk_files = [p for p in (tmp_path / "z.zarr" / "s0" / "c").rglob("*") if p.is_file()]
    assert len(chunk_files) == 4 * 2 * 2
    np.testing.assert_array_equal(vol.read(slice(None)), data)


def test_slab_must_align_with_shards() -> None:
    with pytest.raises(ValueError, match="slab_z must be a multiple of shard_z"):
        IngestConfig(shard_z=4, slab_z=6)
    with pytest.raises(ValueError, match="voxel_size must be 3 positive numbers"):
        IngestConfig(voxel_size=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        IngestConfig(chunk=3)  # type: ignore[call-arg]


def test_progress_and_bounded_slabs_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_kind("multipage", make_stack(shape=(24, 32, 32)), tmp_path)
    in_flight, peak, lock = [0], [0], threading.Lock()
    real_read = SlabReader.read

    def counting_read(self: SlabReader, z0: int, z1: int) -> np.ndarray:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return real_read(self, z0, z1)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(SlabReader, "read", counting_read)
    calls: list[tuple[int, int]] = []
    ingest(src, tmp_path / "v.zarr", IngestConfig(chunk_yx=32, shard_z=2, slab_z=2, workers=2),
           progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 12) for i in range(1, 13)]
    assert 1 <= peak[0] <= 2


@pytest.mark.slow
def test_process_scheduler_round_trip(tmp_path: Path) -> None:
    data = make_stack("uint16", shape=(9, 30, 40))
    vol = ingest(write_kind("ome", data, tmp_path), tmp_path / "p.zarr",
                 SMALL.model_copy(update={"scheduler": "processes"}))
    np.testing.assert_array_equal(vol.read(slice(None)), data)


def test_pyramid_levels(tmp_path: Path) -> None:
    data = make_stack(shape=(4, 64, 64))
    vol = ingest(write_kind("multipage", data, tmp_path), tmp_path / "v.zarr",
                 SMALL.model_copy(update={"pyramid_levels": 2}))
    assert vol.levels == ["s0", "s1", "s2"]
    expected = np.round(data.astype(np.float32).reshape(4, 32, 2, 32, 2).mean(axis=(2, 4))).astype(np.uint8)
    np.testing.assert_array_equal(vol.level(1)[:], expected)


def test_labels_ingested_with_polarity_and_image_geometry(tmp_path: Path) -> None:
    image, labels = make_stack(shape=(6, 32, 48)), (make_stack(shape=(6, 32, 48), seed=1) > 60) * 255
    img_src = write_kind("ome", image, tmp_path / "img")
    lab_src = write_kind("multipage", labels.astype(np.uint8), tmp_path / "lab")
    cfg = SMALL.model_copy(update={"pyramid_levels": 1})
    img, lab = ingest_with_labels(img_src, lab_src, tmp_path / "v.zarr", tmp_path / "l.zarr", cfg)
    np.testing.assert_array_equal(lab.read(slice(None)), labels)
    assert lab.attrs["kind"] == "label" and lab.attrs["label_polarity"] == "zero_is_membrane"
    # Labels have no voxel-size metadata of their own: they take the image's.
    assert lab.voxel_size == img.voxel_size and lab.voxel_size.as_tuple() == (50.0, 4.0, 5.0)
    # The label pyramid samples (never averages): only the original values occur.
    assert set(np.unique(lab.level(1)[:])) <= {0, 255}


def test_label_shape_mismatch_writes_nothing(tmp_path: Path) -> None:
    img_src = write_kind("multipage", make_stack(shape=(6, 32, 48)), tmp_path / "img")
    lab_src = write_kind("multipage", make_stack(shape=(5, 32, 48)), tmp_path / "lab")
    message = r"stack\.tif: label stack has shape \(z, y, x\) \(5, 32, 48\), but the image has \(6, 32, 48\)"
    with pytest.raises(ShapeMismatchError, match=message):
        ingest_with_labels(img_src, lab_src, tmp_path / "v.zarr", tmp_path / "l.zarr", SMALL)
    assert not store_exists(tmp_path / "v.zarr") and not store_exists(tmp_path / "l.zarr")


def test_existing_output_refused_reused_or_replaced(tmp_path: Path) -> None:
    a, b = make_stack(seed=1), make_stack(seed=2)
    src_a, src_b = write_kind("multipage", a, tmp_path / "a"), write_kind("multipage", b, tmp_path / "b")
    out = tmp_path / "v.zarr"
    first = ingest(src_a, out, SMALL)
    # Same inputs and settings: the complete output is reused, not rewritten.
    mtime = (out / "zarr.json").stat().st_mtime_ns
    assert ingest(src_a, out, SMALL.model_copy(update={"workers": 1})).summary() == first.summary()
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    with pytest.raises(StoreExistsError, match="already exists and was made from other inputs or settings"):
        ingest(src_b, out, SMALL)
    with pytest.raises(StoreExistsError):
        ingest(src_a, out, SMALL.model_copy(update={"compression": "none"}))
    np.testing.assert_array_equal(open_volume(out).read(slice(None)), a)
    replaced = ingest(src_b, out, SMALL.model_copy(update={"overwrite": True}))
    np.testing.assert_array_equal(replaced.read(slice(None)), b)


def test_failure_midway_leaves_incomplete_store(tmp_path: Path) -> None:
    data = make_stack(shape=(12, 32, 32))
    path = tmp_path / "in" / "deflate.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[9].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset: offset + 16] = b"\xff" * 16  # slab 8..11 fails to decode; earlier slabs succeed
    path.write_bytes(bytes(raw))
    before = tree_digest(tmp_path / "in")
    with pytest.raises(InputError, match=r"deflate\.tif: cannot read slices 8\.\.11"):
        ingest(path, tmp_path / "v.zarr", SMALL)
    with pytest.raises(IncompleteStoreError, match="is incomplete"):
        open_volume(tmp_path / "v.zarr")
    assert tree_digest(tmp_path / "in") == before
    # A re-run of the same ingest may replace its own half-written output (here: after the
    # input is repaired the fingerprint differs, so it is refused without overwrite).
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    with pytest.raises(StoreExistsError):
        ingest(path, tmp_path / "v.zarr", SMALL)
    vol = ingest(path, tmp_path / "v.zarr", SMALL.model_copy(update={"overwrite": True}))
    np.testing.assert_array_equal(vol.read(slice(None)), data)


def test_failure_in_pyramid_leaves_incomplete_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_pyramid(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ingest_module, "build_pyramid", broken_pyramid)
    src = write_kind("multipage", make_stack(), tmp_path)
    with pytest.raises(OSError, match="disk full"):
        ingest(src, tmp_path / "v.zarr", SMALL.model_copy(update={"pyramid_levels": 1}))
    with pytest.raises(IncompleteStoreError):
        open_volume(tmp_path / "v.zarr")
    # The same ingest re-run replaces its own incomplete output (a retry needs no overwrite).
    monkeypatch.undo()
    vol = ingest(src, tmp_path / "v.zarr", SMALL.model_copy(update={"pyramid_levels": 1}))
    assert vol.is_complete


def test_sources_and_params_recorded(tmp_path: Path) -> None:
    src = write_kind("folder", make_stack(), tmp_path)
    vol = ingest(src, tmp_path / "v.zarr", SMALL)
    recorded = vol.attrs
    assert [s["path"] for s in recorded["sources"]] == [str(Path(src) / f"s{z}.tif") for z in range(12)]
    assert all(s["size"] > 0 for s in recorded["sources"])
    assert recorded["params"]["compression"] == "zstd" and recorded["params"]["shard_z"] == 4
    assert recorded["source"]["kind"] == "slices" and recorded["source"]["dtype"] == "uint8"


def test_unknown_voxel_size_is_recorded_as_unknown(tmp_path: Path) -> None:
    # No resolution metadata and no voxel size given: 1 nm is a placeholder, and said so.
    src = write_kind("multipage", make_stack(shape=(4, 32, 32)), tmp_path / "in")
    vol = ingest(src, tmp_path / "u.zarr", SMALL)
    assert vol.voxel_size.as_tuple() == (1.0, 1.0, 1.0)
    assert vol.attrs["voxel_size_unknown"] == ["z", "y", "x"]
    given = ingest(src, tmp_path / "g.zarr", SMALL.model_copy(update={"voxel_size": (40.0, 4.0, 4.0)}))
    assert "voxel_size_unknown" not in given.attrs
