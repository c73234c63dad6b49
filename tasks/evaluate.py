"""Evaluate-stage task: score a membrane-probability volume against a label volume."""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.errors import ShapeMismatchError
from storage.files import write_json
from storage.volume import open_volume
from tasks.progress import RunProgress
from unet.labels import Polarity, check_labels, membrane_mask
from unet.metrics import DEFAULT_THRESHOLDS, merge_rows, score_rows, summarize

SLAB_Z = 8  # slices read at once: memory stays at a few slices of any volume size


def score_volume(prediction_path: str, labels_path: str, polarity: Polarity,
                 thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS, progress: Any = None) -> dict[str, Any]:
    """ISBI-2012 scores of a prediction volume (uint8 0..255 membrane probability, z, y, x)
    against a label volume of the same shape, streamed in slabs of ``SLAB_Z`` slices."""
    pred, lab = open_volume(prediction_path), open_volume(labels_path)
    if pred.shape != lab.shape:
        raise ShapeMismatchError(f"prediction {pred.path} has shape {pred.shape} but labels "
                                 f"{lab.path} have {lab.shape}")
    if pred.dtype.kind != "u" or pred.dtype.itemsize != 1:
        raise ValueError(f"prediction {pred.path} must be uint8 membrane probabilities 0..255, "
                         f"got {pred.dtype}")
    rows = None
    nz = pred.shape[0]
    for z0 in range(0, nz, SLAB_Z):
        z = slice(z0, min(z0 + SLAB_Z, nz))
        labels = lab.read(z)
        check_labels(labels, polarity, f"labels {lab.path} (slices {z.start}..{z.stop})")
        slab = score_rows(pred.read(z) / 255.0, membrane_mask(labels, polarity), thresholds)
        rows = slab if rows is None else merge_rows(rows, slab)
        if progress is not None:
            progress(z.stop, nz)
    assert rows is not None
    return summarize(rows)


@task(name="evaluate-prediction", cache_policy=NO_CACHE)
def evaluate_prediction(prediction_path: str, labels_path: str, polarity: Polarity, report_dir: str,
                        thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Score, write ``<report_dir>/metrics.json`` and return the metrics (with the inputs)."""
    nz = open_volume(prediction_path).shape[0]
    progress = RunProgress("evaluate", f"scoring {os.path.basename(prediction_path)}", nz, "slices")
    metrics = score_volume(prediction_path, labels_path, polarity, thresholds, progress.update)
    report = {"prediction": prediction_path, "labels": labels_path, "polarity": polarity, **metrics}
    write_json(os.path.join(report_dir, "metrics.json"), report)
    return report


@task(name="evaluate-segmentation", cache_policy=NO_CACHE)
def evaluate_segmentation(segmentation_path: str, labels_path: str, polarity: Polarity,
                          report_dir: str) -> dict[str, Any]:
    """V_rand / V_info of cell labels (what users receive) against labels; writes
    ``<report_dir>/segmentation-metrics.json`` and returns it (with the inputs)."""
    from storage.segmentation import open_segmentation
    from unet.segment_metrics import score_segmentation

    seg = open_segmentation(segmentation_path)
    progress = RunProgress("evaluate-segmentation", f"scoring {os.path.basename(segmentation_path)}",
                           seg.shape[0], "slices")
    metrics = score_segmentation(seg, open_volume(labels_path), polarity, progress.update)
    report = {"segmentation": segmentation_path, "labels": labels_path, "polarity": polarity, **metrics}
    write_json(os.path.join(report_dir, "segmentation-metrics.json"), report)
    return report
