"""Per-unit "done" flags kept inside a Zarr store, for resumable blockwise writers.

A unit is whatever a writer finishes atomically: an inference write block, a group of
augmented samples. The ledger is a 1-D uint8 array ``<group>/<name>`` with one chunk per
unit, so marking unit i writes one small object and concurrent writers (threads,
processes, Dask workers on a shared store) never touch the same object. A unit is marked
only after its data is written, so a killed run redoes at most the units in flight.
"""

from __future__ import annotations

import numpy as np
import zarr

DEFAULT_NAME = "done"


class Ledger:
    """Done flags for ``n_units`` units stored at ``group[name]``."""

    def __init__(self, array: zarr.Array) -> None:
        self._array = array

    @classmethod
    def create(cls, group: zarr.Group, n_units: int, name: str = DEFAULT_NAME) -> Ledger:
        if n_units < 1:
            raise ValueError(f"a ledger needs at least one unit, got {n_units}")
        arr = group.create_array(name, shape=(n_units,), chunks=(1,), dtype="uint8", fill_value=0,
                                 compressors=None)
        return cls(arr)

    @classmethod
    def open(cls, group: zarr.Group, name: str = DEFAULT_NAME) -> Ledger:
        return cls(group[name])  # type: ignore[arg-type]

    @property
    def n_units(self) -> int:
        return int(self._array.shape[0])

    def mark_done(self, unit: int) -> None:
        if not 0 <= unit < self.n_units:
            raise IndexError(f"unit {unit} out of range 0..{self.n_units - 1}")
        self._array[unit] = 1

    def done_mask(self) -> np.ndarray:
        """Boolean array of shape (n_units,): True where the unit is finished."""
        return np.asarray(self._array[:]).astype(bool)

    def pending(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.done_mask())]

    def all_done(self) -> bool:
        return bool(self.done_mask().all())
