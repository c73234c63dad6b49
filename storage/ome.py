"""OME-NGFF 0.5 metadata of a volume: voxel size (z, y, x; nm) and the multiscale ``datasets``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr


@dataclass(frozen=True)
class VoxelSize:
    """Physical voxel size in nanometres, axis order (z, y, x)."""

    z: float
    y: float
    x: float

    def __post_init__(self) -> None:
        for axis, value in zip("zyx", self.as_tuple(), strict=True):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"voxel size along {axis} must be a positive number, got {value}")

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.z, self.y, self.x)

    @classmethod
    def of(cls, value: VoxelSize | Sequence[float]) -> VoxelSize:
        if isinstance(value, VoxelSize):
            return value
        values = tuple(float(v) for v in value)
        if len(values) != 3:
            raise ValueError(f"voxel size needs 3 values (z, y, x) in nm, got {values}")
        return cls(*values)


def ome_datasets(voxel_size: VoxelSize, n_levels: int) -> list[dict[str, Any]]:
    """NGFF 0.5 ``datasets`` entries for ``n_levels`` levels, 2x in y, x per level.

    A level downsampled by f gets translation (f - 1) * voxel / 2 so that voxel centres
    line up across levels (the NGFF convention; ome-zarr-py writes the same values).
    """
    vz, vy, vx = voxel_size.as_tuple()
    datasets = []
    for level in range(n_levels):
        f = 2**level
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": [vz, vy * f, vx * f]},
                    {"type": "translation", "translation": [0.0, vy * (f - 1) / 2, vx * (f - 1) / 2]},
                ],
            }
        )
    return datasets


def write_ome_metadata(group: zarr.Group, voxel_size: VoxelSize, n_levels: int, name: str) -> None:
    # ome-zarr-py writes (and validates) the NGFF 0.5 multiscales block; units are spelled
    # "nanometer" because neuroglancer rejects "nm".
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    write_multiscales_metadata(
        group,
        ome_datasets(voxel_size, n_levels),
        fmt=FormatV05(),
        axes=[{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        name=name,
    )


def write_image_label(group: zarr.Group, store: str, source: str | None = None,
                      properties: Sequence[dict[str, Any]] = ()) -> None:
    """Add NGFF 0.5 ``image-label`` metadata to the multiscale image ``group`` (at ``store``), so
    napari and ome-zarr-py open it as labels. ``source``: the image it labels (recorded relative
    to ``store``); ``properties``: one dict per label value (``{"label-value": v, ...}``)."""
    meta: dict[str, Any] = {"version": "0.5"}
    if source is not None:
        meta["source"] = {"image": _relative(source, store)}
    if properties:
        meta["properties"] = [dict(p) for p in properties]
    ome: Any = group.attrs.get("ome") or {}
    group.attrs["ome"] = {**dict(ome), "image-label": meta}


def _relative(target: str, store: str) -> str:
    """``target`` as a path relative to ``store`` (URLs as given)."""
    import os

    if "://" in target or "://" in store:
        return target
    return os.path.relpath(os.path.abspath(target), os.path.abspath(store))
