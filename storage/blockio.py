"""Fast block reads and writes of one array of a volume, for blockwise engines.

Blockwise inference reads each write block with a halo and writes it back as whole shards, tens
of megabytes at a time, from several threads. Measured for that pattern on the 2-core
development machine (``../shared/notes/inference.md``, ``benchmarks/infer.py --cpu-proxy``),
tensorstore's zarr3 driver moves blocks about twice as fast as zarr-python, and faster than
zarr-python with the ``zarrs`` codec pipeline; so local stores go through tensorstore, and
anything else (fsspec URLs, or tensorstore missing) through zarr-python.

Both read and write the same Zarr v3 arrays (the ``zarr.json`` written by zarr-python, its
codecs and shard index), so OME-Zarr metadata, completion markers and ledgers stay exactly
as :mod:`storage.volume` and :mod:`storage.ledger` write them. Axes (z, y, x), voxels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import zarr

from storage.errors import StoreNotFoundError
from storage.zarr_store import _is_local

Backend = Literal["auto", "tensorstore", "zarr"]


def _local_path(path: str) -> str | None:
    """The file-system path of a local store (plain or ``file://``), None for other URLs."""
    return os.path.abspath(path.removeprefix("file://")) if _is_local(path) else None


def tensorstore_available() -> bool:
    try:
        import tensorstore  # noqa: F401
    except ImportError:
        return False
    return True


class BlockArray:
    """One array (e.g. ``<volume>.zarr/s0``) opened for block reads, and writes if ``writable``.

    ``read(region)`` returns a new numpy array; ``write(start, data)`` stores ``data`` at
    ``start`` and refuses a region that overruns the array (zarr and tensorstore would crop
    or fail less clearly). Thread-safe: engines call both from pools of threads.
    """

    def __init__(self, group_path: str | os.PathLike[str], name: str, *, writable: bool = False,
                 backend: Backend = "auto") -> None:
        self.path = f"{os.fspath(group_path).rstrip('/')}/{name}"
        local = _local_path(self.path)
        if backend == "auto":
            backend = "tensorstore" if local is not None and tensorstore_available() else "zarr"
        self.backend = backend
        self._ts: Any = None
        self._zarr: zarr.Array | None = None
        if backend == "tensorstore":
            if local is None:
                raise ValueError(f"tensorstore block I/O needs a local path, got {self.path}")
            self._ts = _open_tensorstore(local, writable)
            self.shape = tuple(int(s) for s in self._ts.shape)
            self.dtype = np.dtype(self._ts.dtype.numpy_dtype)
        else:
            try:
                arr = zarr.open_array(self.path, mode="r+" if writable else "r")
            except (FileNotFoundError, zarr.errors.ArrayNotFoundError) as e:
                raise StoreNotFoundError(f"no array at {self.path}") from e
            self._zarr = arr.with_config({"write_empty_chunks": True})  # dense data: skip the check
            self.shape = tuple(int(s) for s in arr.shape)
            self.dtype = np.dtype(arr.dtype)  # type: ignore[arg-type]

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """The voxels of ``region`` (one slice per axis, inside the array)."""
        if self._ts is not None:
            return np.asarray(self._ts[tuple(region)].read().result())
        assert self._zarr is not None
        return np.asarray(self._zarr[tuple(region)])

    def write(self, start: Sequence[int], data: np.ndarray) -> None:
        """Store ``data`` with its first voxel at ``start``; ValueError if it does not fit."""
        start = tuple(int(s) for s in start)
        end = tuple(s + n for s, n in zip(start, data.shape, strict=True))
        if min(start) < 0 or any(e > n for e, n in zip(end, self.shape, strict=True)):
            raise ValueError(f"region at {start} of shape {data.shape} does not fit in {self.shape} "
                             f"({self.path})")
        region = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
        if self._ts is not None:
            self._ts[region].write(data).result()
        else:
            assert self._zarr is not None
            self._zarr[region] = data


def _open_tensorstore(path: str, writable: bool) -> Any:
    import tensorstore as ts

    if not os.path.exists(os.path.join(path, "zarr.json")):
        raise StoreNotFoundError(f"no array at {path}")
    spec: dict[str, Any] = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": path},
        "open": True,
        # Dense data (EM, probabilities): always store every chunk, as storage.volume does.
        "store_data_equal_to_fill_value": True,
    }
    # No cache: every block is read once (halos overlap by a few rows) and written once.
    ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    return ts.open(spec, context=ctx, read=True, write=writable).result()
