"""Does a volume's voxel size match the one a model was trained at?

A U-Net learns membranes at the scale it saw: run on a volume of another pixel size it sees
thicker or thinner membranes and smaller or larger cells than it learnt, and its output
degrades without a word. The checkpoint records the training set's voxel size
(:mod:`unet.checkpoint`, ``training_data``); inference compares the in-plane (y, x) sizes
before anything is written and refuses a difference above :data:`TOLERANCE`, unless asked
to go on. Where either size is unknown (1 nm recorded as a placeholder at ingest) nothing
can be compared: a warning says so. Checkpoints without the record are not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("emseg.infer")
TOLERANCE = 0.10  # relative difference in y or x, from the training voxel size
FLAG = "--allow-voxel-size-mismatch (allow_voxel_size_mismatch=True from Python)"


class VoxelSizeMismatchError(ValueError):
    """The volume's voxel size (y, x) differs from the model's training voxel size by more than 10 %."""


def _yx(sizes: Sequence[float]) -> str:
    return f"{float(sizes[-2]):g} x {float(sizes[-1]):g} nm"


def check_voxel_size(volume: str, voxel_nm: Sequence[float], unknown: Sequence[str],
                     training: Mapping[str, Any], checkpoint: str, allow: bool = False) -> str | None:
    """Compare a volume's voxel size (z, y, x; nm; ``unknown``: its placeholder axes) with the one
    ``training`` (a checkpoint's ``training_data``) records. Raises :class:`VoxelSizeMismatchError`
    (one line naming both sizes and the flag) when y or x differs by more than 10 % and not
    ``allow``; returns the warning logged instead (mismatch allowed, or a size unknown), else None."""
    trained = training.get("voxel_size_nm")
    if not trained or len(trained) != 3:
        return None  # a checkpoint that records no training voxel size: nothing to check
    trained_unknown = {"y", "x"} & set(training.get("voxel_size_unknown") or ())
    volume_unknown = {"y", "x"} & set(unknown)
    if volume_unknown or trained_unknown:
        if volume_unknown and trained_unknown:
            return None  # neither size was ever given: nothing to compare, nothing new to say
        if volume_unknown:
            axes = ", ".join(sorted(volume_unknown, reverse=True))  # y, x
            message = (f"{volume}: voxel size unknown on axes {axes} "
                       f"(1 nm placeholder), so it cannot be checked against the {_yx(trained)} the model "
                       f"{checkpoint} was trained at; predicting anyway")
        else:
            message = (f"{checkpoint} was trained on a volume of unknown voxel size, so the voxel size "
                       f"{_yx(voxel_nm)} of {volume} cannot be checked against it; predicting anyway")
        log.warning("%s", message)
        return message
    off = [abs(float(v) - float(t)) > TOLERANCE * float(t)
           for v, t in zip(voxel_nm[-2:], trained[-2:], strict=True)]
    if not any(off):
        return None
    message = (f"{volume}: voxel size (y, x) {_yx(voxel_nm)} differs by more than {TOLERANCE:.0%} from the "
               f"{_yx(trained)} the model {checkpoint} was trained at")
    if not allow:
        raise VoxelSizeMismatchError(f"{message}; resample the volume to the training voxel size, or pass "
                                     f"{FLAG} to predict anyway")
    message += "; predicting anyway (allowed)"
    log.warning("%s", message)
    return message
