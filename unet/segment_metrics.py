"""Scores of a cell segmentation (what users receive) against membrane labels, as in ISBI 2012.

Arrays are (Z, H, W): slices, y, x in pixels. Like :mod:`unet.metrics` for probability
maps, each slice is scored in 2-D and the scores are averaged over slices: the truth's
cells are the connected components of its non-membrane pixels, its membrane pixels are
ignored, and V_rand / V_info are those of :func:`unet.metrics.rand_and_info`. Unlike a
probability map, a segmentation needs no threshold: it is scored as it is. Cell IDs that
run through z (``link_slices``) are scored per slice too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from storage.errors import ShapeMismatchError
from storage.volume import Volume
from unet.labels import Polarity, check_labels, membrane_mask
from unet.metrics import rand_and_info, truth_segments
from unet.split import runs_of

SLAB_Z = 8  # slices read at once: memory stays at a few slices of any volume size


def segmentation_sums(cells: np.ndarray, membrane: np.ndarray) -> dict[str, float]:
    """Per-slice score sums of ``cells`` (Z, H, W) against a membrane mask of that shape,
    to be added across slabs and averaged by :func:`segmentation_scores`."""
    if cells.shape != membrane.shape:
        raise ValueError(f"segmentation shape {cells.shape} differs from label shape {membrane.shape}")
    if cells.ndim != 3:
        raise ValueError(f"expected (Z, H, W) arrays, got shape {cells.shape}")
    scores = [rand_and_info(truth_segments(m), c.astype(np.int64))
              for c, m in zip(cells, membrane, strict=True)]
    return {"v_rand_sum": float(sum(s[0] for s in scores)), "v_info_sum": float(sum(s[1] for s in scores)),
            "n_slices": float(len(scores))}


def segmentation_scores(sums: dict[str, float]) -> dict[str, float]:
    n = sums["n_slices"]
    return {"v_rand": sums["v_rand_sum"] / n, "v_info": sums["v_info_sum"] / n, "n_slices": int(n)}


def score_segmentation(seg: Volume, labels: Volume, polarity: Polarity,
                       progress: Callable[[int, int], None] | None = None,
                       slices: Sequence[int] | None = None) -> dict[str, Any]:
    """V_rand and V_info (means over slices) of a segmentation volume against a label volume of
    the same shape, streamed in slabs of ``SLAB_Z`` slices; also the number of distinct cell IDs.
    Only the slice indices ``slices`` (sorted) are scored when given."""
    if seg.shape != labels.shape:
        raise ShapeMismatchError(f"segmentation {seg.path} has shape {seg.shape} but labels {labels.path} "
                                 f"have {labels.shape}")
    if seg.dtype.kind not in "ui":
        raise ValueError(f"segmentation {seg.path} must hold integer cell IDs, got {seg.dtype}")
    totals = {"v_rand_sum": 0.0, "v_info_sum": 0.0, "n_slices": 0.0}
    ids: set[int] = set()
    todo = list(range(seg.shape[0])) if slices is None else sorted(slices)
    for z in runs_of(todo, SLAB_Z):
        lab = labels.read(z)
        check_labels(lab, polarity, f"labels {labels.path} (slices {z.start}..{z.stop})")
        cells = seg.read(z)
        ids.update(int(i) for i in np.unique(cells) if i != 0)
        for k, v in segmentation_sums(cells, membrane_mask(lab, polarity)).items():
            totals[k] += v
        if progress is not None:
            progress(int(totals["n_slices"]), len(todo))
    return {**segmentation_scores(totals), "n_cells": len(ids)}
