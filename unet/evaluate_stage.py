"""The evaluate stage: a prediction and/or a segmentation vs labels → ``reports/<run>/``, no Prefect.

Writes ``metrics.json`` (ISBI 2012 scores of a uint8 membrane probability volume) and
``segmentation-metrics.json`` (V_rand, V_info of cell labels) and returns them in a small
frozen :class:`EvaluateResult`. Volumes are streamed in slabs: memory stays at a few
slices of any volume size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.errors import ShapeMismatchError
from storage.files import check_report_target, write_json
from storage.volume import open_volume
from storage.workspace import Workspace, is_path
from unet.labels import Polarity, check_labels, membrane_mask
from unet.metrics import DEFAULT_THRESHOLDS, check_thresholds, merge_rows, score_rows, summarize

Progress = Callable[[int, int], None]
SLAB_Z = 8  # slices read at once


class EvaluateConfig(BaseModel):
    """How labels are read and which thresholds are swept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    polarity: Polarity = Field("zero_is_membrane", description="Which label value is membrane "
                               "(ISBI: zero_is_membrane, 255 = interior).")
    thresholds: tuple[float, ...] = Field(DEFAULT_THRESHOLDS, description="Membrane thresholds swept for "
                                          "V_rand / V_info / ISBI pixel error (default 0.0 to 1.0 by 0.1).")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        check_thresholds(value)
        return value


class EvaluateResult(BaseModel):
    """The report folder and the scores written there (``None`` for what was not scored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report_dir: str
    metrics: dict[str, Any] | None = None
    segmentation: dict[str, Any] | None = None


def score_volume(prediction_path: str, labels_path: str, polarity: Polarity,
                 thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS, progress: Progress | None = None
                 ) -> dict[str, Any]:
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


def evaluate_stage(workspace: Workspace, labels: str, run: str, cfg: EvaluateConfig, *,
                   prediction: str | None = None, segmentation: str | None = None,
                   progress: Progress | None = None, overwrite: bool = False) -> EvaluateResult:
    """Score ``prediction`` (a name in predictions/ or a path) and/or ``segmentation`` (a name in
    segmentations/ or a path) against ``labels/<labels>.zarr``; write the reports of ``run``.
    A report of ``run`` made from other inputs is refused (before scoring) unless ``overwrite``."""
    if prediction is None and segmentation is None:
        raise ValueError("evaluate needs a prediction, a segmentation, or both")
    labels_path = workspace.labels(labels)
    for name, key, given, where in (("metrics.json", "prediction", prediction, workspace.prediction),
                                    ("segmentation-metrics.json", "segmentation", segmentation,
                                     workspace.segmentation)):
        if given is not None:
            made_from = {key: given if is_path(given) else where(given), "labels": labels_path,
                         "polarity": cfg.polarity}
            check_report_target(workspace.report_file(run, name), made_from, overwrite=overwrite)
    metrics = seg = None
    if prediction is not None:
        path = prediction if is_path(prediction) else workspace.prediction(prediction)
        scores = score_volume(path, labels_path, cfg.polarity, tuple(cfg.thresholds), progress)
        metrics = {"prediction": path, "labels": labels_path, "polarity": cfg.polarity, **scores}
        write_json(workspace.report_file(run, "metrics.json"), metrics)
    if segmentation is not None:
        from storage.segmentation import open_segmentation
        from unet.segment_metrics import score_segmentation

        path = segmentation if is_path(segmentation) else workspace.segmentation(segmentation)
        scores = score_segmentation(open_segmentation(path), open_volume(labels_path), cfg.polarity, progress)
        seg = {"segmentation": path, "labels": labels_path, "polarity": cfg.polarity, **scores}
        write_json(workspace.report_file(run, "segmentation-metrics.json"), seg)
    return EvaluateResult(report_dir=workspace.report_dir(run), metrics=metrics, segmentation=seg)
