"""Block I/O through tensorstore and zarr-python: same bytes, same metadata, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.blockio import BlockArray
from storage.errors import StoreNotFoundError
from storage.volume import LEVEL0, create_volume, open_volume


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_tensorstore_and_zarr_read_each_others_shards(tmp_path: Path, compression: str) -> None:
    data = np.random.default_rng(0).integers(0, 256, (2, 40, 36), dtype=np.uint8)
    for backend in ("tensorstore", "zarr"):
        create_volume(tmp_path / f"{backend}.zarr", data.shape, np.uint8, (1, 1, 1), chunks=(1, 8, 8),
                      shards=(1, 16, 16), compression=compression)  # type: ignore[arg-type]
        arr = BlockArray(tmp_path / f"{backend}.zarr", LEVEL0, writable=True, backend=backend)  # type: ignore[arg-type]
        assert arr.backend == backend and arr.shape == data.shape and arr.dtype == np.uint8
        for z in range(2):
            for y in range(0, 40, 16):
                for x in range(0, 36, 16):
                    arr.write((z, y, x), data[z : z + 1, y : y + 16, x : x + 16])
        np.testing.assert_array_equal(arr.read((slice(1, 2), slice(5, 33), slice(0, 36))), data[1:2, 5:33])
    # Each library reads what the other wrote (same zarr.json, shard index and codecs) ...
    written = open_volume(tmp_path / "tensorstore.zarr", require_complete=False).read(slice(None))
    assert np.array_equal(written, data)
    whole = (slice(0, 2), slice(0, 40), slice(0, 36))
    assert np.array_equal(BlockArray(tmp_path / "zarr.zarr", LEVEL0, backend="tensorstore").read(whole), data)
    # ... with the same files (the shards' bytes may differ: chunk order inside a shard, encoders).
    ts_files, zarr_files = (_files(tmp_path / f"{b}.zarr" / LEVEL0) for b in ("tensorstore", "zarr"))
    assert ts_files.keys() == zarr_files.keys()


def test_block_writes_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    create_volume(tmp_path / "v.zarr", (1, 8, 8), np.uint8, (1, 1, 1))
    arr = BlockArray(tmp_path / "v.zarr", LEVEL0, writable=True)
    with pytest.raises(ValueError, match=r"does not fit in \(1, 8, 8\)"):
        arr.write((0, 4, 4), np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(StoreNotFoundError, match="no array at"):
        BlockArray(tmp_path / "missing.zarr", LEVEL0)
    with pytest.raises(StoreNotFoundError, match="no array at"):
        BlockArray(tmp_path / "v.zarr", LEVEL0, backend="zarr").__class__(tmp_path / "nope.zarr", LEVEL0,
                                                                           backend="zarr")
