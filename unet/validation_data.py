"""Validation slices in memory, and the check that they are held out from training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.dataset import TrainingSet
from storage.errors import ShapeMismatchError
from storage.intensity import to_uint8, volume_range
from storage.volume import Volume
from storage.workspace import same_store
from unet.labels import Polarity, check_labels, membrane_mask


class ValidationOverlapError(ValueError):
    """Validation slices are slices the training set was generated from (scores would flatter)."""


@dataclass
class ValidationData:
    """Validation slices in memory: image (Z, H, W) uint8, membrane (Z, H, W) bool."""

    image: np.ndarray
    membrane: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_volumes(cls, image: Volume, labels: Volume, z: tuple[int, int],
                     polarity: Polarity = "zero_is_membrane") -> ValidationData:
        if image.shape != labels.shape:
            raise ShapeMismatchError(f"validation image {image.path} has shape {image.shape} but labels "
                                     f"{labels.path} have {labels.shape}")
        z0, z1 = z
        if not 0 <= z0 < z1 <= image.shape[0]:
            raise ValueError(f"validation slices must satisfy 0 <= start < stop <= {image.shape[0]}, "
                             f"got {z0}..{z1}")
        lab = labels.read(slice(z0, z1))
        check_labels(lab, polarity, f"validation labels {labels.path}")
        rng = volume_range(image.attrs, image.dtype, image.path)  # 12/16-bit or float → 0..255
        return cls(to_uint8(image.read(slice(z0, z1)), rng), membrane_mask(lab, polarity),
                   {"image": image.path, "labels": labels.path, "z": [z0, z1], "polarity": polarity})

    @property
    def slices(self) -> list[int]:
        """The z indices of these slices in their volume ([] when not read from a volume)."""
        z = self.source.get("z")
        return list(range(int(z[0]), int(z[1]))) if z else []



def format_slices(zs: list[int]) -> str:
    """[20, 21, 22, 25] -> '20-22,25' (inclusive ranges, as slice selections are written)."""
    parts: list[str] = []
    for z in sorted(set(zs)):
        if parts and z == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{z}"
        else:
            parts.append(str(z))
    return ",".join(parts)


def check_held_out(dataset: TrainingSet, validation: ValidationData, allow: bool = False,
                   what: str = "validation slices") -> None:
    """:class:`ValidationOverlapError` (one line, naming the slices) when ``validation`` holds
    slices of the volume the training set was generated from, as its attrs record them
    (``sources``: image, labels, slices); nothing when ``allow`` or when either side does
    not record where it came from."""
    sources = dataset.attrs.get("sources") or {}
    trained = {int(z) for z in sources.get("slices") or []}
    if allow or not trained or not validation.slices:
        return
    same_volume = any(same_store(sources.get(k), validation.source.get(k)) for k in ("image", "labels"))
    overlap = sorted(trained.intersection(validation.slices))
    if same_volume and overlap:
        raise ValidationOverlapError(
            f"{what} {format_slices(validation.slices)} of {validation.source.get('image')} include slices "
            f"{format_slices(overlap)} that training set {dataset.path} was generated from (its slices: "
            f"{format_slices(sorted(trained))}); validate on held-out slices, or pass --allow-val-overlap "
            "(train config allow_val_overlap: true) to validate on training data anyway")



def check_splits(dataset: TrainingSet, validation: ValidationData, report: ValidationData | None,
                 allow: bool = False) -> None:
    """Both splits held out from ``dataset`` (:func:`check_held_out`), and ``report`` (the
    reporting split, optional) sharing no slice with ``validation`` (the selection split)."""
    check_held_out(dataset, validation, allow)
    if report is not None:
        check_held_out(dataset, report, allow, what="report slices")
        shared = sorted(set(report.slices) & set(validation.slices))
        same = any(same_store(report.source.get(k), validation.source.get(k)) for k in ("image", "labels"))
        if shared and same:
            raise ValueError(f"report slices {format_slices(report.slices)} share slices "
                             f"{format_slices(shared)} with the validation slices "
                             f"{format_slices(validation.slices)} that pick the best checkpoint; "
                             "report on other slices")
