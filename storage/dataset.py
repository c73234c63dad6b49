"""Augmented training sets: ``datasets/<name>.zarr``.

Layout (Zarr v3 group)::

    image   (N, H, W) uint8     augmented EM image
    label   (N, H, W) uint8     augmented labels, values as in the source label volume
    weight  (N, H, W) float16   border weight map, warped with the labels
    done    (n_groups,) uint8   ledger: one flag per group of ``group_size`` samples
    attrs["emseg"]: complete, n_samples, sample_shape, group_size, plus whatever the
                    writer records (sources, slice split, augmentation config, root seed)

Sample i lives at index i; samples are written in groups of ``group_size`` aligned to the
arrays' chunks, so parallel writers never share a chunk. A set becomes readable only when
marked complete; an incomplete one can be reopened with :func:`resume_training_set` to
finish the groups its ledger does not list as done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from storage.errors import IncompleteStoreError, StorageError, StoreExistsError, StoreNotFoundError
from storage.ledger import Ledger
from storage.volume import Volume, group_array, group_attr, open_volume, store_exists

# Attribute of a training set: its image volume's voxel size, recorded when the set is made, so
# checkpoints know it even after the volume has moved (not compared when resuming: see augment).
SOURCE_VOXEL_SIZE_KEY = "source_voxel_size"
ARRAYS = {"image": "uint8", "label": "uint8", "weight": "float16"}


@dataclass
class TrainingSet:
    """An opened training set. Arrays are (N, H, W); use slicing to read samples."""

    path: str
    group: zarr.Group

    @property
    def image(self) -> zarr.Array:
        return group_array(self.group, "image")

    @property
    def label(self) -> zarr.Array:
        return group_array(self.group, "label")

    @property
    def weight(self) -> zarr.Array:
        return group_array(self.group, "weight")

    @property
    def attrs(self) -> dict[str, Any]:
        return group_attr(self.group, "emseg")

    @property
    def n_samples(self) -> int:
        return int(self.image.shape[0])

    @property
    def group_size(self) -> int:
        return int(self.attrs["group_size"])

    @property
    def ledger(self) -> Ledger:
        return Ledger.open(self.group)

    def group_range(self, group_index: int) -> range:
        """Sample indices of group ``group_index``."""
        start = group_index * self.group_size
        return range(start, min(start + self.group_size, self.n_samples))

    def write_group(self, group_index: int, image: np.ndarray, label: np.ndarray,
                    weight: np.ndarray) -> None:
        """Write one whole group (arrays (n, H, W)) and then mark it done in the ledger."""
        r = self.group_range(group_index)
        for name, arr in (("image", image), ("label", label), ("weight", weight)):
            expected = (len(r), *self.image.shape[1:])
            if arr.shape != expected:
                raise ValueError(f"{name} for group {group_index} has shape {arr.shape}, "
                                 f"expected {expected}")
            group_array(self.group, name)[r.start : r.stop] = arr.astype(ARRAYS[name], copy=False)
        self.ledger.mark_done(group_index)

    def mark_complete(self) -> None:
        if not self.ledger.all_done():
            raise IncompleteStoreError(f"{self.path}: groups {self.ledger.pending()} not written")
        attrs = self.attrs
        attrs["complete"] = True
        self.group.attrs["emseg"] = attrs


def create_training_set(path: str | os.PathLike[str], n_samples: int,
                        sample_shape: tuple[int, int], *, group_size: int = 8,
                        attrs: dict[str, Any] | None = None,
                        overwrite: bool = False) -> TrainingSet:
    """Create an empty, incomplete training set of ``n_samples`` samples of (H, W) pixels."""
    p = os.fspath(path)
    if n_samples < 1 or group_size < 1:
        raise ValueError(f"n_samples and group_size must be >= 1, got {n_samples}, {group_size}")
    if store_exists(p) and not overwrite:
        raise StoreExistsError(f"{p} already exists; pass "
                               "--overwrite (overwrite=True from Python) to replace it")
    group = zarr.create_group(p, overwrite=True, zarr_format=3)
    meta: dict[str, Any] = {"complete": False}
    meta.update(attrs or {})
    meta.update(n_samples=n_samples, sample_shape=list(sample_shape), group_size=group_size)
    group.attrs["emseg"] = meta
    h, w = sample_shape
    for name, dtype in ARRAYS.items():
        group.create_array(name, shape=(n_samples, h, w), chunks=(group_size, h, w), dtype=dtype,
                           fill_value=0, dimension_names=("n", "y", "x"))
    Ledger.create(group, -(-n_samples // group_size))
    return TrainingSet(p, group)


def _open(path: str | os.PathLike[str], mode: str) -> TrainingSet:
    p = os.fspath(path)
    try:
        group = zarr.open_group(p, mode=mode)  # type: ignore[arg-type]
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreNotFoundError(f"no training set at {p}") from e
    if any(name not in group for name in ARRAYS):
        raise StoreNotFoundError(f"{p} is not a training set (needs arrays {sorted(ARRAYS)})")
    return TrainingSet(p, group)


def open_training_set(path: str | os.PathLike[str]) -> TrainingSet:
    """Open a complete training set for reading; refuse an incomplete or empty one."""
    ts = _open(path, "r")
    if not ts.attrs.get("complete", False):
        raise IncompleteStoreError(f"{ts.path} is incomplete: its generation did not finish; "
                                   "re-run the augment step to resume it")
    return ts


def resume_training_set(path: str | os.PathLike[str]) -> TrainingSet:
    """Re-open a (possibly incomplete) training set read-write to finish pending groups."""
    return _open(path, "r+")


def volume_voxel_record(volume: Volume) -> dict[str, Any]:
    """What a training set keeps of its image volume for checkpoints: the path, voxel size
    (``voxel_size_nm``, z, y, x) and placeholder axes (``voxel_size_unknown``)."""
    return {"image": volume.path, "voxel_size_nm": list(volume.voxel_size.as_tuple()),
            "voxel_size_unknown": list(volume.attrs.get("voxel_size_unknown", []))}


def source_voxel_size(training_set: TrainingSet) -> dict[str, Any] | None:
    """What a checkpoint records of the data its model was trained on (:func:`volume_voxel_record`):
    as the training set recorded it when it was made (``source_voxel_size``), else read from the
    image volume it names (sets made before that record); None when neither is there."""
    recorded = training_set.attrs.get(SOURCE_VOXEL_SIZE_KEY)
    if isinstance(recorded, dict) and "voxel_size_nm" in recorded:
        return dict(recorded)
    image = (training_set.attrs.get("sources") or {}).get("image")
    if not isinstance(image, str):
        return None
    try:
        volume = open_volume(image, require_complete=False)
    except (StorageError, OSError, ValueError):
        return None
    return volume_voxel_record(volume)
